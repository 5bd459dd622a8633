//! The Webhook channel routes (`docs/vendors/kore-webhook-channel.md`, "Endpoints"): V1
//! `POST /chatbot/hooks/{botId}`, V2
//! `POST /chatbot/v2/webhook/{botId}` (each with `/hookInstance/{id}`), and the V2 poll
//! `GET /chatbot/v2/webhook/{botId}/poll/{pollId}`.
//!
//! A call goes: outage switch -> bot id -> JWT -> payload -> V2 `userIdentity` -> `jti`
//! replay -> rate limit -> the bot's turn -> sync answer (or 504, or a `pollId`) or async
//! acknowledgement plus queued deliveries. Each call is planned first (answer, how long to
//! wait before giving it, deliveries to queue after), then waited for, then recorded, even
//! when the client has gone meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::asynchronous::{self, Job, Target};
use super::config::{KoreSimConfig, Mode};
use super::error::{Flavour, SimError};
use super::inspect::RecordedRequest;
use super::jwt::{self, JwtError, JwtPolicy, VerifiedToken};
use super::payload::{self, ApiVersion, Event, Inbound, Message};
use super::poll::PollOutcome;
use super::render;
use super::script::{self, Turn};
use super::state::{lock, State};

/// What the bot says on `ON_CONNECT` (scripted turns are kept for user messages).
pub const WELCOME: &str = "Hello! How can I help you today?";

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/chatbot/hooks/{bot_id}", post(v1))
        .route(
            "/chatbot/hooks/{bot_id}/hookInstance/{instance}",
            post(v1_instance),
        )
        .route("/chatbot/v2/webhook/{bot_id}", post(v2))
        .route(
            "/chatbot/v2/webhook/{bot_id}/hookInstance/{instance}",
            post(v2_instance),
        )
        .route("/chatbot/v2/webhook/{bot_id}/poll/{poll_id}", get(poll))
        .with_state(state)
}

/// Any other path: 404 in Kore's envelope.
pub async fn not_found() -> Response {
    let error = SimError::UnknownRoute;
    (error.status(), Json(error.envelope(Flavour::V1))).into_response()
}

/// Which route was hit.
#[derive(Debug, Clone)]
enum Route {
    Message {
        version: ApiVersion,
        instance: Option<String>,
    },
    Poll {
        poll_id: String,
    },
}

/// The received call.
struct Call {
    method: Method,
    uri: Uri,
    bot_id: String,
    route: Route,
    headers: HeaderMap,
    body: Bytes,
}

/// A successful answer.
struct Answer {
    status: StatusCode,
    /// `None` = empty body (the V1 async acknowledgement).
    body: Option<Value>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: Some(body),
        }
    }
}

/// The decided outcome of a call.
struct Plan {
    /// How long the simulated platform takes before answering.
    wait: Duration,
    outcome: Result<Answer, SimError>,
    /// Async deliveries, queued once the acknowledgement is due.
    then: Option<Job>,
}

impl Plan {
    fn fail(wait: Duration, error: impl Into<SimError>) -> Self {
        Self {
            wait,
            outcome: Err(error.into()),
            then: None,
        }
    }
}

