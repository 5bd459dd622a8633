//! `App`: binds the listeners, wires the pipeline to axum and runs until shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::topology::{self, buckets, Topology, EVENTS_STREAM};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::IngressConfig;
use crate::error::IngressError;
use crate::intake::{Backend, Intake, RawRequest};
use crate::kore_callback::{self, CallbackAuth};
use crate::publish::Publisher;
use crate::replay::ReplayGuard;
use crate::telemetry;

/// Shared by every request handler (behind an `Arc`: axum clones the state for each request,
/// and a deep clone of the keys and settings showed up in the profile).
struct AppState {
    intake: Intake,
    client: async_nats::Client,
    js: jetstream::Context,
    backend: Arc<OnceLock<Backend>>,
    max_body_bytes: usize,
    kore_callback: Option<CallbackAuth>,
    partitions: u32,
}

/// A built ingress: listeners bound, NATS connecting, topology being ensured in the background.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    router: Router,
    client: async_nats::Client,
    shutdown_timeout: Duration,
    topology_task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Binds `INGRESS_LISTEN` and `METRICS_LISTEN` and connects to NATS.
    pub async fn build(config: IngressConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
        Self::build_with(config, listener, Some(metrics_listener)).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0`).
    pub async fn build_with(
        config: IngressConfig,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        // Install the recorder before the first request so no sample is lost.
        shared::telemetry::metrics_handle();
        let client = topology::connect(&config.nats).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        let backend: Arc<OnceLock<Backend>> = Arc::default();
        let topology_task = tokio::spawn(ensure_until_ready(
            Topology::new(config.topology.clone()),
            js.clone(),
            Publisher::new(js.clone(), config.publish_timeout),
            backend.clone(),
        ));
        let state = AppState {
            intake: Intake::new(
                config.auth.clone(),
                config.topology.partitions,
                backend.clone(),
                config.publish_timeout,
            ),
            client: client.clone(),
            js,
            backend,
            max_body_bytes: config.max_body_bytes,
            kore_callback: config.kore_callback.clone(),
            partitions: config.topology.partitions,
        };
        let router = Router::new()
            .route(&config.events_path, post(receive_event))
            .route(&config.kore_callback_path, post(receive_kore_delivery))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(shared::telemetry::render))
            .with_state(Arc::new(state));
        Ok(Self {
            listener,
            metrics_listener,
            router,
            client,
            shutdown_timeout: config.shutdown_timeout,
            topology_task,
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

    /// Serves until `shutdown` fires, then finishes in-flight requests (bounded by
    /// `SHUTDOWN_TIMEOUT`) and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let metrics = self
            .metrics_listener
            .map(|l| tokio::spawn(shared::telemetry::serve_metrics(l, shutdown.clone())));
        tracing::info!(addr = %self.listener.local_addr()?, "ingress listening");
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let drain = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        tokio::select! {
            result = server => result?,
            _ = drain => tracing::warn!("in-flight requests did not finish within the shutdown timeout"),
        }
        self.topology_task.abort();
        shared::topology::flush_at_shutdown(&self.client).await;
        if let Some(task) = metrics {
            task.abort();
        }
        tracing::info!("ingress stopped");
        Ok(())
    }
}

/// Retries `ensure` until it succeeds; until then the ingress answers 503 and is not ready.
async fn ensure_until_ready(
    topology: Topology,
    js: jetstream::Context,
    publisher: Publisher,
    backend: Arc<OnceLock<Backend>>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            topology.ensure(&js).await.map_err(|e| e.to_string())?;
            js.get_key_value(buckets::SIGNATURES)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(signatures) => {
                let _ = backend.set(Backend {
                    publisher,
                    replay: ReplayGuard::new(signatures),
                });
                tracing::info!("jetstream topology ready");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "jetstream topology not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let stream_ok = connected
        && state.backend.get().is_some()
        && tokio::time::timeout(Duration::from_secs(1), state.js.get_stream(EVENTS_STREAM))
            .await
            .is_ok_and(|r| r.is_ok());
    let body = Json(serde_json::json!({ "nats_connected": connected, "stream": stream_ok }));
    let status = if stream_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn receive_event(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let received_at_ms = shared::auth::Clock::now_ms(&shared::auth::SystemClock);
    let request_id = request
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(64)
        .collect::<String>();
    let span =
        tracing::info_span!("event", request_id = %request_id, subject = tracing::field::Empty);
    let result = handle(&state, request, received_at_ms)
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    let response = match result {
        Ok((outcome, message_id)) => {
            // Debug, not info: formatting and writing one JSON line per accepted event was the
            // largest cost after the two JetStream round trips (about a fifth of the ingress'
            // CPU per request). Accepted events are counted in `ingress_requests_total`, and the
            // worker logs each one with its request id when it handles it.
            tracing::debug!(outcome, message_id, "event stored");
            metrics::counter!(telemetry::REQUESTS, "outcome" => outcome).increment(1);
            // A constant body: building and serialising a JSON map per request showed up in
            // the profile.
            let body = match outcome {
                "duplicate" => r#"{"status":"duplicate"}"#,
                _ => r#"{"status":"accepted"}"#,
            };
            (
                StatusCode::ACCEPTED,
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        Err(error) => {
            match &error {
                IngressError::Unauthorized(reason) => {
                    tracing::warn!(reason = reason.reason(), "webhook authentication failed");
                    metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason.reason())
                        .increment(1);
                }
                IngressError::Unavailable(e) => tracing::error!(error = %e, "event not stored"),
                other => tracing::info!(error = %other, "event rejected"),
            }
            metrics::counter!(telemetry::REQUESTS, "outcome" => error.outcome()).increment(1);
            error.into_response()
        }
    };
    metrics::histogram!(telemetry::REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
    response
}

async fn handle(
    state: &AppState,
    request: Request,
    received_at_ms: i64,
) -> Result<(&'static str, String), IngressError> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, state.max_body_bytes).await?;
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let raw = RawRequest {
        method: parts.method.as_str().to_string(),
        host,
        path_and_query: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        headers: parts.headers,
        body,
        received_at_ms,
    };
    let authenticated = state.intake.authenticate(raw)?;
    let routed = state.intake.route(authenticated)?;
    tracing::Span::current().record("subject", routed.subject.as_str());
    let accepted = state.intake.store(routed).await?;
    let outcome = if accepted.stored.duplicate {
        "duplicate"
    } else {
        "accepted"
    };
    Ok((outcome, accepted.message_id))
}

/// Reads at most `limit` bytes; a longer body is a 413 whatever its `Content-Length` says.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, IngressError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            IngressError::TooLarge { limit }
        } else {
            IngressError::BadRequest(format!("could not read body: {e}"))
        }
    })
}

/// Kore.ai's asynchronous delivery: authenticate with the channel token, store, answer 200.
async fn receive_kore_delivery(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let received_at_ms = shared::auth::Clock::now_ms(&shared::auth::SystemClock);
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
        let body = read_body(request.into_body(), state.max_body_bytes)
            .await
            .map_err(|e| (e.status(), "body too large or unreadable"))?;
        let backend = state
            .backend
            .get()
            .ok_or((StatusCode::SERVICE_UNAVAILABLE, "event store unavailable"))?;
        match kore_callback::store(&backend.publisher, state.partitions, body, received_at_ms).await
        {
            Ok(_) => Ok(()),
            Err(IngressError::BadRequest(_)) => {
                Err((StatusCode::BAD_REQUEST, "body is not a JSON object"))
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
        Ok(()) => (StatusCode::OK, "stored", "ok"),
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
