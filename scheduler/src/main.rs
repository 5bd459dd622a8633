//! The `scheduler` binary: everything is in [`scheduler::cli::main`] (exit codes:
//! [`shared::cli::exit`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    scheduler::cli::main(std::env::args()).await
}
