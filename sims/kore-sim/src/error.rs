//! Every way a webhook call can fail, mapped to a status and Kore's error envelope
//! (`docs/vendors/kore-webhook-channel.md`, "Errors, limits and timeouts"):
//! `{"errors":[{"msg":..,"code":..}],"_v":"v2","_t":"RTM-TRACE-.."}` for V2 and
//! polls, the bare `errors` array for V1.

use axum::http::StatusCode;
use serde_json::{json, Value};
use thiserror::Error;

use super::jwt::JwtError;
use super::render::trace_id;

/// Which envelope flavour an error is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    V1,
    V2,
}

/// A failed webhook or poll call.
#[derive(Debug, Error)]
pub enum SimError {
    #[error("unknown bot id {0:?}")]
    UnknownBot(String),
    #[error("unknown route")]
    UnknownRoute,
    #[error("invalid token: {0}")]
    InvalidToken(#[from] JwtError),
    #[error("invalid request payload: {0}")]
    InvalidPayload(String),
    #[error("poll id unknown or already collected")]
    NoDataFound,
    #[error("rate limit reached")]
    RateLimited,
    #[error("sync answer exceeded the timeout")]
    TimedOut,
    #[error("scripted failure {status}")]
    Scripted { status: u16, msg: Option<String> },
    #[error("outage switch: {0}")]
    Outage(u16),
    #[error("simulator shutting down")]
    ShuttingDown,
}

impl SimError {
    pub fn status(&self) -> StatusCode {
        let code = match self {
            SimError::UnknownBot(_) | SimError::UnknownRoute => 404,
            SimError::InvalidToken(_) => 401,
            SimError::InvalidPayload(_) | SimError::NoDataFound => 400,
            SimError::RateLimited => 429,
            SimError::TimedOut => 504,
            SimError::Scripted { status, .. } | SimError::Outage(status) => *status,
            SimError::ShuttingDown => 503,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The envelope's `msg`, worded as Kore documents it where it does.
    pub fn msg(&self) -> String {
        match self {
            SimError::UnknownBot(_) => "Bot not found".into(),
            SimError::UnknownRoute => "Not found".into(),
            SimError::InvalidToken(e) => e.envelope_msg(),
            SimError::NoDataFound => "No data found".into(),
            SimError::Scripted { msg: Some(msg), .. } => msg.clone(),
            other => default_msg(other.status()),
        }
    }

    /// Body of the error response in the given flavour.
    /// "No data found" is bare, as in the poll table of `docs/vendors/kore-webhook-channel.md`,
    /// "V2 polling".
    pub fn envelope(&self, flavour: Flavour) -> Value {
        let flavour = match self {
            SimError::NoDataFound => Flavour::V1,
            _ => flavour,
        };
        envelope(self.status().as_u16(), &self.msg(), flavour)
    }
}

/// Kore's documented wording per status, the reason phrase otherwise.
pub fn default_msg(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "Invalid Request Payload".into(),
        401 => "Invalid Access token".into(),
        429 => "Too Many requests".into(),
        504 => "The request has been timed-out".into(),
        _ => status.canonical_reason().unwrap_or("Error").into(),
    }
}

/// `{"errors":[{"msg","code"}]}` plus `_v`/`_t` for V2.
pub fn envelope(code: u16, msg: &str, flavour: Flavour) -> Value {
    let mut body = json!({ "errors": [ { "msg": msg, "code": code } ] });
    if flavour == Flavour::V2 {
        body["_v"] = json!("v2");
        body["_t"] = json!(trace_id());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_follow_the_spec() {
        let v2 = SimError::InvalidToken(JwtError::BadSignature).envelope(Flavour::V2);
        assert_eq!(v2["errors"][0]["msg"], "Invalid Access token");
        assert_eq!(v2["errors"][0]["code"], 401);
        assert_eq!(v2["_v"], "v2");
        assert!(v2["_t"].as_str().unwrap().starts_with("RTM-TRACE-"));
        let v1 = SimError::RateLimited.envelope(Flavour::V1);
        assert_eq!(
            v1,
            json!({"errors":[{"msg":"Too Many requests","code":429}]})
        );
        assert_eq!(SimError::TimedOut.msg(), "The request has been timed-out");
        assert_eq!(
            SimError::Outage(503).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
