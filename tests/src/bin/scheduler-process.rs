//! The scheduler as a separate process, so tests can run its command line
//! ([`scheduler::cli::main`], the same code as the `scheduler` binary) through
//! `CARGO_BIN_EXE_scheduler-process`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    scheduler::cli::main(std::env::args()).await
}
