//! The worker as a separate process for tests that SIGKILL it: the same code as the `worker`
//! binary ([`worker::cli::run`]), built inside this package so tests can find it through
//! `CARGO_BIN_EXE_worker-process`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stderr));
    worker::cli::run(std::env::args().skip(1).collect()).await
}
