//! The Bot API v3 gateway (`docs/vendors/khoros-bot-api-v3.md`): every `/bots/v3/*` route with its
//! status codes and
//! error bodies.
//!
//! One middleware wraps all routes: it assigns the `x-amzn-RequestId`, applies injected
//! faults, checks the bearer token against the token table, and logs the call (origin `BOT`)
//! for `GET /bots/v3/request/{id}`. A fault with `after` is applied once the call was carried
//! out and logged, to the answer only. Handlers parse bodies themselves so malformed JSON gets
//! the 400 shape of `docs/vendors/khoros-bot-api-v3.md` ("Error bodies") rather than axum's
//! plain-text rejection.

use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use shared::event::{Author, Coordinate, Owner};

use super::conversations::{ChangeSource, ConvKey, TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF};
use super::error::ApiError;
use super::faults::{Applied, Outcome};
use super::request_log::{parse_from, Origin, RequestRecord, RequestState};
use super::state::Shared;

/// Largest request body accepted (axum's own default).
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// The response header Khoros puts on every Bot API answer (`docs/vendors/khoros-webhooks.md`,
/// "Request id").
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// What the middleware tells a handler about the call.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub request_id: String,
    /// The appId the bearer token belongs to.
    pub app_id: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/bots/v3/respond", post(respond))
        .route("/bots/v3/control", put(control))
        .route(
            "/bots/v3/control/network/{network_key}/externalId/{external_id}/author/{author_id}",
            get(control_status),
        )
        .route("/bots/v3/tag", put(tag))
        .route("/bots/v3/tag/remove", put(tag_remove))
        .route("/bots/v3/priority", put(priority))
        .route("/bots/v3/note", put(note))
        .route("/bots/v3/workqueue", put(workqueue))
        .route("/bots/v3/resolve", put(resolve))
        .route("/bots/v3/authors/attributes", put(author_attributes))
        .route("/bots/v3/request/appId/{app_id}", get(request_list))
        .route("/bots/v3/request/{id}", get(request_one))
        .route(
            "/bots/v3/tokens/appId/{app_id}",
            put(token_refresh).delete(token_delete),
        )
        .route("/bots/v3/health/appId/{app_id}", get(health))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            bot_api_layer,
        ))
        .with_state(shared)
}

/// The fault-injection route name of a gateway path (see [`super::faults`]).
pub fn route_name(method: &Method, path: &str) -> &'static str {
    let rest = path.strip_prefix("/bots/v3/").unwrap_or(path);
    match rest.split('/').next().unwrap_or("") {
        "respond" => "respond",
        "control" if method == Method::GET => "control_get",
        "control" => "control",
        "tag" => "tag",
        "priority" => "priority",
        "note" => "note",
        "workqueue" => "workqueue",
        "resolve" => "resolve",
        "authors" => "authors",
        "request" => "request",
        "tokens" => "tokens",
        "health" => "health",
        _ => "other",
    }
}

/// What fault injection decided for a call.
pub enum Gate {
    /// Carry the call out; `then` (a fault with `after`) spoils its answer afterwards.
    Pass {
        then: Option<Applied>,
    },
    Respond(ApiError),
    Drop,
}

/// Applies the first matching fault of `route`: a fault striking before the call sleeps its
/// latency here; one with `after` is handed back for [`spoil`].
pub async fn fault_gate(shared: &Shared, route: &str) -> Gate {
    let roll = rand::random_range(0..100_u8);
    let Some(applied) = shared.with_state(|state| state.faults.pick(route, roll)) else {
        return Gate::Pass { then: None };
    };
    if applied.after {
        return Gate::Pass {
            then: Some(applied),
        };
    }
    if let Some(latency) = applied.latency {
        tokio::time::sleep(latency).await;
    }
    spoiled(applied.outcome)
}

fn spoiled(outcome: Outcome) -> Gate {
    match outcome {
        Outcome::Proceed => Gate::Pass { then: None },
        Outcome::Status {
            status,
            retry_after_secs,
            message,
        } => Gate::Respond(ApiError::Injected {
            status,
            retry_after_secs,
            message,
        }),
        Outcome::Drop => Gate::Drop,
    }
}

