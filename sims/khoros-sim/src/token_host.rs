//! The Care instance's token-creation endpoint (`docs/vendors/khoros-bot-api-v3.md`,
//! "Create the first token"): HTTP Basic, one-shot create
//! (409 while a token exists, allowed again after DELETE), and GET to read the current one.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use shared::auth::BasicVerifier;

use super::faults::Applied;
use super::gateway::{dropped_connection, fault_gate, spoil, Gate};
use super::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/api/v2/tokens/khorosapi/ownerId/{owner_id}",
            post(create).get(current),
        )
        .with_state(shared)
}

fn fail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "fail", "message": message}))).into_response()
}

/// Faults, then Basic auth, then the owner id; `Ok` carries the owner id and a fault that
/// spoils the answer afterwards.
async fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    owner_id: Result<Path<String>, PathRejection>,
) -> Result<(String, Option<Applied>), Response> {
    let then = match fault_gate(shared, "token_create").await {
        Gate::Pass { then } => then,
        Gate::Drop => return Err(dropped_connection()),
        Gate::Respond(error) => {
            return Err(error.into_response_with(&uuid::Uuid::new_v4().to_string()))
        }
    };
    let verifier = BasicVerifier::new(
        &shared.config.token_host_user,
        &shared.config.token_host_password,
    );
    if verifier.verify(headers).is_err() {
        return Err(fail(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    owner_id
        .map(|Path(id)| (id, then))
        .map_err(|e| fail(StatusCode::BAD_REQUEST, &format!("Invalid ownerId: {e}")))
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    owner_id: Result<Path<String>, PathRejection>,
) -> Response {
    let (owner_id, then) = match admit(&shared, &headers, owner_id).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let now = shared.now_ms();
    let response = match shared.with_state(|state| state.tokens.create(&owner_id, now)) {
        Ok(issued) => Json(json!({"status": "success", "data": issued})).into_response(),
        Err(_) => fail(
            StatusCode::CONFLICT,
            &format!("A token already exists for ownerId {owner_id}"),
        ),
    };
    spoil(then, response, &uuid::Uuid::new_v4().to_string()).await
}

async fn current(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    owner_id: Result<Path<String>, PathRejection>,
) -> Response {
    let (owner_id, then) = match admit(&shared, &headers, owner_id).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let now = shared.now_ms();
    let found = shared.lock().tokens.active(&owner_id, now);
    let response = match found {
        Some(issued) => Json(json!({"status": "success", "data": issued})).into_response(),
        None => fail(
            StatusCode::NOT_FOUND,
            &format!("No token found for ownerId {owner_id}"),
        ),
    };
    spoil(then, response, &uuid::Uuid::new_v4().to_string()).await
}
