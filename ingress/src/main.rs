//! The `ingress` binary: telemetry -> config -> `App::build` -> `run_until_stopped`.

use anyhow::Context;
use shared::config::Env;

/// One thread: the ingress' work per request is short, and keeping the HTTP connections and the
/// NATS connection on one thread avoids cross-thread wake-ups, which cost about a quarter of its
/// CPU per request in the benchmark (`dev/bench`). Scale out with replicas.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let config =
        ingress::IngressConfig::from_env(&Env::process()).context("ingress configuration")?;
    let app = ingress::App::build(config)
        .await
        .context("starting the ingress")?;
    let shutdown = shared::shutdown::on_signal();
    app.run_until_stopped(shutdown)
        .await
        .context("ingress server")
}
