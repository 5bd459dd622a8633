//! The `worker` binary: telemetry -> config -> `App::build` -> `run_until_stopped`.

use anyhow::Context;
use shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let config = worker::WorkerConfig::from_env(&Env::process()).context("worker configuration")?;
    let app = worker::App::build(config)
        .await
        .context("starting the worker")?;
    app.run_until_stopped(shared::shutdown::on_signal())
        .await
        .context("worker")
}