/// The answer the client gets for a call that was carried out, under a fault with `after`:
/// its latency is waited now, then its status or drop replaces `response`.
pub async fn spoil(then: Option<Applied>, response: Response, request_id: &str) -> Response {
    let Some(applied) = then else {
        return response;
    };
    if let Some(latency) = applied.latency {
        tokio::time::sleep(latency).await;
    }
    match spoiled(applied.outcome) {
        Gate::Pass { .. } => response,
        Gate::Respond(error) => error.into_response_with(request_id),
        Gate::Drop => dropped_connection(),
    }
}

/// A response whose body fails before the status line is written: hyper then closes the
/// connection and the client sees it end without any response.
pub fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "fault injection: connection dropped",
        ))
    });
    Response::new(Body::from_stream(failing))
}

async fn bot_api_layer(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = route_name(&method, &path);
    let (mut parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
        let response = ApiError::BadRequest("Request body too large or unreadable".into())
            .into_response_with(&request_id);
        return with_request_id(response, &request_id);
    };

    let mut caller = None;
    let mut then = None;
    let response = match fault_gate(&shared, route).await {
        Gate::Drop => {
            log_call(&shared, &request_id, &method, &path, None, &body, None, b"");
            return dropped_connection();
        }
        Gate::Respond(error) => error.into_response_with(&request_id),
        Gate::Pass { then: after } => {
            then = after;
            match authenticate(&shared, &parts.headers) {
                Err(error) => error.into_response_with(&request_id),
                Ok(app_id) => {
                    caller = Some(app_id.clone());
                    parts.extensions.insert(Ctx {
                        request_id: request_id.clone(),
                        app_id,
                    });
                    next.run(Request::from_parts(parts, Body::from(body.clone())))
                        .await
                }
            }
        }
    };

    // Buffer the (small) answer so its error text can go into the log record.
    let (response_parts, response_body) = response.into_parts();
    // No limit here: a request-log listing of a long run is many megabytes, and cutting it
    // would hand the client an empty body instead of the log.
    let response_bytes = to_bytes(response_body, usize::MAX)
        .await
        .unwrap_or_default();
    log_call(
        &shared,
        &request_id,
        &method,
        &path,
        caller,
        &body,
        Some(response_parts.status),
        &response_bytes,
    );
    // The log holds what really happened; only the client's answer is spoiled.
    let response = spoil(
        then,
        Response::from_parts(response_parts, Body::from(response_bytes)),
        &request_id,
    )
    .await;
    with_request_id(response, &request_id)
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The appId of a valid `Authorization: Bearer <token>`.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    let now = shared.now_ms();
    shared
        .lock()
        .tokens
        .authenticate(token.trim(), now)
        .map_err(|_| ApiError::Unauthorized)
}

/// Records a Bot API call (origin `BOT`); `status: None` means the connection was dropped.
#[allow(clippy::too_many_arguments)]
fn log_call(
    shared: &Shared,
    request_id: &str,
    method: &Method,
    path: &str,
    app_id: Option<String>,
    body: &[u8],
    status: Option<StatusCode>,
    response: &[u8],
) {
    let config = &shared.config;
    let coordinate = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("coordinate").cloned());
    let field = |name: &str, default: &str| {
        coordinate
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    let (state, code, message) = match status {
        Some(s) if s.is_success() => (RequestState::Success, s.as_u16().to_string(), "OK".into()),
        Some(s) => (
            RequestState::Error,
            s.as_u16().to_string(),
            error_text(response)
                .unwrap_or_else(|| s.canonical_reason().unwrap_or("Error").to_string()),
        ),
        None => (
            RequestState::Error,
            "NONE".to_string(),
            "connection dropped".to_string(),
        ),
    };
    let mut details = Map::new();
    details.insert("code".into(), json!(code));
    details.insert("message".into(), json!(message));
    details.insert("method".into(), json!(method.as_str()));
    details.insert("path".into(), json!(path));
    let now = shared.now_ms();
    let record = RequestRecord {
        id: request_id.to_string(),
        company_key: field("companyKey", &config.company_key),
        external_id: field("externalId", &config.external_id),
        network_key: field("networkKey", &config.network_key),
        app_id: app_id.unwrap_or_default(),
        callback_url: None,
        origin: Origin::Bot,
        state,
        details,
        payload: String::from_utf8_lossy(body).into_owned(),
        created_epoch_millis: now,
        completed_epoch_millis: Some(now),
        last_updated_epoch_millis: now,
    };
    shared.with_state(|state| state.log.insert(record));
}

