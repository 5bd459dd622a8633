//! The `worker` binary: logs, then [`worker::cli::run`] (the service, or an operator command).
//!
//! - `worker` / `worker serve`: consume events until SIGTERM.
//! - `worker dlq-list`: prints the dead letters as JSON lines.
//! - `worker dlq-replay <seq>... | --all`: puts dead letters back on their subjects.
//!
//! Exit codes: [`shared::cli::exit`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr so the operator commands' JSON on stdout stays clean.
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stderr));
    let result = worker::cli::run(std::env::args().skip(1).collect()).await;
    shared::cli::exit_code(result.map(|()| ExitCode::SUCCESS))
}
