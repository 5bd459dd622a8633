//! `App`: binds the listeners, wires the pipeline to axum and runs until shutdown.
//!
//! The public listener serves only what Khoros and Kore.ai call (plus `/healthz`); `/metrics`
//! and `/readyz` are on the metrics listener, which is not exposed outside the cluster.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::auth::{Clock, SystemClock};
use shared::topology::{self, buckets, Readiness, Resource, Topology};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::BodyPolicy;
use crate::config::IngressConfig;
use crate::error::IngressError;
use crate::intake::Intake;
use crate::kore_callback::{self, CallbackAuth, Turns};
use crate::publish::Publisher;
use crate::server::{self, ServerLimits};
use crate::telemetry::{self, HotMetrics};

/// The streams the ingress writes to; `/readyz` covers these, plus [`KORE_CALLBACK_NEEDS`]
/// when the Kore.ai callback is on ([`needs`]).
pub const NEEDS: [Resource; 2] = [Resource::Events, Resource::KoreReplies];
/// What the Kore.ai callback reads: the bucket where the worker marks outstanding turns.
pub const KORE_CALLBACK_NEEDS: [Resource; 1] = [Resource::Bucket(buckets::CONVERSATIONS)];

/// The resources this configuration of the ingress uses.
pub fn needs(config: &IngressConfig) -> Vec<Resource> {
    let kore = config
        .kore_callback
        .is_some()
        .then_some(KORE_CALLBACK_NEEDS);
    NEEDS
        .into_iter()
        .chain(kore.into_iter().flatten())
        .collect()
}

/// Shared by every request handler (behind an `Arc`: axum clones the state per request).
struct AppState {
    intake: Intake,
    metrics: HotMetrics,
    kore_callback: Option<CallbackAuth>,
    turns: Turns,
    partitions: u32,
}

