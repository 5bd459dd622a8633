//! The ingress as a process: telemetry -> config -> runtime -> `App::build` ->
//! `run_until_stopped`. Shared by the `ingress` binary and the tests' `ingress-process`.

use anyhow::Context;
use shared::config::Env;

use crate::{server, App, IngressConfig};

/// Runs the ingress from the process environment until SIGTERM or Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let config = IngressConfig::from_env(&Env::process()).context("ingress configuration")?;
    if let Some(limit) = server::raise_open_file_limit() {
        tracing::debug!(limit, "open-file limit");
    }
    // Multi-threaded, one thread per core by default (`INGRESS_WORKER_THREADS`): the HTTP
    // connections and the NATS connection then run in parallel.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    runtime
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(async {
            let app = App::build(config).await.context("starting the ingress")?;
            app.run_until_stopped(shared::shutdown::on_signal())
                .await
                .context("ingress server")
        })
}
