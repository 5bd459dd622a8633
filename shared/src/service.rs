//! The skeleton the three services run on, so each service's `app.rs` is its wiring only:
//!
//! - [`Listeners`]: the service's own listener and the metrics listener, bound at start.
//! - [`Base`]: the NATS connection, a JetStream context and the topology keeper of what the
//!   service needs, with [`Base::ensured`] to wait for it without ignoring shutdown.
//! - [`ops_routes`]: `/healthz` and `/readyz`, one shape in every service (the topology's
//!   report plus what the service adds, [`ReadyExtra`]).
//! - [`Supervisor`]: the service's long-running tasks; the first to end on its own stops the
//!   others, and shutdown gives them a bounded time to finish.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::topology::{self, Readiness, Resource, Topology, TopologyConfig};

/// A service's listeners: its own (public API or health) and, in production, the metrics
/// listener (`/metrics`, `/healthz`, `/readyz`), which is not exposed outside the cluster.
pub struct Listeners {
    pub main: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(main: SocketAddr, metrics: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            main: TcpListener::bind(main).await?,
            metrics: Some(TcpListener::bind(metrics).await?),
        })
    }
}

/// Shutdown came before what was awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shut down before the topology was ensured")]
pub struct ShutDown;

/// What every service starts from: a NATS connection and the topology keeper of the streams
/// and buckets it needs (which creates them, retrying until NATS answers, and recreates any
/// that disappears).
pub struct Base {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub readiness: Readiness,
    keeper: Option<JoinHandle<()>>,
    stop_keeper: CancellationToken,
}

impl Drop for Base {
    /// A service dropped without [`Base::close`] (a test that never ran it) leaves no keeper.
    fn drop(&mut self) {
        self.stop_keeper.cancel();
    }
}

impl Base {
    /// Connects (the client reconnects by itself from then on) and starts the keeper.
    pub async fn connect(
        nats: &NatsConfig,
        topology: TopologyConfig,
        needs: &[Resource],
    ) -> Result<Self, async_nats::ConnectError> {
        let readiness = Readiness::new(needs);
        let client = topology::connect(nats).await?;
        let js = jetstream::new(client.clone());
        let stop_keeper = CancellationToken::new();
        let keeper =
            Topology::new(topology).keep_for(js.clone(), readiness.clone(), stop_keeper.clone());
        Ok(Self {
            client,
            js,
            readiness,
            keeper: Some(keeper),
            stop_keeper,
        })
    }

    /// Waits until every resource was ensured once, or `shutdown` fires first.
    pub async fn ensured(&self, shutdown: &CancellationToken) -> Result<(), ShutDown> {
        tokio::select! {
            () = self.readiness.ensured() => Ok(()),
            () = shutdown.cancelled() => Err(ShutDown),
        }
    }

    /// Stops the keeper and flushes what the client still holds: the last step of a shutdown.
    pub async fn close(mut self) {
        self.stop_keeper.cancel();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        topology::flush_at_shutdown(&self.client).await;
    }
}

/// What a service adds to its `/readyz`: a condition of its own and fields that explain it.
#[derive(Debug, Default, Clone)]
pub struct ReadyExtra {
    pub ready: bool,
    pub fields: Map<String, Value>,
}

type ExtraFn = Arc<dyn Fn() -> ReadyExtra + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    extra: Option<ExtraFn>,
}

/// `/healthz` and `/readyz` on the topology's readiness alone.
pub fn ops_routes(readiness: Readiness) -> Router {
    routes(OpsState {
        readiness,
        extra: None,
    })
}

/// `/healthz` and `/readyz`, ready only when `extra` says so too; its fields are added to the
/// report.
pub fn ops_routes_with(
    readiness: Readiness,
    extra: impl Fn() -> ReadyExtra + Send + Sync + 'static,
) -> Router {
    routes(OpsState {
        readiness,
        extra: Some(Arc::new(extra)),
    })
}

fn routes(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `GET /readyz`: 200 when ready, 503 otherwise, the report in both cases:
/// `{"ready", "nats_connected", "resources": {name: present}, ...the service's fields}`.
async fn readyz(State(state): State<OpsState>) -> Response {
    let report = state.readiness.report();
    let extra = state.extra.as_ref().map(|f| f()).unwrap_or(ReadyExtra {
        ready: true,
        fields: Map::new(),
    });
    let ready = report.ready && extra.ready;
    let mut body = Map::new();
    body.insert("ready".into(), ready.into());
    body.insert("nats_connected".into(), report.nats_connected.into());
    body.insert(
        "resources".into(),
        serde_json::to_value(&report.resources).unwrap_or_default(),
    );
    body.extend(extra.fields);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Value::Object(body))).into_response()
}

/// How one supervised task ended.
type Exit = (&'static str, Result<(), String>);

/// A service's long-running tasks. Each gets [`Supervisor::stop`], a child of the service's
/// shutdown token: the first task to end on its own cancels it, so one dead part stops the
/// service (and its orchestrator restarts it) instead of leaving it half alive.
pub struct Supervisor {
    tasks: JoinSet<Exit>,
    stop: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: shutdown.child_token(),
        }
    }

    /// The token tasks stop on: shutdown, or another task's end.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs a task that ends only when told to stop, or with an error.
    pub fn spawn<E: Display>(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.tasks
            .spawn(async move { (name, task.await.map_err(|e| e.to_string())) });
    }

    /// Waits for shutdown or for the first task to end, then gives every task `grace` to
    /// finish and aborts what is left.
    pub async fn run(mut self, grace: Duration) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            Some(exit) = self.tasks.join_next() => {
                report(exit, !self.stop.is_cancelled());
                self.stop.cancel();
            }
        }
        let drain = async {
            while let Some(exit) = self.tasks.join_next().await {
                report(exit, false);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("tasks did not stop within the shutdown timeout; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// Logs which task ended and why; `early` when it ended before shutdown was asked for.
fn report(exit: Result<Exit, tokio::task::JoinError>, early: bool) {
    match exit {
        Ok((task, Ok(()))) if early => tracing::error!(task, "task stopped unexpectedly"),
        Ok((task, Ok(()))) => tracing::debug!(task, "task stopped"),
        Ok((task, Err(error))) => tracing::error!(task, %error, "task failed"),
        Err(error) => tracing::error!(%error, "task panicked or was aborted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_stops_the_others() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(&shutdown);
        let stop = tasks.stop();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = stopped.clone();
        tasks.spawn("waits", async move {
            stop.cancelled().await;
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, String>(())
        });
        tasks.spawn("fails", async { Err::<(), _>("boom") });
        tokio::time::timeout(Duration::from_secs(5), tasks.run(Duration::from_secs(5)))
            .await
            .expect("the supervisor stops once a task failed");
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(
            !shutdown.is_cancelled(),
            "the service's own token is the caller's"
        );
    }

    #[tokio::test]
    async fn tasks_that_ignore_stop_are_aborted_after_the_grace() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new(&shutdown);
        tasks.spawn("stuck", std::future::pending::<Result<(), String>>());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), tasks.run(Duration::from_millis(50)))
            .await
            .expect("aborted after the grace");
    }
}
