//! `IngressError`: every way a webhook request can fail, and the status each one gets.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::auth::AuthFailure;
use shared::contract::headers::RequestIdError;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The reason is logged and counted; the caller learns nothing about which check failed.
    #[error("unauthorized: {0}")]
    Unauthorized(AuthFailure),
    /// Over `MAX_BODY_BYTES`, or over what the NATS server could ever store.
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad request: {0}")]
    BadRequest(#[from] BadRequest),
    /// A Kore.ai delivery for a user with no bot turn outstanding (or no usable `to`).
    #[error("no bot turn is outstanding for this user")]
    NoTurn,
    /// `POST /kore/callback` while no callback token is configured.
    #[error("kore callback is not enabled")]
    CallbackDisabled,
    /// The body did not arrive within `BODY_READ_TIMEOUT`.
    #[error("body not received within {0:?}")]
    BodyTimeout(Duration),
    /// The in-flight body budget is spent (a flood of large uploads); retry shortly.
    #[error("too many request bodies in flight")]
    Busy,
    /// JetStream could not take the event in time; Khoros will retry, dedup makes that safe.
    #[error("event store unavailable: {0}")]
    Unavailable(#[from] Unavailable),
}

/// The caller's own mistakes: each says which.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error(transparent)]
    RequestId(#[from] RequestIdError),
    #[error("Content-Length is not a number")]
    ContentLength,
    #[error("could not read body: {0}")]
    Unreadable(axum::Error),
    #[error("body is not a JSON event: {0}")]
    NotAnEvent(serde_json::Error),
    #[error("event has no `type`")]
    NoType,
    #[error("event has an empty `type`")]
    EmptyType,
    #[error("body is not a JSON object: {0}")]
    NotAnObject(serde_json::Error),
}

/// What could not be reached; logged, never shown to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The publish, or its PubAck, failed or timed out.
    #[error("publish: {0}")]
    Publish(async_nats::Error),
    /// The KV bucket that holds outstanding Kore.ai turns could not be read.
    #[error("turn bucket: {0}")]
    TurnBucket(async_nats::Error),
}

impl IngressError {
    /// Label for `ingress_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngressError::Unauthorized(_) => "unauthorized",
            IngressError::TooLarge { .. } => "too_large",
            IngressError::BadRequest(_) => "bad_request",
            IngressError::NoTurn => "no_turn",
            IngressError::CallbackDisabled => "disabled",
            IngressError::BodyTimeout(_) => "timeout",
            IngressError::Busy => "busy",
            IngressError::Unavailable(_) => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngressError::NoTurn => StatusCode::FORBIDDEN,
            IngressError::CallbackDisabled => StatusCode::NOT_FOUND,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Busy | IngressError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the caller is told: specific for its own mistakes, nothing about our internals.
    fn public_message(&self) -> String {
        match self {
            IngressError::Unauthorized(_) => "unauthorized".into(),
            IngressError::Unavailable(_) => "event store unavailable, retry later".into(),
            IngressError::Busy => "too many requests in flight, retry later".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.public_message() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            IngressError::TooLarge { .. } | IngressError::BodyTimeout(_)
        ) {
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