/// A built ingress: listeners bound, NATS connecting, topology kept in the background.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    router: Router,
    ops_router: Router,
    client: async_nats::Client,
    limits: ServerLimits,
    shutdown_timeout: Duration,
    background: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
    payload_watch: tokio::task::JoinHandle<()>,
    turn_opener: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Binds `INGRESS_LISTEN` and `METRICS_LISTEN` and connects to NATS.
    pub async fn build(config: IngressConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
        Self::build_with(config, listener, Some(metrics_listener)).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0`). Without a metrics listener
    /// there is no `/metrics` or `/readyz`.
    pub async fn build_with(
        config: IngressConfig,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        // Install the recorder before the first request so no sample is lost.
        shared::telemetry::metrics_handle();
        let metrics = HotMetrics::register();
        let client = topology::connect(&config.nats).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        let background = CancellationToken::new();
        let (readiness, keeper) = Topology::new(config.topology.clone()).keep(
            js.clone(),
            &needs(&config),
            background.clone(),
        );
        let body = BodyPolicy::new(
            config.max_body_bytes,
            config.body_read_timeout,
            config.body_budget_bytes,
        )
        .with_client(client.clone());
        let payload_watch = tokio::spawn(watch_max_payload(
            client.clone(),
            body.max_payload(),
            background.clone(),
        ));
        let turns = Turns::new(js.clone(), readiness.clone());
        let turn_opener = config
            .kore_callback
            .is_some()
            .then(|| tokio::spawn(turns.clone().open_when_ensured(background.clone())));
        let publisher = Publisher::new(js, readiness.clone(), metrics.clone());
        let state = AppState {
            intake: Intake::new(
                config.auth.clone(),
                config.topology.partitions,
                body,
                publisher,
                metrics.clone(),
            ),
            metrics,
            kore_callback: config.kore_callback.clone(),
            turns,
            partitions: config.topology.partitions,
        };
        let router = Router::new()
            .route(&config.events_path, post(receive_event))
            .route(&config.kore_callback_path, post(receive_kore_delivery))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Arc::new(state));
        Ok(Self {
            listener,
            metrics_listener,
            router,
            ops_router: ops_router(readiness),
            client,
            limits: ServerLimits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout,
            },
            shutdown_timeout: config.shutdown_timeout,
            background,
            keeper,
            payload_watch,
            turn_opener,
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

    /// The metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then finishes in-flight requests (bounded by
    /// `SHUTDOWN_TIMEOUT`) and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let metrics = self.metrics_listener.map(|l| {
            tokio::spawn(shared::telemetry::serve_metrics(
                l,
                self.ops_router,
                shutdown.clone(),
            ))
        });
        tracing::info!(addr = %self.listener.local_addr()?, "ingress listening");
        server::serve(
            self.listener,
            self.router,
            self.limits,
            shutdown,
            self.shutdown_timeout,
        )
        .await;
        self.background.cancel();
        let _ = self.keeper.await;
        let _ = self.payload_watch.await;
        if let Some(task) = self.turn_opener {
            let _ = task.await;
        }
        shared::topology::flush_at_shutdown(&self.client).await;
        if let Some(task) = metrics {
            task.abort();
        }
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// `/healthz` and `/readyz` for the metrics listener.
fn ops_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(topology::readyz))
        .with_state(readiness)
}

/// Keeps the body limit in step with the connected server's `max_payload` (it can differ
/// after a reconnect to another server of the cluster).
async fn watch_max_payload(
    client: async_nats::Client,
    max_payload: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let mut known = false;
        if client.connection_state() == async_nats::connection::State::Connected {
            let payload = client.server_info().max_payload;
            if payload > 0 {
                max_payload.store(payload, Ordering::Relaxed);
                known = true;
            }
        }
        // Until the first connection, look often: the limit is wrong until then.
        let pause = if known { 5_000 } else { 50 };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
}

async fn receive_event(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let received_at_ms = SystemClock.now_ms();
    // Kept for the log line of a failure; cloning a header value is a reference count.
    let request_id = request.headers().get("x-amzn-requestid").cloned();
    let response = match state.intake.accept(request, received_at_ms).await {
        Ok(accepted) => {
            // Debug, not info: one JSON line per accepted event was a fifth of the ingress'
            // CPU. Accepted events are counted, and the worker logs each with its request id.
            tracing::debug!(
                message_id = accepted.message_id,
                duplicate = accepted.stored.duplicate,
                "event stored"
            );
            let (counter, body) = if accepted.stored.duplicate {
                (&state.metrics.duplicate, r#"{"status":"duplicate"}"#)
            } else {
                (&state.metrics.accepted, r#"{"status":"accepted"}"#)
            };
            counter.increment(1);
            (
                StatusCode::ACCEPTED,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        Err(error) => {
            log_failure(&error, request_id.as_ref());
            metrics::counter!(telemetry::REQUESTS, "outcome" => error.outcome()).increment(1);
            error.into_response()
        }
    };
    state
        .metrics
        .request_seconds
        .record(started.elapsed().as_secs_f64());
    response
}

/// One line per refused request, with its request id (the hot path opens no span).
fn log_failure(error: &IngressError, request_id: Option<&HeaderValue>) {
    // `to_str` succeeds only on visible ASCII, so cutting at a byte index is safe.
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let request_id = &request_id[..request_id.len().min(64)];
    match error {
        IngressError::Unauthorized(reason) => {
            tracing::warn!(
                request_id,
                reason = reason.reason(),
                "webhook authentication failed"
            );
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason.reason()).increment(1);
        }
        IngressError::Unavailable(e) => tracing::error!(request_id, error = %e, "event not stored"),
        other => tracing::info!(request_id, error = %other, "event rejected"),
    }
}

/// The 403 body of [`IngressError::NoTurn`] (the callback's error bodies are `&'static str`).
const NO_TURN: &str = "no bot turn is outstanding for this user";

/// Kore.ai's asynchronous delivery: authenticate with the channel token, check that a bot turn
/// is outstanding for its user, store, answer 200 (also for a duplicate: it is stored).
async fn receive_kore_delivery(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let received_at_ms = SystemClock.now_ms();
    let result = async {
        let Some(auth) = &state.kore_callback else {
            return Err((StatusCode::NOT_FOUND, "kore callback is not enabled"));
        };
        if let Err(reason) = auth.verify(request.headers()) {
            tracing::warn!(
                reason = reason.reason(),
                "kore.ai callback authentication failed"
            );
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason.reason()).increment(1);
            return Err((StatusCode::UNAUTHORIZED, "unauthorized"));
        }
        let policy = state.intake.body_policy();
        let too_large = |e: IngressError| (e.status(), "body too large or unreadable");
        let declared = policy
            .declared_length(request.headers())
            .map_err(too_large)?;
        let _reservation = policy.reserve(declared).map_err(too_large)?;
        let body = policy.read(request.into_body()).await.map_err(too_large)?;
        match kore_callback::store(
            state.intake.publisher(),
            &state.turns,
            state.partitions,
            body,
            received_at_ms,
        )
        .await
        {
            Ok(stored) => Ok(stored.duplicate),
            Err(IngressError::BadRequest(_)) => {
                Err((StatusCode::BAD_REQUEST, "body is not a JSON object"))
            }
            Err(e @ IngressError::NoTurn) => {
                tracing::warn!("kore.ai delivery refused: {e}");
                Err((e.status(), NO_TURN))
            }
            Err(e) => {
                tracing::error!(error = %e, "kore.ai delivery not stored");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "event store unavailable, retry later",
                ))
            }
        }
    }
    .await;
    let (status, outcome, message) = match result {
        Ok(false) => (StatusCode::OK, "stored", "ok"),
        Ok(true) => {
            tracing::info!("kore.ai delivery already stored (duplicate)");
            (StatusCode::OK, "duplicate", "ok")
        }
        Err((status, message)) => (
            status,
            status.canonical_reason().unwrap_or("error"),
            message,
        ),
    };
    metrics::counter!(telemetry::KORE_CALLBACKS, "outcome" => outcome.to_ascii_lowercase().replace(' ', "_")).increment(1);
    let body = if status == StatusCode::OK {
        serde_json::json!({ "status": "ok" })
    } else {
        serde_json::json!({ "error": message })
    };
    (status, Json(body)).into_response()
}
