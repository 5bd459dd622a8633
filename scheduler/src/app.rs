//! `App`: the scheduler's wiring on the shared skeleton (`shared::service`): health router,
//! metrics listener, rotation service and JetStream sampler, supervised until shutdown.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use serde_json::Value;
use shared::service::{self, Base, Listeners, ReadyExtra, Supervisor};
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::jetstream_metrics::Sampler;
use crate::lease::Leadership;
use crate::service::{self as rotation_service, Status};

/// A built scheduler: listeners bound, NATS connected, the topology kept; the rotation
/// starts with [`App::run_until_stopped`].
pub struct App {
    listeners: Listeners,
    /// `/healthz` and `/readyz`, served on both listeners.
    ops: Router,
    config: SchedulerConfig,
    base: Base,
    status: Status,
    leadership: tokio::sync::watch::Sender<Option<std::time::Instant>>,
}

impl App {
    /// Binds `SCHEDULER_LISTEN` and `METRICS_LISTEN` and connects to NATS.
    pub async fn build(config: SchedulerConfig) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.listen, config.metrics_listen).await?;
        Self::build_with(config, listeners).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0` and skip the metrics one).
    pub async fn build_with(config: SchedulerConfig, listeners: Listeners) -> anyhow::Result<Self> {
        shared::telemetry::metrics_handle();
        let base = Base::connect(
            &config.nats,
            config.topology.clone(),
            &rotation_service::NEEDS,
        )
        .await?;
        let (leadership, watcher) = Leadership::channel();
        let status = Status::new(watcher);
        let ops = service::ops_routes_with(base.readiness.clone(), {
            let (status, scheduler_id) = (status.clone(), config.scheduler_id.clone());
            move || ReadyExtra {
                ready: status.is_ready(),
                fields: [
                    ("seeded", Value::from(status.is_ready())),
                    ("leader", Value::from(status.is_leader())),
                    ("scheduler_id", Value::from(scheduler_id.clone())),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            }
        });
        Ok(Self {
            listeners,
            ops,
            config,
            base,
            status,
            leadership,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listeners
            .main
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Readiness, leadership and progress, for tests and embedding.
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Runs every task until `shutdown` fires (or one of them dies), then lets a rotation in
    /// flight finish and the lease be released, within `SHUTDOWN_TIMEOUT`.
    ///
    /// Dropping the returned future aborts every task without releasing the lease, as a crash
    /// would.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = Supervisor::new(&shutdown);
        let stop = tasks.stop();
        tracing::info!(addr = %self.local_addr(), scheduler_id = %self.config.scheduler_id, "scheduler listening");
        let router = self
            .ops
            .clone()
            .route("/metrics", get(shared::telemetry::render));
        let server = axum::serve(self.listeners.main, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tasks.spawn("health", async move { server.await });
        if let Some(listener) = self.listeners.metrics {
            let (stop, ops) = (stop.clone(), self.ops.clone());
            tasks.spawn(
                "metrics",
                shared::telemetry::serve_metrics(listener, ops, stop),
            );
        }
        if !self.config.metrics_interval.is_zero() {
            let (sampler, interval, stop) = (
                Sampler::new(self.base.js.clone()),
                self.config.metrics_interval,
                stop.clone(),
            );
            tasks.spawn("jetstream-metrics", async move {
                sampler.run(interval, stop).await;
                Ok::<_, String>(())
            });
        }
        let shutdown_timeout = self.config.shutdown_timeout;
        let rotation = rotation_service::run(
            self.config,
            self.base.js.clone(),
            self.base.readiness.clone(),
            self.status.clone(),
            self.leadership,
            stop,
        );
        tasks.spawn("rotation", async move {
            rotation.await;
            Ok::<_, String>(())
        });
        tasks.run(shutdown_timeout).await;
        self.base.close().await;
        tracing::info!("scheduler stopped");
        Ok(())
    }
}
