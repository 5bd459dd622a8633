//! Structured logs and Prometheus metrics.
//!
//! Logs are JSON lines through `tracing` (one field per span value, so the request id of the
//! enclosing span is in every line). Metrics go to one process-wide Prometheus recorder,
//! served by [`serve_metrics`] on its own listener and by any router that mounts [`render`].

use std::sync::OnceLock;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::subscriber::set_global_default;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{layer::SubscriberExt, EnvFilter, Registry};

/// Histogram buckets for latencies, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A JSON subscriber writing to `sink`, filtered by `RUST_LOG` or `default_filter`.
pub fn get_subscriber<Sink>(
    default_filter: &str,
    sink: Sink,
) -> impl tracing::Subscriber + Send + Sync
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(sink);
    Registry::default().with(filter).with(fmt)
}

/// Installs the subscriber for the process (call once, from `main`).
pub fn init_subscriber(subscriber: impl tracing::Subscriber + Send + Sync) {
    if set_global_default(subscriber).is_err() {
        tracing::warn!("a tracing subscriber was already installed");
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding several services);
            // the handle still renders this recorder's view, which is then empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The exposition text, for routers that serve `/metrics` themselves.
pub async fn render() -> String {
    metrics_handle().render()
}

/// Serves `/metrics`, plus the service's own routes (`/healthz`, `/readyz`), on the metrics
/// listener until `shutdown` fires. Operational endpoints stay off public listeners.
pub async fn serve_metrics(
    listener: TcpListener,
    routes: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = metrics_handle();
    let upkeep = handle.clone();
    // The recorder drains histogram samples on render; upkeep keeps memory flat between scrapes.
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = routes.route("/metrics", get(|| async move { handle.render() }));
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    upkeep_task.abort();
    result
}
