//! Errors: [`ApiError`] for the Bot API gateway (answered with the exact body shapes of
//! `docs/vendors/khoros-bot-api-v3.md`, "Error bodies")
//! and [`SimError`] for the in-process API and the `/sim` routes.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// A refused Bot API call. Bodies follow `docs/vendors/khoros-bot-api-v3.md`, "Error bodies".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `{"error":{"messages":[..]}}`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401 `{"error":{"message":"Unauthorized","requestId":..}}`.
    #[error("unauthorized")]
    Unauthorized,
    /// 403 `{"error":{"messages":[..]},"requestId":..}`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 `{"error":{"messages":[..]}}`.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409 `{"requestId":..,"error":{"messages":[..]}}` — documented as safe to retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A status forced by fault injection.
    #[error("injected {status}")]
    Injected {
        status: u16,
        retry_after_secs: Option<u64>,
        message: Option<String>,
    },
}

impl ApiError {
    /// The HTTP response, with `request_id` where the documented shape carries one
    /// (`docs/vendors/khoros-bot-api-v3.md`, "Error bodies").
    pub fn into_response_with(self, request_id: &str) -> Response {
        let (status, body, retry_after) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, messages(&m, None), None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, unauthorized(request_id), None),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, messages(&m, Some(request_id)), None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, messages(&m, None), None),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, messages(&m, Some(request_id)), None),
            ApiError::Injected {
                status,
                retry_after_secs,
                message,
            } => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = match status {
                    StatusCode::UNAUTHORIZED => unauthorized(request_id),
                    StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
                        messages(&message.unwrap_or_else(|| reason(status)), None)
                    }
                    StatusCode::CONFLICT => messages(
                        &message.unwrap_or_else(|| {
                            "Conflict while updating the conversation; nothing changed; safe to retry"
                                .into()
                        }),
                        Some(request_id),
                    ),
                    _ => messages(
                        &message.unwrap_or_else(|| reason(status)),
                        Some(request_id),
                    ),
                };
                (status, body, retry_after_secs)
            }
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `{"error":{"messages":[text]}}`, plus a top-level `requestId` when given.
fn messages(text: &str, request_id: Option<&str>) -> Value {
    match request_id {
        Some(id) => json!({"error": {"messages": [text]}, "requestId": id}),
        None => json!({"error": {"messages": [text]}}),
    }
}

fn unauthorized(request_id: &str) -> Value {
    json!({"error": {"message": "Unauthorized", "requestId": request_id}})
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_string()
}

/// A refused in-process or `/sim` request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("no conversation for author {0:?}")]
    UnknownConversation(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u128 },
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match &self {
            SimError::Invalid(_) => StatusCode::BAD_REQUEST,
            SimError::UnknownConversation(_) | SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Why the sim could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the listener: {0}")]
    Bind(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(#[from] SimError),
}
