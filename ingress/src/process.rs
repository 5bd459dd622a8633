//! The ingress as a process: telemetry -> config -> event loops -> `App` ->
//! `run_until_stopped`. Shared by the `ingress` binary and the tests' `ingress-process`.
//!
//! One event loop per core (`INGRESS_WORKER_THREADS`, default: the cores available): each is
//! a single-threaded runtime with its own listener on the shared address (`SO_REUSEPORT`: the
//! kernel spreads connections), its own NATS connection and its own topology keeper. A
//! request then never changes threads: no cross-thread wake-ups, and each connection's writes
//! batch with its loop's other requests. The first loop also serves the metrics listener.

use std::net::SocketAddr;

use anyhow::Context;
use shared::config::Env;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use shared::service::Listeners;

use crate::{server, App, IngressConfig};

/// Runs the ingress from the process environment until SIGTERM or Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let config = IngressConfig::from_env(&Env::process()).context("ingress configuration")?;
    if let Some(limit) = server::raise_open_file_limit() {
        tracing::debug!(limit, "open-file limit");
    }
    let loops = config
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    // The signal handler lives on the main thread's own small runtime.
    let main = single_threaded()?;
    let shutdown = main.block_on(async { shared::shutdown::on_signal() });
    let threads: Vec<_> = (0..loops)
        .map(|index| {
            let config = per_loop(&config, loops);
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("ingress-loop-{index}"))
                .spawn(move || event_loop(index, config, shutdown))
                .context("starting an event loop")
        })
        .collect::<anyhow::Result<_>>()?;
    tracing::info!(loops, "ingress event loops started");
    let mut result = Ok(());
    for thread in threads {
        let outcome = thread.join().unwrap_or_else(|_| {
            shutdown.cancel();
            Err(anyhow::anyhow!("an event loop panicked"))
        });
        if outcome.is_err() && result.is_ok() {
            result = outcome;
        }
    }
    result
}

/// The share of the process-wide limits one of `loops` event loops gets.
fn per_loop(config: &IngressConfig, loops: usize) -> IngressConfig {
    let mut config = config.clone();
    config.max_connections = (config.max_connections / loops).max(1);
    config.body_budget_bytes = (config.body_budget_bytes / loops).max(config.max_body_bytes);
    config
}

fn single_threaded() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// One event loop: its listener, its app, until `shutdown`. A loop that fails (cannot bind,
/// say) stops the others: a half-working ingress would look ready.
fn event_loop(
    index: usize,
    config: IngressConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let result = serve_loop(index, config, shutdown.clone());
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

fn serve_loop(
    index: usize,
    config: IngressConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    single_threaded()?.block_on(async move {
        let listener =
            bind_shared(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let metrics = match index {
            0 => Some(
                TcpListener::bind(config.metrics_listen)
                    .await
                    .with_context(|| format!("binding {}", config.metrics_listen))?,
            ),
            _ => None,
        };
        let app = App::build_with(
            config,
            Listeners {
                main: listener,
                metrics,
            },
        )
        .await
        .context("starting the ingress")?;
        app.run_until_stopped(shutdown)
            .await
            .context("ingress server")
    })
}

/// Binds with `SO_REUSEPORT`, so every event loop accepts on the same address.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
