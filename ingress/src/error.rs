//! `IngressError`: every way a webhook request can fail, and the status each one gets.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shared::auth::AuthFailure;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The reason is logged and counted; the caller learns nothing about which check failed.
    #[error("unauthorized: {0}")]
    Unauthorized(AuthFailure),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// JetStream could not take the event in time; Khoros will retry, dedup makes that safe.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

impl IngressError {
    /// Label for `ingress_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngressError::Unauthorized(_) => "unauthorized",
            IngressError::TooLarge { .. } => "too_large",
            IngressError::BadRequest(_) => "bad_request",
            IngressError::Unavailable(_) => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngressError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let message = match &self {
            IngressError::Unauthorized(_) => "unauthorized".to_string(),
            IngressError::Unavailable(_) => "event store unavailable, retry later".to_string(),
            other => other.to_string(),
        };
        let mut response =
            (self.status(), Json(serde_json::json!({ "error": message }))).into_response();
        if matches!(self, IngressError::Unavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