/// The human text of one of the error bodies of `docs/vendors/khoros-bot-api-v3.md`.
fn error_text(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    error
        .get("messages")
        .and_then(|m| m.get(0))
        .or_else(|| error.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn reply(ctx: &Ctx, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.into_response_with(&ctx.request_id))
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// The common part of every action body: `type`, `coordinate`, `author`
/// (`docs/vendors/khoros-bot-api-v3.md`, "Coordinate and author").
struct Envelope {
    body: Map<String, Value>,
    kind: String,
    author: Author,
    key: ConvKey,
}

impl Envelope {
    fn parse(shared: &Shared, ctx: &Ctx, raw: &[u8], types: &[&str]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|e| bad(format!("Unable to parse request body: {e}")))?;
        let Value::Object(body) = value else {
            return Err(bad("Request body must be a JSON object"));
        };
        let kind = match body.get("type") {
            None | Some(Value::Null) => return Err(bad("type may not be null")),
            Some(Value::String(kind)) if types.contains(&kind.as_str()) => kind.clone(),
            Some(Value::String(kind)) => return Err(bad(format!("Invalid type {kind}"))),
            Some(other) => return Err(bad(format!("Invalid type {other}"))),
        };
        let coordinate: Coordinate = match body.get("coordinate") {
            Some(v @ Value::Object(_)) => serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("Invalid coordinate: {e}")))?,
            _ => return Err(bad("coordinate may not be null")),
        };
        let author: Author = match body.get("author") {
            Some(v @ Value::Object(_)) => serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("Invalid author: {e}")))?,
            _ => return Err(bad("author may not be null")),
        };
        if author.id.trim().is_empty() {
            return Err(bad("author.id may not be null"));
        }
        let network_key = coordinate
            .network_key
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("coordinate.networkKey may not be null"))?;
        if !shared.network_is_valid(network_key) {
            return Err(bad(format!("Invalid networkKey {network_key}")));
        }
        let external_id = coordinate
            .external_id
            .as_deref()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| bad("coordinate.externalId may not be null"))?;
        // `docs/vendors/khoros-bot-api-v3.md`, "Token errors": a token of appId A on a coordinate
        // of bot B.
        if coordinate
            .bot_id
            .as_deref()
            .is_some_and(|bot| bot != ctx.app_id)
        {
            return Err(ApiError::Forbidden(not_owner(&body)));
        }
        let key = ConvKey {
            company_key: coordinate
                .company_key
                .clone()
                .unwrap_or_else(|| shared.config.company_key.clone()),
            network_key: network_key.to_string(),
            external_id: external_id.to_string(),
            author_id: author.id.clone(),
        };
        Ok(Self {
            body,
            kind,
            author,
            key,
        })
    }

    fn has(&self, field: &str) -> bool {
        self.body.get(field).is_some_and(|v| !v.is_null())
    }

    fn optional_string(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{field} must be a string"))),
        }
    }
}

fn not_owner(body: &Map<String, Value>) -> String {
    let coordinate = body.get("coordinate").cloned().unwrap_or(Value::Null);
    format!("This bot doesn't own the conversation {coordinate}")
}

// `docs/vendors/khoros-bot-api-v3.md`, "Respond"
async fn respond(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    reply(&ctx, respond_inner(&shared, &ctx, &body))
}

