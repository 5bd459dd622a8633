//! `App`: binds the listeners, connects to NATS and supervises the scheduler's tasks (health
//! router, metrics listener, rotation service, JetStream sampler) until shutdown.

use std::net::SocketAddr;

use async_nats::jetstream;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use shared::topology::{self, Readiness, Topology};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::jetstream_metrics::Sampler;
use crate::lease::Leadership;
use crate::service::{self, Status};

/// State of the health routes.
#[derive(Clone)]
struct HealthState {
    readiness: Readiness,
    status: Status,
    scheduler_id: String,
}

/// A built scheduler: listeners bound, NATS connecting; nothing runs before
/// [`App::run_until_stopped`].
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// `/healthz` and `/readyz`, served on both listeners.
    ops: Router,
    /// `ops` plus `/metrics`, for the health listener.
    router: Router,
    config: SchedulerConfig,
    client: async_nats::Client,
    status: Status,
    /// Every bucket the scheduler needs exists (kept by the topology keeper).
    readiness: Readiness,
    leadership: tokio::sync::watch::Sender<Option<std::time::Instant>>,
}

/// What one supervised task returned.
type TaskExit = (&'static str, Result<(), String>);

impl App {
    /// Binds `SCHEDULER_LISTEN` and `METRICS_LISTEN` and connects to NATS.
    pub async fn build(config: SchedulerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
        Self::build_with(config, listener, Some(metrics_listener)).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0` and skip the metrics one).
    pub async fn build_with(
        config: SchedulerConfig,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        shared::telemetry::metrics_handle();
        let client = topology::connect(&config.nats).await?;
        let (leadership, watcher) = Leadership::channel();
        let status = Status::new(watcher);
        let readiness = Readiness::new(&service::NEEDS);
        let ops = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(HealthState {
                readiness: readiness.clone(),
                status: status.clone(),
                scheduler_id: config.scheduler_id.clone(),
            });
        let router = ops
            .clone()
            .route("/metrics", get(shared::telemetry::render));
        Ok(Self {
            listener,
            metrics_listener,
            ops,
            router,
            config,
            client,
            status,
            readiness,
            leadership,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
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
        let stop = shutdown.child_token();
        let mut tasks: JoinSet<TaskExit> = JoinSet::new();
        tracing::info!(addr = %self.local_addr(), scheduler_id = %self.config.scheduler_id, "scheduler listening");
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tasks.spawn(async move { ("health", server.await.map_err(|e| e.to_string())) });
        if let Some(listener) = self.metrics_listener {
            let (stop, ops) = (stop.clone(), self.ops.clone());
            tasks.spawn(async move {
                let result = shared::telemetry::serve_metrics(listener, ops, stop).await;
                ("metrics", result.map_err(|e| e.to_string()))
            });
        }
        let js = jetstream::new(self.client.clone());
        let keeper = Topology::new(self.config.topology.clone()).keep_for(
            js.clone(),
            self.readiness.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let result = keeper.await.map_err(|e| e.to_string());
            ("topology", result)
        });
        if !self.config.metrics_interval.is_zero() {
            let (sampler, interval, stop) = (
                Sampler::new(js.clone()),
                self.config.metrics_interval,
                stop.clone(),
            );
            tasks.spawn(async move {
                sampler.run(interval, stop).await;
                ("jetstream-metrics", Ok(()))
            });
        }
        let shutdown_timeout = self.config.shutdown_timeout;
        let service = service::run(
            self.config,
            js,
            self.readiness.clone(),
            self.status.clone(),
            self.leadership,
            stop.clone(),
        );
        tasks.spawn(async move {
            service.await;
            ("rotation", Ok(()))
        });

        tokio::select! {
            _ = stop.cancelled() => {}
            Some(exit) = tasks.join_next() => {
                report_exit(exit, true);
                stop.cancel();
            }
        }
        let drain = async {
            while let Some(exit) = tasks.join_next().await {
                report_exit(exit, false);
            }
        };
        if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
            tracing::warn!("tasks did not stop within the shutdown timeout; aborting them");
            tasks.abort_all();
        }
        shared::topology::flush_at_shutdown(&self.client).await;
        tracing::info!("scheduler stopped");
        Ok(())
    }
}

/// Logs which task ended and why; `early` when it ended before shutdown was asked for.
fn report_exit(exit: Result<TaskExit, tokio::task::JoinError>, early: bool) {
    match exit {
        Ok((task, Ok(()))) if early => tracing::error!(task, "task stopped unexpectedly"),
        Ok((task, Ok(()))) => tracing::debug!(task, "task stopped"),
        Ok((task, Err(error))) => tracing::error!(task, %error, "task failed"),
        Err(error) => tracing::error!(%error, "task panicked or was aborted"),
    }
}

/// The shared readiness report (NATS, every bucket), plus whether the first token is seeded,
/// leadership and the scheduler's id.
async fn readyz(State(state): State<HealthState>) -> Response {
    let report = state.readiness.report();
    let ready = report.ready && state.status.is_ready();
    let body = Json(serde_json::json!({
        "ready": ready,
        "nats_connected": report.nats_connected,
        "resources": report.resources,
        "seeded": state.status.is_ready(),
        "leader": state.status.is_leader(),
        "scheduler_id": state.scheduler_id,
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}