async fn v1(
    state: AxumState<Arc<State>>,
    Path(bot_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = Route::Message {
        version: ApiVersion::V1,
        instance: None,
    };
    handle(
        state.0,
        Call {
            method,
            uri,
            bot_id,
            route,
            headers,
            body,
        },
    )
    .await
}

async fn v1_instance(
    state: AxumState<Arc<State>>,
    Path((bot_id, instance)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = Route::Message {
        version: ApiVersion::V1,
        instance: Some(instance),
    };
    handle(
        state.0,
        Call {
            method,
            uri,
            bot_id,
            route,
            headers,
            body,
        },
    )
    .await
}

async fn v2(
    state: AxumState<Arc<State>>,
    Path(bot_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = Route::Message {
        version: ApiVersion::V2,
        instance: None,
    };
    handle(
        state.0,
        Call {
            method,
            uri,
            bot_id,
            route,
            headers,
            body,
        },
    )
    .await
}

async fn v2_instance(
    state: AxumState<Arc<State>>,
    Path((bot_id, instance)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = Route::Message {
        version: ApiVersion::V2,
        instance: Some(instance),
    };
    handle(
        state.0,
        Call {
            method,
            uri,
            bot_id,
            route,
            headers,
            body,
        },
    )
    .await
}

async fn poll(
    state: AxumState<Arc<State>>,
    Path((bot_id, poll_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let route = Route::Poll { poll_id };
    let body = Bytes::new();
    handle(
        state.0,
        Call {
            method,
            uri,
            bot_id,
            route,
            headers,
            body,
        },
    )
    .await
}

/// Runs the call on its own task: a client that gives up (times out, hangs up) does not stop
/// the turn, as on Kore's side, and the call is still recorded.
async fn handle(state: Arc<State>, call: Call) -> Response {
    match tokio::spawn(carry_out(state, call)).await {
        Ok(response) => response,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn carry_out(state: Arc<State>, call: Call) -> Response {
    let started = Instant::now();
    let received_at_ms = render::unix_millis();
    let config = state.config();
    let plan = match &call.route {
        Route::Message { version, instance } => {
            plan_message(&state, &config, &call, *version, instance.as_deref())
        }
        Route::Poll { poll_id } => plan_poll(&state, &config, &call, poll_id),
    };
    let outcome = tokio::select! {
        _ = state.cancel.cancelled() => Err(SimError::ShuttingDown),
        _ = tokio::time::sleep(plan.wait) => plan.outcome,
    };
    if let (Ok(_), Some(job)) = (&outcome, plan.then) {
        asynchronous::enqueue(&state, job);
    }
    let flavour = match call.route {
        Route::Message {
            version: ApiVersion::V1,
            ..
        } => Flavour::V1,
        _ => Flavour::V2,
    };
    let (status, body, error) = match outcome {
        Ok(answer) => (answer.status, answer.body, None),
        Err(e) => (e.status(), Some(e.envelope(flavour)), Some(e.to_string())),
    };
    record(
        &state,
        &call,
        status,
        body.as_ref(),
        error,
        received_at_ms,
        started,
    );
    match body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    }
}

fn record(
    state: &State,
    call: &Call,
    status: StatusCode,
    response: Option<&Value>,
    error: Option<String>,
    received_at_ms: u64,
    started: Instant,
) {
    let headers = call
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .fold(
            std::collections::BTreeMap::new(),
            |mut map, (name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                map.entry(name.as_str().to_string())
                    .and_modify(|v: &mut String| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert(value);
                map
            },
        );
    let auth = call.headers.get(header::AUTHORIZATION).map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match jwt::bearer_token(Some(&text)) {
            Ok(token) => json!({ "scheme": "bearer", "jwt": jwt::peek(token) }),
            Err(_) => {
                let scheme = text.split_whitespace().next().unwrap_or("").to_string();
                json!({ "scheme": scheme, "jwt": null })
            }
        }
    });
    let body = if call.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&call.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&call.body).into_owned()))
    };
    let user_id = body
        .pointer("/from/id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (version, instance, poll_id) = match &call.route {
        Route::Message { version, instance } => (*version, instance.clone(), None),
        Route::Poll { poll_id } => (ApiVersion::V2, None, Some(poll_id.clone())),
    };
    tracing::debug!(
        path = %call.uri.path(),
        status = status.as_u16(),
        user = ?user_id,
        error = ?error,
        "kore-sim call"
    );
    state.record_request(RecordedRequest {
        seq: 0,
        method: call.method.to_string(),
        path: call.uri.path().to_string(),
        version,
        instance,
        poll_id,
        headers,
        auth,
        body,
        user_id,
        status: status.as_u16(),
        response: response.cloned().unwrap_or(Value::Null),
        error,
        received_at_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
}

/// Outage switch, bot id and JWT: the checks shared by message and poll calls.
fn admit(config: &KoreSimConfig, call: &Call) -> Result<VerifiedToken, SimError> {
    if let Some(status) = config.fail_all {
        return Err(SimError::Outage(status));
    }
    if call.bot_id != config.bot_id {
        return Err(SimError::UnknownBot(call.bot_id.clone()));
    }
    let header = call
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| JwtError::NotBearer))
        .transpose()?;
    let token = jwt::bearer_token(header)?;
    let policy = JwtPolicy {
        alg: config.jwt_alg,
        client_id: &config.client_id,
        secret: config.client_secret.expose().as_bytes(),
        enforce_jti: config.enforce_jti,
    };
    let now = jwt::unix_now();
    Ok(policy.verify(token, now)?)
}

fn plan_message(
    state: &Arc<State>,
    config: &KoreSimConfig,
    call: &Call,
    version: ApiVersion,
    instance: Option<&str>,
) -> Plan {
    let latency = config.latency;
    let verified = match admit(config, call) {
        Ok(v) => v,
        Err(e) => return Plan::fail(latency, e),
    };
    let inbound = match payload::parse(version, &call.body) {
        Ok(inbound) => inbound,
        Err(reason) => return Plan::fail(latency, SimError::InvalidPayload(reason)),
    };
    if version == ApiVersion::V2 {
        if let Err(e) = verified.check_user(&inbound.user_id) {
            return Plan::fail(latency, e);
        }
    }
    if config.enforce_jti {
        if let Some((jti, exp)) = verified.jti() {
            if !state.first_use_of_jti(jti, exp, jwt::unix_now()) {
                return Plan::fail(latency, JwtError::Jti("possibly a replay"));
            }
        }
    }
    if let Some(limit) = config.rate_limit_per_minute {
        let key = format!("{}/{}", config.bot_id, inbound.user_id);
        if !lock(&state.limiter).allow(&key, limit, Instant::now()) {
            return Plan::fail(latency, SimError::RateLimited);
        }
    }
    let message_json = serde_json::from_slice::<Value>(&call.body)
        .ok()
        .and_then(|b| b.get("message").cloned())
        .unwrap_or(Value::Null);
    let now_ms = render::unix_millis();
    if inbound.message == Message::Event(Event::SessionClosure) {
        let closed = state.close_session(&inbound.user_id, message_json, now_ms);
        return Plan {
            wait: latency,
            outcome: Ok(Answer::ok(session_closure(closed))),
            then: None,
        };
    }
    state.touch_session(&inbound.user_id, inbound.session_new, message_json, now_ms);
    let turn = next_turn(state, config, &inbound);
    let channel = config.channel_for(instance);
    let timeout = config.sync_timeout;

    if let Some(failure) = &turn.fail {
        let wait = latency + turn.delay();
        if wait > timeout {
            return Plan::fail(timeout, SimError::TimedOut);
        }
        let error = SimError::Scripted {
            status: failure.status,
            msg: failure.msg.clone(),
        };
        return Plan::fail(wait, error);
    }

    match channel.mode {
        Mode::Async => {
            let ack = match version {
                ApiVersion::V1 => Answer {
                    status: StatusCode::OK,
                    body: None,
                },
                ApiVersion::V2 => {
                    Answer::ok(json!({ "status": "ok", "_v": "v2", "traceId": render::trace_id() }))
                }
            };
            let job = Job {
                version,
                user: inbound.user_id.clone(),
                bot: config.bot_id.clone(),
                instance: instance.map(str::to_string),
                target: Target {
                    post_url: channel.post_url.clone(),
                    access_token: channel.access_token.clone(),
                    token_header: channel.token_header.clone(),
                },
                delay: channel.async_delay + turn.delay(),
                task: turn.task_fields(),
                steps: turn.messages,
            };
            Plan {
                wait: latency,
                outcome: Ok(ack),
                then: Some(job),
            }
        }
        Mode::Sync => {
            let task = turn.task_fields();
            let polls = version == ApiVersion::V2 && channel.polling;
            let (first, pause, rest) = Turn::split_at_pause(&turn.messages);
            if let (true, Some(pause)) = (polls, pause) {
                let wait = latency + turn.delay();
                if wait > timeout {
                    return Plan::fail(timeout, SimError::TimedOut);
                }
                let ready_at = Instant::now() + wait + pause;
                let poll_id = lock(&state.polls).park(&inbound.user_id, ready_at, rest, task);
                let body = render::v2_sync(
                    &inbound.user_id,
                    &config.bot_id,
                    &first,
                    &Map::new(),
                    Some(&poll_id),
                );
                return Plan {
                    wait,
                    outcome: Ok(Answer::ok(body)),
                    then: None,
                };
            }
            let wait = latency + turn.delay() + turn.total_pause();
            if wait > timeout {
                return Plan::fail(timeout, SimError::TimedOut);
            }
            let body = match version {
                ApiVersion::V1 => render::v1_sync(&turn.messages, &task),
                ApiVersion::V2 => render::v2_sync(
                    &inbound.user_id,
                    &config.bot_id,
                    &turn.messages,
                    &task,
                    None,
                ),
            };
            Plan {
                wait,
                outcome: Ok(Answer::ok(body)),
                then: None,
            }
        }
    }
}

/// The scripted turn, else the default reply, else the echo; `ON_CONNECT` gets the welcome.
fn next_turn(state: &State, config: &KoreSimConfig, inbound: &Inbound) -> Turn {
    if inbound.message == Message::Event(Event::OnConnect) {
        return Turn::text(WELCOME);
    }
    if let Some(turn) = lock(&state.script).next(&inbound.user_id) {
        return turn;
    }
    match &config.default_reply {
        Some(turn) => turn.clone(),
        None => script::echo(&inbound.message.echo_text()),
    }
}

/// `docs/vendors/kore-webhook-channel.md`, "Session events".
fn session_closure(closed: bool) -> Value {
    let (event_type, description) = if closed {
        ("SESSION_CLOSURE_SUCCESS", "session closed successfully")
    } else {
        (
            "SESSION_CLOSURE_IGNORED",
            "no active session exists for the user",
        )
    };
    json!({ "data": [ { "type": "event", "val": "SESSION_CLOSURE",
        "eventType": event_type, "description": description } ], "_v": "v2" })
}

fn plan_poll(state: &State, config: &KoreSimConfig, call: &Call, poll_id: &str) -> Plan {
    let latency = config.latency;
    if let Err(e) = admit(config, call) {
        return Plan::fail(latency, e);
    }
    let outcome = lock(&state.polls).take(poll_id, Instant::now());
    let outcome = match outcome {
        PollOutcome::Unknown => Err(SimError::NoDataFound),
        PollOutcome::InProgress => Ok(Answer::ok(
            json!({ "status": "Inprogress", "pollId": poll_id, "_v": "v2" }),
        )),
        PollOutcome::Ready {
            user,
            steps,
            next,
            task,
        } => Ok(Answer::ok(render::v2_sync(
            &user,
            &config.bot_id,
            &steps,
            &task,
            next.as_deref(),
        ))),
    };
    Plan {
        wait: latency,
        outcome,
        then: None,
    }
}