fn respond_inner(shared: &Shared, ctx: &Ctx, raw: &[u8]) -> Result<Response, ApiError> {
    let env = Envelope::parse(
        shared,
        ctx,
        raw,
        &["message", "typing_start", "typing_stop"],
    )?;
    if env.kind == "message" {
        env.optional_string("text")?;
        if !["text", "media", "richContent", "list", "payload"]
            .iter()
            .any(|f| env.has(f))
        {
            return Err(bad("text may not be empty"));
        }
        if env.has("payload") && env.has("list") {
            return Err(bad("payload cannot be combined with list"));
        }
        for array in ["media", "actions"] {
            if env.has(array) && !env.body[array].is_array() {
                return Err(bad(format!("{array} must be an array")));
            }
        }
    }
    let now = shared.now_ms();
    let limit = shared.config.history_limit;
    let respond_accepted = shared.with_state(|state| {
        let conversation =
            state
                .conversations
                .touch(&env.key, &env.author, &shared.config.app_id, now);
        if !conversation.owner.is_bot(&ctx.app_id) {
            return Err(ApiError::Forbidden(not_owner(&env.body)));
        }
        conversation.push_reply(Value::Object(env.body.clone()), limit);
        Ok(state.settings.respond_accepted)
    })?;
    if respond_accepted {
        return Ok(accepted());
    }
    let message_id = rand::random_range(7_700_000_000_000_000_000_u64..7_800_000_000_000_000_000);
    Ok(Json(json!({
        "data": {
            "messageId": message_id.to_string(),
            "payloadType": env.kind,
            "requestState": "SUCCESS",
        },
        "requestId": ctx.request_id,
    }))
    .into_response())
}

// `docs/vendors/khoros-bot-api-v3.md`, "Control (hand-off)"
async fn control(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    reply(&ctx, control_inner(&shared, &ctx, &body))
}

fn parse_owner(value: Option<&Value>) -> Result<Owner, ApiError> {
    let owner = match value {
        Some(Value::Object(owner)) => owner,
        _ => return Err(bad("owner may not be null")),
    };
    match owner.get("type").and_then(Value::as_str) {
        Some("AGENT") => Ok(Owner::agent()),
        Some("BOT") => match owner.get("appId").and_then(Value::as_str) {
            Some(app_id) if !app_id.is_empty() => Ok(Owner::bot(app_id)),
            _ => Err(bad("owner.appId may not be null")),
        },
        Some(other) => Err(bad(format!("Invalid owner type {other}"))),
        None => Err(bad("owner.type may not be null")),
    }
}

fn control_inner(shared: &Shared, ctx: &Ctx, raw: &[u8]) -> Result<Response, ApiError> {
    let env = Envelope::parse(shared, ctx, raw, &["control"])?;
    let owner = parse_owner(env.body.get("owner"))?;
    let comment = env.optional_string("comment")?;
    let now = shared.now_ms();
    let echo = shared.with_state(|state| {
        state
            .conversations
            .touch(&env.key, &env.author, &shared.config.app_id, now);
        let tags: &[&str] = if owner.kind == "AGENT" {
            &[TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF]
        } else {
            &[]
        };
        shared.change_owner(state, &env.key, owner, ChangeSource::Bot, comment, tags);
        let conversation = state.conversations.get(&env.key)?;
        let mut echo = env.body.clone();
        echo.insert(
            "conversationDisplayId".into(),
            json!(conversation.conversation_display_id),
        );
        echo.insert("lastUpdateTS".into(), json!(conversation.last_update_ts));
        Some(echo)
    });
    let echo = echo.ok_or_else(|| ApiError::NotFound("Conversation not found".into()))?;
    Ok(Json(json!({ "data": echo })).into_response())
}

// `docs/vendors/khoros-bot-api-v3.md`, "Control lookup"
async fn control_status(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path((network_key, external_id, author_id)) =
            path.map_err(|e| bad(format!("Invalid path: {e}")))?;
        if !shared.network_is_valid(&network_key) {
            return Err(bad(format!("Invalid networkKey {network_key}")));
        }
        let key = shared.key(&author_id, Some(&network_key), Some(&external_id));
        let state = shared.lock();
        let conversation = state.conversations.get(&key).ok_or_else(|| {
            ApiError::NotFound(format!("No conversation found for author {author_id}"))
        })?;
        Ok(Json(json!({
            "data": {
                "type": "control",
                "author": conversation.author,
                "coordinate": {
                    "companyKey": key.company_key,
                    "networkKey": key.network_key,
                    "externalId": key.external_id,
                },
                "owner": conversation.owner,
                "lastUpdatedTS": conversation.last_update_ts,
            }
        }))
        .into_response())
    })();
    reply(&ctx, result)
}

// `docs/vendors/khoros-bot-api-v3.md`, "Tags"
async fn tag(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    reply(&ctx, tag_inner(&shared, &ctx, &body, false))
}

async fn tag_remove(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    reply(&ctx, tag_inner(&shared, &ctx, &body, true))
}

