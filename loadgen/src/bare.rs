//! The HTTP ceiling: an axum server that reads the request and answers 202 with the ingress'
//! body, and does nothing else. Run as its own process by `loadgen bare-server`.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The ingress' answer to an accepted event (a constant body, as the ingress sends).
pub fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"accepted"}"#,
    )
        .into_response()
}

/// `GET /readyz` of the benchmark's own servers: up is ready.
pub fn readiness() -> Router {
    Router::new().route("/readyz", get(|| async { "ready" }))
}

/// The router: `POST <events_path>` -> 202 `{"status":"accepted"}`, `GET /readyz` -> 200.
pub fn router(events_path: &str) -> Router {
    Router::new()
        .route(events_path, post(|_body: Bytes| async { accepted() }))
        .merge(readiness())
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    events_path: &str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(events_path))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
