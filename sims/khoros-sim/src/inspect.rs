//! The inspection and control API under `/sim/...` (JSON, no auth) for tests and the demo:
//! read what the bot did, inject what Khoros' users and agents do, steer faults and the clock.
//! Errors are `{"error":"<text>"}` with 400 or 404.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::actions::{AuthorRef, InboundMessage};
use super::faults::Fault;
use super::request_log::{Origin, RequestState};
use super::settings::SettingsPatch;
use super::state::Shared;
use super::SimError;

type Answer = Result<Response, SimError>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/sim/state", get(summary))
        .route("/sim/conversations", get(conversations))
        .route("/sim/conversations/{author_id}", get(conversation))
        .route("/sim/messages/{author_id}", get(messages))
        .route("/sim/tags/{author_id}", get(tags))
        .route("/sim/priorities", get(priorities))
        .route("/sim/control-changes", get(control_changes))
        .route("/sim/requests", get(requests))
        .route("/sim/requests/{id}", get(request))
        .route("/sim/events", get(events))
        .route("/sim/tokens", get(tokens).post(mint_token))
        .route("/sim/health", get(health))
        .route(
            "/sim/faults",
            get(faults).post(add_fault).delete(clear_faults),
        )
        .route("/sim/faults/{id}", delete(remove_fault))
        .route("/sim/clock", get(clock).post(set_clock))
        .route("/sim/settings", get(settings).post(update_settings))
        .route("/sim/actions/message", post(inject_message))
        .route("/sim/actions/close", post(close))
        .route("/sim/actions/agent-reply", post(agent_reply))
        .route("/sim/actions/agent-take", post(agent_take))
        .route("/sim/actions/agent-return", post(agent_return))
        .route("/sim/reset", post(reset))
        .with_state(shared)
}

fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

/// Parses a JSON body into `T`, reporting problems as 400 instead of axum's plain text.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| SimError::Invalid(format!("body: {e}")))
}

/// `?networkKey=..&externalId=..` narrowing an author lookup.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Where {
    network_key: Option<String>,
    external_id: Option<String>,
}

type WhereQuery = Result<Query<Where>, QueryRejection>;

fn author_ref(author_id: String, at: WhereQuery) -> Result<AuthorRef, SimError> {
    let Query(at) = at.map_err(|e| SimError::Invalid(e.body_text()))?;
    Ok(AuthorRef {
        author_id,
        network_key: at.network_key,
        external_id: at.external_id,
    })
}

async fn summary(State(shared): State<Arc<Shared>>) -> Answer {
    let now = shared.now_ms();
    let config = &shared.config;
    let mut state = shared.lock();
    let health = state.health.view(now);
    ok(json!({
        "companyKey": config.company_key,
        "appId": config.app_id,
        "networkKey": config.network_key,
        "externalId": config.external_id,
        "clock": shared.clock.view(),
        "health": health,
        "settings": state.settings.view(),
        "conversations": state.conversations.all().len(),
        "events": state.events.len(),
        "requests": state.log.iter().count(),
    }))
}

async fn conversations(State(shared): State<Arc<Shared>>) -> Answer {
    ok(shared.lock().conversations.all())
}

async fn conversation(
    State(shared): State<Arc<Shared>>,
    Path(author_id): Path<String>,
    at: WhereQuery,
) -> Answer {
    let target = author_ref(author_id, at)?;
    shared
        .conversation(&target)
        .map(Json)
        .map(IntoResponse::into_response)
        .ok_or(SimError::UnknownConversation(target.author_id))
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Path(author_id): Path<String>,
    at: WhereQuery,
) -> Answer {
    let target = author_ref(author_id, at)?;
    ok(shared
        .conversation(&target)
        .map(|c| c.messages())
        .unwrap_or_default())
}

async fn tags(
    State(shared): State<Arc<Shared>>,
    Path(author_id): Path<String>,
    at: WhereQuery,
) -> Answer {
    let target = author_ref(author_id, at)?;
    let conversation = shared
        .conversation(&target)
        .ok_or(SimError::UnknownConversation(target.author_id))?;
    ok(json!({"tags": conversation.tags, "tagIds": conversation.tag_ids}))
}

async fn priorities(State(shared): State<Arc<Shared>>) -> Answer {
    let state = shared.lock();
    let list: Vec<Value> = state
        .conversations
        .all()
        .into_iter()
        .filter_map(|c| {
            c.priority.map(|p| {
                json!({
                    "authorId": c.key.author_id,
                    "networkKey": c.key.network_key,
                    "externalId": c.key.external_id,
                    "priority": p,
                })
            })
        })
        .collect();
    ok(list)
}

async fn control_changes(State(shared): State<Arc<Shared>>) -> Answer {
    ok(&shared.lock().control_changes)
}

#[derive(Debug, Default, Deserialize)]
struct RequestFilter {
    origin: Option<Origin>,
    state: Option<RequestState>,
}

