//! `App`: binds the listeners, wires the pipeline to axum and runs until shutdown.
//!
//! The public listener serves only what Khoros and Kore.ai call (plus `/healthz`); `/metrics`
//! and `/readyz` are on the metrics listener, which is not exposed outside the cluster.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::auth::{Clock, SystemClock};
use shared::contract::headers;
use shared::service::{self, Base, Listeners, Supervisor};
use shared::topology::{buckets, Resource};
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

/// A built ingress: listeners bound, NATS connected, topology kept in the background.
pub struct App {
    listeners: Listeners,
    router: Router,
    ops_router: Router,
    base: Base,
    limits: ServerLimits,
    shutdown_timeout: Duration,
    max_payload: Arc<std::sync::atomic::AtomicUsize>,
    turns: Option<Turns>,
}

impl App {
    /// Binds `INGRESS_LISTEN` and `METRICS_LISTEN` and connects to NATS.
    pub async fn build(config: IngressConfig) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.listen, config.metrics_listen).await?;
        Self::build_with(config, listeners).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0`). Without a metrics listener
    /// there is no `/metrics` or `/readyz`.
    pub async fn build_with(config: IngressConfig, listeners: Listeners) -> anyhow::Result<Self> {
        // Install the recorder before the first request so no sample is lost.
        shared::telemetry::metrics_handle();
        let metrics = HotMetrics::register();
        let mut base =
            Base::connect(&config.nats, config.topology.clone(), &needs(&config)).await?;
        base.js.set_timeout(config.publish_timeout);
        let body = BodyPolicy::new(
            config.max_body_bytes,
            config.body_read_timeout,
            config.body_budget_bytes,
        )
        .with_client(base.client.clone());
        let max_payload = body.max_payload();
        let turns = Turns::new(base.js.clone(), base.readiness.clone());
        let publisher = Publisher::new(
            base.js.clone(),
            config.store_deadline,
            base.readiness.clone(),
            metrics.clone(),
        );
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
            turns: turns.clone(),
            partitions: config.topology.partitions,
        };
        let router = Router::new()
            .route(&config.events_path, post(receive_event))
            .route(&config.kore_callback_path, post(receive_kore_delivery))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Arc::new(state));
        Ok(Self {
            listeners,
            router,
            ops_router: service::ops_routes(base.readiness.clone()),
            limits: ServerLimits {
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout,
            },
            shutdown_timeout: config.shutdown_timeout,
            max_payload,
            turns: config.kore_callback.is_some().then_some(turns),
            base,
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

    /// The metrics listener's address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .metrics
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then finishes in-flight requests (bounded by
    /// `SHUTDOWN_TIMEOUT`) and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = Supervisor::new(&shutdown);
        let stop = tasks.stop();
        if let Some(listener) = self.listeners.metrics {
            tasks.spawn(
                "metrics",
                shared::telemetry::serve_metrics(listener, self.ops_router, stop.clone()),
            );
        }
        let watch = watch_max_payload(self.base.client.clone(), self.max_payload, stop.clone());
        tasks.spawn("max-payload", async move {
            watch.await;
            Ok::<_, String>(())
        });
        if let Some(turns) = self.turns {
            // Ends once the bucket is open (or at stop): not a task whose end stops the rest.
            tokio::spawn(turns.open_when_ensured(stop.clone()));
        }
        tracing::info!(addr = %self.listeners.main.local_addr()?, "ingress listening");
        let (listener, router, limits, timeout) = (
            self.listeners.main,
            self.router,
            self.limits,
            self.shutdown_timeout,
        );
        tasks.spawn("http", async move {
            server::serve(listener, router, limits, stop, timeout).await;
            Ok::<_, String>(())
        });
        // The HTTP server bounds its own drain by SHUTDOWN_TIMEOUT; the rest stop at once.
        tasks
            .run(self.shutdown_timeout + Duration::from_secs(1))
            .await;
        self.base.close().await;
        tracing::info!("ingress stopped");
        Ok(())
    }
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
    let request_id = request.headers().get(headers::KHOROS_REQUEST_ID).cloned();
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
    // Read by the pipeline's rules; an id those refuse is logged as absent. Visible ASCII
    // only, so cutting at a byte index is safe.
    let request_id = request_id
        .as_ref()
        .and_then(|v| headers::request_id_value(v).ok().flatten())
        .unwrap_or("");
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

/// Kore.ai's asynchronous delivery: authenticate with the channel token, check that a bot turn
/// is outstanding for its user, store, answer 200 (also for a duplicate: it is stored).
async fn receive_kore_delivery(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let received_at_ms = SystemClock.now_ms();
    let result = accept_kore_delivery(&state, request, received_at_ms).await;
    let outcome = match &result {
        Ok(false) => "stored",
        Ok(true) => "duplicate",
        Err(error) => error.outcome(),
    };
    metrics::counter!(telemetry::KORE_CALLBACKS, "outcome" => outcome).increment(1);
    match result {
        Ok(duplicate) => {
            if duplicate {
                tracing::info!("kore.ai delivery already stored (duplicate)");
            }
            (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
        }
        Err(error) => {
            match &error {
                IngressError::Unauthorized(reason) => {
                    tracing::warn!(
                        reason = reason.reason(),
                        "kore.ai callback authentication failed"
                    );
                    metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason.reason())
                        .increment(1);
                }
                IngressError::Unavailable(e) => {
                    tracing::error!(error = %e, "kore.ai delivery not stored");
                }
                other => tracing::warn!(error = %other, "kore.ai delivery refused"),
            }
            error.into_response()
        }
    }
}

/// Whether the delivery was a duplicate, once it is stored.
async fn accept_kore_delivery(
    state: &AppState,
    request: Request,
    received_at_ms: i64,
) -> Result<bool, IngressError> {
    let auth = state
        .kore_callback
        .as_ref()
        .ok_or(IngressError::CallbackDisabled)?;
    auth.verify(request.headers())
        .map_err(IngressError::Unauthorized)?;
    let policy = state.intake.body_policy();
    let declared = policy.declared_length(request.headers())?;
    let _reservation = policy.reserve(declared)?;
    let body = policy.read(request.into_body()).await?;
    let stored = kore_callback::store(
        state.intake.publisher(),
        &state.turns,
        state.partitions,
        body,
        received_at_ms,
    )
    .await?;
    Ok(stored.duplicate)
}
