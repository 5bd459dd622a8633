//! What tests and the demo can see and steer, as JSON under `/sim/` (no auth):
//!
//! | Route | Does |
//! |---|---|
//! | `GET /sim/health` | `{"status":"ok"}` |
//! | `GET /sim/requests` | `[RecordedRequest]`, oldest first |
//! | `DELETE /sim/requests` | forget recorded requests and deliveries |
//! | `GET /sim/deliveries` | `[Delivery]`, oldest first |
//! | `GET /sim/sessions` | `[Session]` by user id |
//! | `GET /sim/script` | `{"<user>": [Turn]}` still queued |
//! | `POST /sim/script` | `{"user": "<from.id>", "turns": [Turn]}` appends turns |
//! | `DELETE /sim/script` | drop every queued turn |
//! | `GET /sim/config` | the live config, secrets as `***` |
//! | `POST /sim/config` | apply a [`ConfigPatch`]; answers the new config |
//! | `POST /sim/reset` | forget log, sessions, scripts, polls, limiter (config kept) |
//!
//! Bad input gets `400 {"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use super::config::ConfigPatch;
use super::payload::ApiVersion;
use super::script::Turn;
use super::state::{lock, State};

/// One call received on a `/chatbot/...` route.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// 1, 2, ... in arrival-completion order since start or reset.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub version: ApiVersion,
    /// The `hookInstance` segment, if any.
    pub instance: Option<String>,
    /// Set on poll calls.
    pub poll_id: Option<String>,
    /// All headers but `authorization`, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// `{"scheme":"bearer","jwt":{"header":{..},"claims":{..}}}` (never the raw token or
    /// signature); `null` without an Authorization header.
    pub auth: Option<Value>,
    /// The body as JSON, or as a string when it is not JSON.
    pub body: Value,
    /// `from.id` when the body has one.
    pub user_id: Option<String>,
    pub status: u16,
    /// The response body (`null` when empty).
    pub response: Value,
    /// Why the call failed, in the simulator's words (not part of Kore's answer).
    pub error: Option<String>,
    pub received_at_ms: u64,
    pub duration_ms: u64,
}

/// Message delivery or task-status delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryKind {
    Message,
    Status,
}

/// One async POST to a channel's POST_URL.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub seq: u64,
    pub version: ApiVersion,
    pub kind: DeliveryKind,
    pub user_id: String,
    pub instance: Option<String>,
    pub url: Option<String>,
    /// Name of the header that carried the access token (its value is never recorded).
    pub token_header: Option<String>,
    pub body: Value,
    /// POST_URL's answer; `None` when the request failed (`error` says why).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub sent_at_ms: u64,
    pub duration_ms: u64,
}

/// A `wait_for_*` ran out of time.
#[derive(Debug, Error)]
#[error("timed out waiting for {wanted} {what}; saw {seen}")]
pub struct WaitTimeout {
    pub what: &'static str,
    pub wanted: u64,
    pub seen: u64,
}

/// `POST /sim/script` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    pub user: String,
    pub turns: Vec<Turn>,
}

/// A refused control call.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/sim/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/sim/requests", get(list_requests).delete(clear_requests))
        .route("/sim/deliveries", get(list_deliveries))
        .route("/sim/sessions", get(list_sessions))
        .route(
            "/sim/script",
            get(list_script).post(add_script).delete(clear_script),
        )
        .route("/sim/config", get(show_config).post(patch_config))
        .route("/sim/reset", post(reset))
        .with_state(state)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid JSON body: {e}")))
}

async fn list_requests(AxumState(state): AxumState<Arc<State>>) -> Json<Vec<RecordedRequest>> {
    Json(state.requests())
}

async fn clear_requests(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    state.clear_log();
    StatusCode::NO_CONTENT
}

async fn list_deliveries(AxumState(state): AxumState<Arc<State>>) -> Json<Vec<Delivery>> {
    Json(state.deliveries())
}

async fn list_sessions(AxumState(state): AxumState<Arc<State>>) -> Json<Value> {
    let sessions: Vec<_> = lock(&state.sessions).values().cloned().collect();
    Json(json!(sessions))
}

async fn list_script(AxumState(state): AxumState<Arc<State>>) -> Json<Value> {
    Json(json!(lock(&state.script).pending()))
}

async fn add_script(
    AxumState(state): AxumState<Arc<State>>,
    body: Bytes,
) -> Result<StatusCode, BadRequest> {
    let request: ScriptRequest = parse(&body)?;
    push_script(&state, &request.user, request.turns)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Validates and appends `turns` for `user`.
pub fn push_script(state: &State, user: &str, turns: Vec<Turn>) -> Result<(), BadRequest> {
    if user.trim().is_empty() {
        return Err(BadRequest("user must be a non-empty from.id".into()));
    }
    for turn in &turns {
        turn.validate().map_err(BadRequest)?;
    }
    lock(&state.script).push(user, turns);
    Ok(())
}

async fn clear_script(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    lock(&state.script).clear();
    StatusCode::NO_CONTENT
}

async fn show_config(AxumState(state): AxumState<Arc<State>>) -> Json<Value> {
    Json(state.config().view())
}

async fn patch_config(
    AxumState(state): AxumState<Arc<State>>,
    body: Bytes,
) -> Result<Json<Value>, BadRequest> {
    let patch: ConfigPatch = parse(&body)?;
    apply_patch(&state, &patch)?;
    Ok(Json(state.config().view()))
}

/// Applies `patch` atomically, or not at all.
pub fn apply_patch(state: &State, patch: &ConfigPatch) -> Result<(), BadRequest> {
    if let Some(Some(turn)) = &patch.default_reply {
        turn.validate().map_err(BadRequest)?;
    }
    let mut config = lock(&state.config);
    *config = patch
        .apply(&config)
        .map_err(|e| BadRequest(e.to_string()))?;
    Ok(())
}

async fn reset(AxumState(state): AxumState<Arc<State>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}