async fn requests(
    State(shared): State<Arc<Shared>>,
    filter: Result<Query<RequestFilter>, QueryRejection>,
) -> Answer {
    let Query(filter) = filter.map_err(|_| {
        SimError::Invalid("origin must be BOT|KHOROS, state PENDING|SUCCESS|ERROR".into())
    })?;
    let state = shared.lock();
    let list: Vec<_> = state
        .log
        .iter()
        .filter(|r| filter.origin.is_none_or(|o| o == r.origin))
        .filter(|r| filter.state.is_none_or(|s| s == r.state))
        .collect();
    ok(list)
}

async fn request(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let state = shared.lock();
    let record = state.log.get(&id).ok_or(SimError::NotFound(id))?;
    ok(record)
}

async fn events(State(shared): State<Arc<Shared>>) -> Answer {
    ok(&shared.lock().events)
}

async fn tokens(State(shared): State<Arc<Shared>>) -> Answer {
    let now = shared.now_ms();
    ok(shared.lock().tokens.views(now))
}

/// Mints a fresh active token for the configured appId (the previous one enters its grace).
async fn mint_token(State(shared): State<Arc<Shared>>) -> Answer {
    let now = shared.now_ms();
    let app_id = shared.config.app_id.clone();
    ok(shared.with_state(|state| state.tokens.mint(&app_id, now)))
}

async fn health(State(shared): State<Arc<Shared>>) -> Answer {
    let now = shared.now_ms();
    ok(shared.with_state(|state| state.health.view(now)))
}

async fn faults(State(shared): State<Arc<Shared>>) -> Answer {
    ok(shared.lock().faults.list())
}

async fn add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let fault: Fault = parse(&body)?;
    let id = shared.with_state(|state| state.faults.add(fault))?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct RouteFilter {
    route: Option<String>,
}

async fn clear_faults(
    State(shared): State<Arc<Shared>>,
    filter: Result<Query<RouteFilter>, QueryRejection>,
) -> Answer {
    let Query(filter) = filter.map_err(|e| SimError::Invalid(e.body_text()))?;
    shared.with_state(|state| state.faults.clear(filter.route.as_deref()));
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_fault(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let id: u64 = id
        .parse()
        .map_err(|_| SimError::Invalid(format!("fault id {id:?}")))?;
    if shared.with_state(|state| state.faults.remove(id)) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(SimError::NotFound(format!("fault {id}")))
    }
}

async fn clock(State(shared): State<Arc<Shared>>) -> Answer {
    ok(shared.clock.view())
}

/// `{"setMs":..}`, `{"advanceMs":..}` and/or `{"speed":..}`, applied in that order.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockChange {
    set_ms: Option<i64>,
    advance_ms: Option<i64>,
    speed: Option<f64>,
}

async fn set_clock(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let change: ClockChange = parse(&body)?;
    if let Some(speed) = change.speed {
        // Validate before moving the clock so a bad request changes nothing.
        if !(speed.is_finite() && speed >= 0.0) {
            return Err(SimError::Invalid(format!(
                "speed must be >= 0, got {speed}"
            )));
        }
    }
    if let Some(ms) = change.set_ms {
        shared.clock.set_ms(ms);
    }
    if let Some(ms) = change.advance_ms {
        shared.clock.advance_ms(ms);
    }
    if let Some(speed) = change.speed {
        shared.clock.set_speed(speed)?;
    }
    shared.notify();
    ok(shared.clock.view())
}

async fn settings(State(shared): State<Arc<Shared>>) -> Answer {
    ok(shared.lock().settings.view())
}

async fn update_settings(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let patch: SettingsPatch = parse(&body)?;
    shared.with_state(|state| state.settings.apply(patch))?;
    ok(shared.lock().settings.view())
}

async fn inject_message(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let message: InboundMessage = parse(&body)?;
    ok(shared.inject_message(&message)?)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloseAction {
    #[serde(flatten)]
    target: AuthorRef,
    #[serde(default = "default_disposition")]
    disposition_id: i64,
}

fn default_disposition() -> i64 {
    1
}

async fn close(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let action: CloseAction = parse(&body)?;
    shared.close_conversation(&action.target, action.disposition_id)?;
    ok(shared.conversation(&action.target))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentReply {
    #[serde(flatten)]
    target: AuthorRef,
    text: String,
}

async fn agent_reply(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let action: AgentReply = parse(&body)?;
    let request_id = shared.agent_reply(&action.target, &action.text)?;
    ok(json!({"requestId": request_id}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentControl {
    #[serde(flatten)]
    target: AuthorRef,
    comment: Option<String>,
}

async fn agent_take(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let action: AgentControl = parse(&body)?;
    shared.agent_take(&action.target, action.comment)?;
    ok(shared.conversation(&action.target))
}

async fn agent_return(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let action: AgentControl = parse(&body)?;
    shared.agent_return(&action.target, action.comment)?;
    ok(shared.conversation(&action.target))
}

async fn reset(State(shared): State<Arc<Shared>>) -> Answer {
    shared.reset();
    Ok(StatusCode::NO_CONTENT.into_response())
}