fn tag_inner(shared: &Shared, ctx: &Ctx, raw: &[u8], remove: bool) -> Result<Response, ApiError> {
    let env = Envelope::parse(
        shared,
        ctx,
        raw,
        if remove { &["remove_tag"] } else { &["tag"] },
    )?;
    match env.optional_string("entityType")? {
        Some(entity) if !entity.is_empty() => {}
        _ => return Err(bad("entityType may not be null")),
    }
    let ids = match env.body.get("tagIds") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| id.as_i64().ok_or_else(|| bad("tagIds must be integers")))
            .collect::<Result<Vec<i64>, _>>()?,
        _ => return Err(bad("tagIds may not be empty")),
    };
    let now = shared.now_ms();
    shared.with_state(|state| {
        let conversation =
            state
                .conversations
                .touch(&env.key, &env.author, &shared.config.app_id, now);
        if remove {
            let before = conversation.tag_ids.len();
            conversation.tag_ids.retain(|id| !ids.contains(id));
            if conversation.tag_ids.len() == before {
                return Err(bad("Unable to process tag remove request"));
            }
        } else {
            for id in ids {
                if !conversation.tag_ids.contains(&id) {
                    conversation.tag_ids.push(id);
                }
            }
        }
        Ok(accepted())
    })
}

// `docs/vendors/khoros-bot-api-v3.md`, "Other actions"
async fn priority(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let env = Envelope::parse(&shared, &ctx, &body, &["priority"])?;
        let priority = match env.body.get("newPriority") {
            None | Some(Value::Null) => return Err(bad("newPriority may not be null")),
            Some(value) => value
                .as_u64()
                .filter(|p| *p <= 5)
                .ok_or_else(|| bad("newPriority must be between 0 and 5"))?,
        };
        let now = shared.now_ms();
        shared.with_state(|state| {
            state
                .conversations
                .touch(&env.key, &env.author, &shared.config.app_id, now)
                .priority = Some(priority as u8);
        });
        Ok(accepted())
    })();
    reply(&ctx, result)
}

// `docs/vendors/khoros-bot-api-v3.md`, "Other actions"
async fn note(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let env = Envelope::parse(&shared, &ctx, &body, &["note"])?;
        let note = env
            .optional_string("note")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("note may not be null"))?;
        let now = shared.now_ms();
        shared.with_state(|state| {
            state
                .conversations
                .touch(&env.key, &env.author, &shared.config.app_id, now)
                .notes
                .push(note);
        });
        Ok(accepted())
    })();
    reply(&ctx, result)
}

async fn workqueue(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let env = Envelope::parse(&shared, &ctx, &body, &["workqueue"])?;
        let queue = env
            .body
            .get("newWorkQueue")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("newWorkQueue may not be null"))?;
        let comment = env.optional_string("comment")?;
        let now = shared.now_ms();
        shared.with_state(|state| {
            let conversation =
                state
                    .conversations
                    .touch(&env.key, &env.author, &shared.config.app_id, now);
            conversation.work_queue = Some(queue);
            conversation.notes.extend(comment);
        });
        Ok(accepted())
    })();
    reply(&ctx, result)
}

async fn resolve(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let env = Envelope::parse(&shared, &ctx, &body, &["resolve"])?;
        let comment = env.optional_string("comment")?;
        env.optional_string("disposition")?;
        let now = shared.now_ms();
        shared.with_state(|state| {
            let conversation =
                state
                    .conversations
                    .touch(&env.key, &env.author, &shared.config.app_id, now);
            conversation.notes.extend(comment);
            // The conversation was just touched, so closing cannot miss it.
            let _ = shared.close(state, &env.key, 1);
        });
        Ok(accepted())
    })();
    reply(&ctx, result)
}

async fn author_attributes(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let env = Envelope::parse(&shared, &ctx, &body, &["author_update"])?;
        let name = env.optional_string("updatedName")?;
        let properties = match env.body.get("properties") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) if p.values().all(Value::is_string) => Some(p.clone()),
            Some(_) => return Err(bad("properties must be a flat object of strings")),
        };
        if name.is_none() && properties.is_none() {
            return Err(bad("properties or updatedName may not be null"));
        }
        let now = shared.now_ms();
        shared.with_state(|state| {
            let author = &mut state
                .conversations
                .touch(&env.key, &env.author, &shared.config.app_id, now)
                .author;
            if let Some(name) = name {
                author.full_name = Some(name);
            }
            if let Some(properties) = properties {
                author
                    .properties
                    .get_or_insert_with(Map::new)
                    .extend(properties);
            }
        });
        Ok(accepted())
    })();
    reply(&ctx, result)
}

