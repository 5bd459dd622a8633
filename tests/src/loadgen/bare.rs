//! The HTTP ceiling: an axum server that reads the request and answers 202 with the ingress'
//! body, and does nothing else. Run as its own process by `loadgen bare-server`.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The router: `POST <events_path>` -> 202 `{"status":"accepted"}`, `GET /readyz` -> 200.
pub fn router(events_path: &str) -> Router {
    Router::new()
        .route(
            events_path,
            post(|_body: Bytes| async {
                (
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({ "status": "accepted" })),
                )
            }),
        )
        .route("/readyz", get(|| async { "ready" }))
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