// `docs/vendors/khoros-bot-api-v3.md`, "Request status lookup"
async fn request_one(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path(id) = id.map_err(|e| bad(format!("Invalid path: {e}")))?;
        let state = shared.lock();
        let record = state
            .log
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("{id} not found")))?;
        Ok(Json(json!({ "data": record })).into_response())
    })();
    reply(&ctx, result)
}

async fn request_list(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    app_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = (|| {
        let Path(app_id) = app_id.map_err(|e| bad(format!("Invalid path: {e}")))?;
        check_app(&ctx, &app_id)?;
        let mut from_ms = 86_400_000;
        let mut states = Vec::new();
        let mut origin = None;
        for pair in query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "from" => {
                    from_ms =
                        parse_from(value).ok_or_else(|| bad("Incorrect syntax in \"from\""))?
                }
                "state" => states.push(match value {
                    "PENDING" => RequestState::Pending,
                    "SUCCESS" => RequestState::Success,
                    "ERROR" => RequestState::Error,
                    other => return Err(bad(format!("Invalid state {other}"))),
                }),
                "origin" => {
                    origin = Some(match value {
                        "BOT" => Origin::Bot,
                        "KHOROS" => Origin::Khoros,
                        other => return Err(bad(format!("Invalid origin {other}"))),
                    })
                }
                _ => {}
            }
        }
        let since = shared.now_ms() - from_ms;
        // Copied out under the lock, serialised after it: a long listing must not stall the
        // calls it is asked about.
        let records: Vec<RequestRecord> = shared
            .lock()
            .log
            .iter()
            .filter(|r| r.app_id == app_id && r.created_epoch_millis >= since)
            .filter(|r| states.is_empty() || states.contains(&r.state))
            .filter(|r| origin.is_none_or(|o| o == r.origin))
            .cloned()
            .collect();
        Ok(Json(json!({ "data": records })).into_response())
    })();
    reply(&ctx, result)
}

/// A token only acts for its own appId.
fn check_app(ctx: &Ctx, app_id: &str) -> Result<(), ApiError> {
    if app_id == ctx.app_id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "Token is not valid for appId {app_id}"
        )))
    }
}

// `docs/vendors/khoros-bot-api-v3.md`, "Refresh a token"
async fn token_refresh(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    app_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path(app_id) = app_id.map_err(|e| bad(format!("Invalid path: {e}")))?;
        check_app(&ctx, &app_id)?;
        let now = shared.now_ms();
        let (issued, renames) = shared.with_state(|state| {
            let issued = state.tokens.refresh(&app_id, now);
            (issued, state.settings.grant_renames.clone())
        });
        let mut data = json!(issued);
        if let Some(fields) = data.as_object_mut() {
            for (from, to) in renames {
                if let Some(value) = fields.remove(&from) {
                    fields.insert(to, value);
                }
            }
        }
        Ok(Json(json!({ "data": data, "requestId": ctx.request_id })).into_response())
    })();
    reply(&ctx, result)
}

// `docs/vendors/khoros-bot-api-v3.md`, "Invalidate every token"
async fn token_delete(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    app_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path(app_id) = app_id.map_err(|e| bad(format!("Invalid path: {e}")))?;
        check_app(&ctx, &app_id)?;
        let now = shared.now_ms();
        shared.with_state(|state| state.tokens.revoke_all(&app_id, now));
        Ok(Json(json!({})).into_response())
    })();
    reply(&ctx, result)
}

// `docs/vendors/khoros-bot-api-v3.md`, "Bot health"
async fn health(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    app_id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = (|| {
        let Path(app_id) = app_id.map_err(|e| bad(format!("Invalid path: {e}")))?;
        check_app(&ctx, &app_id)?;
        let now = shared.now_ms();
        let report = shared.with_state(|state| state.health.report(now));
        Ok(Json(json!({ "data": [report] })).into_response())
    })();
    reply(&ctx, result)
}
