//! khoros-sim behaviour: the Bot API gateway, tokens, ownership, the event sender and faults.
//! Minute-scale behaviour runs on the sim's frozen clock, moved by hand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use khoros_sim::{
    Credentials, DeliveryOutcome, Fault, HealthStatus, KhorosSim, KhorosSimConfig, SenderConfig,
    Tamper, TAG_AUTOMATIC_HANDOFF, TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF,
};
use serde_json::{json, Value};
use shared::auth::{AuthFailure, HmacKeys, HmacVerifier, RequestParts};
use shared::Secret;
use testkit::wait;

const TOKEN: &str = "sim-test-token";
const APP: &str = "kore-bridge";
const HMAC_KEY: &str = "bridge-hmac-key";
const HMAC_SECRET: &str = "k7Qp-test-secret-9f2e";
const MINUTE: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(5);

/// A sim with a frozen clock and the test token.
fn config() -> KhorosSimConfig {
    KhorosSimConfig {
        clock_start_ms: Some(1_700_000_000_000),
        clock_speed: 0.0,
        ..KhorosSimConfig::default().with_token(TOKEN)
    }
}

/// Fast delivery settings: `retries` retries 10 ms apart, 2 s timeout.
fn sender(retries: u32) -> SenderConfig {
    SenderConfig {
        retries,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        ..SenderConfig::default()
    }
}

fn hmac() -> Credentials {
    Credentials::Hmac {
        api_key: HMAC_KEY.into(),
        secret: Secret::new(HMAC_SECRET),
    }
}

async fn start(config: KhorosSimConfig) -> KhorosSim {
    KhorosSim::start(config).await.expect("sim starts")
}

/// One call to the sim: status, `x-amzn-RequestId`, headers and JSON body (`Null` if empty).
struct Answer {
    status: u16,
    request_id: String,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn call(
    sim: &KhorosSim,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", sim.base_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("sim answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let request_id = headers
        .get("x-amzn-RequestId")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        request_id,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn coordinate() -> Value {
    json!({"companyKey": "acme", "networkKey": "brandmessenger", "externalId": "bm-web-01",
           "messageId": "m-1", "botId": APP, "scope": "PRIVATE"})
}

fn respond_body(author: &str, text: &str) -> Value {
    json!({"type": "message", "coordinate": coordinate(), "author": {"id": author}, "text": text})
}

async fn respond(sim: &KhorosSim, token: &str, author: &str) -> Answer {
    call(
        sim,
        reqwest::Method::POST,
        "/bots/v3/respond",
        Some(token),
        Some(respond_body(author, "hello")),
    )
    .await
}

async fn health_with(sim: &KhorosSim, token: &str) -> u16 {
    call(
        sim,
        reqwest::Method::GET,
        &format!("/bots/v3/health/appId/{APP}"),
        Some(token),
        None,
    )
    .await
    .status
}

/// What the test receiver got in one request.
#[derive(Clone, Debug)]
struct Received {
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn request_id(&self) -> String {
        self.headers
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A tiny webhook receiver on port 0 that records every request and answers with
/// `answer(n)` for the n-th request (0-based).
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

type AnswerFn = Arc<dyn Fn(usize) -> StatusCode + Send + Sync>;

impl Receiver {
    async fn start(answer: impl Fn(usize) -> StatusCode + Send + Sync + 'static) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answer: AnswerFn = Arc::new(answer);
        let app = Router::new()
            .route("/khoros/events", axum::routing::post(receive))
            .with_state((received.clone(), answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!(
            "http://{}/khoros/events?tenant=acme",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, received }
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        wait::until(LIMIT, &format!("{n} deliveries"), || async {
            let all = self.all();
            (all.len() >= n).then_some(all)
        })
        .await
    }
}

async fn receive(
    State((received, answer)): State<(Arc<Mutex<Vec<Received>>>, AnswerFn)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut all = received.lock().expect("receiver lock");
    let n = all.len();
    all.push(Received {
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers,
        body,
    });
    answer(n)
}

/// A refreshed token keeps working for 10 minutes of sim time and no longer; DELETE kills
/// the new and the old token at once, after which the create of
/// `docs/vendors/khoros-bot-api-v3.md`, "Create the first token", works again (once).
#[tokio::test]
async fn token_refresh_grace_and_delete() {
    let sim = start(config()).await;
    let refreshed = call(
        &sim,
        reqwest::Method::PUT,
        &format!("/bots/v3/tokens/appId/{APP}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.body["requestId"], refreshed.request_id);
    let new = refreshed.body["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        refreshed.body["data"]["expiresAtMillis"],
        sim.now_ms() + 90 * 24 * 3_600_000
    );
    assert_eq!(new.split('.').count(), 3, "a JWT");

    sim.advance_clock(9 * MINUTE);
    assert_eq!(
        health_with(&sim, TOKEN).await,
        200,
        "old token inside the grace"
    );
    sim.advance_clock(2 * MINUTE);
    assert_eq!(
        health_with(&sim, TOKEN).await,
        401,
        "old token after the grace"
    );
    assert_eq!(health_with(&sim, &new).await, 200);

    // Re-grant the old token's grace window by refreshing once more, then DELETE.
    let newer = call(
        &sim,
        reqwest::Method::PUT,
        &format!("/bots/v3/tokens/appId/{APP}"),
        Some(&new),
        None,
    )
    .await;
    let newer = newer.body["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(health_with(&sim, &new).await, 200, "in grace");
    let deleted = call(
        &sim,
        reqwest::Method::DELETE,
        &format!("/bots/v3/tokens/appId/{APP}"),
        Some(&newer),
        None,
    )
    .await;
    assert_eq!((deleted.status, deleted.body), (200, json!({})));
    assert_eq!(
        health_with(&sim, &newer).await,
        401,
        "new token after DELETE"
    );
    assert_eq!(
        health_with(&sim, &new).await,
        401,
        "grace token after DELETE"
    );

    // `docs/vendors/khoros-bot-api-v3.md`, "Create the first token": create is one-shot again after
    // DELETE.
    let basic = shared::auth::basic::header_value(
        &sim.config().token_host_user,
        sim.config().token_host_password.expose(),
    );
    let create = || {
        reqwest::Client::new()
            .post(format!(
                "{}/api/v2/tokens/khorosapi/ownerId/{APP}",
                sim.base_url()
            ))
            .header("authorization", basic.clone())
            .send()
    };
    let first = create().await.expect("create");
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["status"], "success");
    let minted = first["data"]["token"].as_str().expect("token");
    assert_eq!(health_with(&sim, minted).await, 200);
    assert_eq!(create().await.expect("create").status(), 409);

    // Expiry after 90 days is decided by the sim clock too.
    sim.advance_clock(Duration::from_secs(90 * 24 * 3600));
    assert_eq!(health_with(&sim, minted).await, 401, "expired");
}

/// Missing, garbage and wrong-scheme credentials get 401 with the body of
/// `docs/vendors/khoros-bot-api-v3.md`, "Token errors", whose
/// requestId equals the `x-amzn-RequestId` header.
#[tokio::test]
async fn unauthorized_has_the_spec_body() {
    let sim = start(config()).await;
    for token in [None, Some("garbage"), Some("")] {
        let answer = call(
            &sim,
            reqwest::Method::POST,
            "/bots/v3/respond",
            token,
            Some(respond_body("u1", "hi")),
        )
        .await;
        assert_eq!(answer.status, 401);
        assert!(!answer.request_id.is_empty());
        assert_eq!(
            answer.body,
            json!({"error": {"message": "Unauthorized", "requestId": answer.request_id}})
        );
    }
    let basic = reqwest::Client::new()
        .get(format!("{}/bots/v3/health/appId/{APP}", sim.base_url()))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .expect("answer");
    assert_eq!(basic.status(), 401);
}

/// `/respond` answers 200 with the body of `docs/vendors/khoros-bot-api-v3.md`, "Respond", while
/// the bot owns the conversation and 403
/// once an agent owns it; the reply is recorded per author.
#[tokio::test]
async fn respond_is_forbidden_when_an_agent_owns_the_conversation() {
    let sim = start(config()).await;
    sim.send_text("u1", "hi").expect("inject");
    let ok = respond(&sim, TOKEN, "u1").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["data"]["payloadType"], "message");
    assert_eq!(ok.body["data"]["requestState"], "SUCCESS");
    assert!(ok.body["data"]["messageId"].is_string());
    assert_eq!(ok.body["requestId"], ok.request_id);
    assert_eq!(sim.messages("u1").len(), 1);

    let typing = call(
        &sim,
        reqwest::Method::POST,
        "/bots/v3/respond",
        Some(TOKEN),
        Some(json!({"type": "typing_start", "coordinate": coordinate(), "author": {"id": "u1"}})),
    )
    .await;
    assert_eq!(typing.status, 200);
    assert_eq!(sim.messages("u1").len(), 1, "typing is not a message");

    sim.agent_take("u1", Some("mine")).expect("agent takes");
    let forbidden = respond(&sim, TOKEN, "u1").await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.body["requestId"], forbidden.request_id);
    let text = forbidden.body["error"]["messages"][0]
        .as_str()
        .expect("message");
    assert!(
        text.starts_with("This bot doesn't own the conversation"),
        "{text}"
    );
    assert_eq!(sim.messages("u1").len(), 1);

    // A coordinate naming another bot is refused too (`docs/vendors/khoros-bot-api-v3.md`,
    // "Token errors").
    let mut other = respond_body("u2", "hi");
    other["coordinate"]["botId"] = json!("someone-else");
    let answer = call(
        &sim,
        reqwest::Method::POST,
        "/bots/v3/respond",
        Some(TOKEN),
        Some(other),
    )
    .await;
    assert_eq!(answer.status, 403);

    // 202 mode.
    sim.set_respond_accepted(true);
    let accepted = respond(&sim, TOKEN, "u3").await;
    assert_eq!((accepted.status, accepted.body), (202, Value::Null));
}

/// Malformed or incomplete bodies get 400 `{"error":{"messages":[..]}}`, never a panic.
#[tokio::test]
async fn bad_bodies_get_400_with_the_spec_shape() {
    let sim = start(config()).await;
    let raw = reqwest::Client::new()
        .post(format!("{}/bots/v3/respond", sim.base_url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status(), 400);
    assert!(raw.headers().contains_key("x-amzn-requestid"));
    let body: Value = raw.json().await.expect("json");
    assert!(body["error"]["messages"][0].is_string(), "{body}");

    let cases = [
        (
            json!({"coordinate": coordinate(), "author": {"id": "u"}, "text": "x"}),
            "type may not be null",
        ),
        (
            json!({"type": "message", "author": {"id": "u"}, "text": "x"}),
            "coordinate may not be null",
        ),
        (
            json!({"type": "message", "coordinate": coordinate(), "author": {}, "text": "x"}),
            "author.id may not be null",
        ),
    ];
    for (body, expected) in cases {
        let answer = call(
            &sim,
            reqwest::Method::POST,
            "/bots/v3/respond",
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body, json!({"error": {"messages": [expected]}}));
    }
    let mut bad_network = respond_body("u", "x");
    bad_network["coordinate"]["networkKey"] = json!("myspace");
    let answer = call(
        &sim,
        reqwest::Method::POST,
        "/bots/v3/respond",
        Some(TOKEN),
        Some(bad_network),
    )
    .await;
    assert_eq!(
        answer.body,
        json!({"error": {"messages": ["Invalid networkKey myspace"]}})
    );

    let base = json!({"coordinate": coordinate(), "author": {"id": "u"}});
    let mut priority = base.clone();
    priority["type"] = json!("priority");
    priority["newPriority"] = json!(6);
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/priority",
        Some(TOKEN),
        Some(priority.clone()),
    )
    .await;
    assert_eq!(answer.status, 400);
    priority["newPriority"] = json!(0);
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/priority",
        Some(TOKEN),
        Some(priority),
    )
    .await;
    assert_eq!((answer.status, sim.priority("u")), (202, Some(0)));

    let mut tag = base.clone();
    tag["type"] = json!("tag");
    tag["entityType"] = json!("POST");
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/tag",
        Some(TOKEN),
        Some(tag.clone()),
    )
    .await;
    assert_eq!(answer.status, 400, "missing tagIds");
    tag["tagIds"] = json!([4101, 4107]);
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/tag",
        Some(TOKEN),
        Some(tag.clone()),
    )
    .await;
    assert_eq!((answer.status, sim.tag_ids("u")), (202, vec![4101, 4107]));
    tag["type"] = json!("remove_tag");
    tag["tagIds"] = json!([4101]);
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/tag/remove",
        Some(TOKEN),
        Some(tag),
    )
    .await;
    assert_eq!((answer.status, sim.tag_ids("u")), (202, vec![4107]));
}

/// `PUT /control` to AGENT echoes the payload with conversationDisplayId and lastUpdateTS,
/// applies "Bot Handoff" + "Standard Bot Handoff", records the comment, emits a control
/// event, and `GET /control` reports the new owner (404 for a never-seen author).
#[tokio::test]
async fn control_handoff_applies_the_standard_tags() {
    let sim = start(config()).await;
    let injected = sim.send_text("u1", "agent please").expect("inject");
    let body = json!({"type": "control", "owner": {"type": "AGENT"}, "coordinate": coordinate(),
                      "author": {"id": "u1"}, "comment": "billing dispute"});
    let answer = call(
        &sim,
        reqwest::Method::PUT,
        "/bots/v3/control",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["data"]["owner"], json!({"type": "AGENT"}));
    assert_eq!(answer.body["data"]["comment"], "billing dispute");
    assert_eq!(
        answer.body["data"]["conversationDisplayId"],
        injected.conversation_display_id
    );
    assert_eq!(answer.body["data"]["lastUpdateTS"], sim.now_ms());
    assert_eq!(sim.tags("u1"), vec![TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF]);
    let change = sim.control_changes().pop().expect("a control change");
    assert_eq!(change.comment.as_deref(), Some("billing dispute"));
    assert!(change.changed);
    let control_events: Vec<_> = sim
        .events()
        .into_iter()
        .filter(|e| e.event_type == "control")
        .collect();
    assert_eq!(control_events.len(), 1);
    assert_eq!(control_events[0].body["owner"], json!({"type": "AGENT"}));

    let status = call(
        &sim,
        reqwest::Method::GET,
        "/bots/v3/control/network/brandmessenger/externalId/bm-web-01/author/u1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["data"]["owner"], json!({"type": "AGENT"}));
    assert_eq!(status.body["data"]["lastUpdatedTS"], sim.now_ms());
    let unknown = call(
        &sim,
        reqwest::Method::GET,
        "/bots/v3/control/network/brandmessenger/externalId/bm-web-01/author/nobody",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404);
}

/// Closing a conversation emits CLOSED and resets ownership to BOT; the next message starts
/// a new bot-owned conversation and the bot may answer again.
#[tokio::test]
async fn close_resets_ownership_to_bot() {
    let sim = start(config()).await;
    let first = sim.send_text("u1", "hi").expect("inject");
    sim.agent_take("u1", None).expect("take");
    assert_eq!(respond(&sim, TOKEN, "u1").await.status, 403);
    sim.close("u1").expect("close");
    assert!(sim.owner("u1").expect("owner").is_bot(APP));
    assert_eq!(respond(&sim, TOKEN, "u1").await.status, 200);
    let events = sim.events();
    assert!(events
        .iter()
        .any(|e| e.operation.as_deref() == Some("CLOSED")));
    let last = events.last().expect("events");
    assert_eq!(last.event_type, "control");
    assert_eq!(last.body["owner"], json!({"type": "BOT", "appId": APP}));

    let again = sim.send_text("u1", "me again").expect("inject");
    assert!(again.new_conversation);
    assert!(again.owner.is_bot(APP));
    assert_ne!(again.conversation_display_id, first.conversation_display_id);
    assert!(sim.close("never-seen").is_err());
}

/// A failed delivery is retried with the same `x-amzn-RequestId`; the second attempt
/// succeeds, the conversation stays with the bot and the request log says SUCCESS.
#[tokio::test]
async fn sender_retries_with_the_same_request_id() {
    let receiver = Receiver::start(|n| {
        if n == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::ACCEPTED
        }
    })
    .await;
    let config = KhorosSimConfig {
        sender: SenderConfig {
            emit_created: false,
            ..sender(2)
        },
        ..config().with_webhook(&receiver.url, hmac())
    };
    let sim = start(config).await;
    let injected = sim.send_text("u1", "hi").expect("inject");
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].request_id(), injected.request_id);
    assert_eq!(got[1].request_id(), injected.request_id);
    assert_eq!(got[0].body, got[1].body, "the body is serialised once");
    assert_eq!(got[1].json()["owner"], json!({"type": "BOT", "appId": APP}));
    assert_eq!(
        got[1].headers.get("content-type").expect("content type"),
        "application/json"
    );
    let event = sim
        .wait_until(LIMIT, "delivery to finish", |sim| {
            let event = sim.events().into_iter().next()?;
            (event.outcome != DeliveryOutcome::Queued).then_some(event)
        })
        .await
        .expect("delivered");
    assert_eq!(event.outcome, DeliveryOutcome::Delivered);
    assert_eq!(event.statuses, vec![Some(500), Some(202)]);
    assert!(sim.owner("u1").expect("owner").is_bot(APP));
    let record = call(
        &sim,
        reqwest::Method::GET,
        &format!("/bots/v3/request/{}", injected.request_id),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(record.body["data"]["origin"], "KHOROS");
    assert_eq!(record.body["data"]["state"], "SUCCESS");
    assert_eq!(record.body["data"]["details"]["attempts"], 2);
    assert_eq!(record.body["data"]["callbackUrl"], receiver.url.as_str());
    let missing = call(
        &sim,
        reqwest::Method::GET,
        "/bots/v3/request/nope",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (missing.status, missing.body),
        (404, json!({"error": {"messages": ["nope not found"]}}))
    );
}

/// When every attempt at a message fails, the bot-owned conversation goes to AGENT with
/// "Bot Handoff" + "Automatic Bot Handoff" and a control event is emitted.
#[tokio::test]
async fn final_failure_hands_the_conversation_to_an_agent() {
    let receiver = Receiver::start(|_| StatusCode::SERVICE_UNAVAILABLE).await;
    let config = KhorosSimConfig {
        sender: SenderConfig {
            emit_created: false,
            ..sender(1)
        },
        ..config().with_webhook(&receiver.url, hmac())
    };
    let sim = start(config).await;
    let injected = sim.send_text("u1", "hi").expect("inject");
    sim.wait_until(LIMIT, "automatic handoff", |sim| {
        (sim.owner("u1")?.kind == "AGENT").then_some(())
    })
    .await
    .expect("handed off");
    assert_eq!(sim.tags("u1"), vec![TAG_BOT_HANDOFF, TAG_AUTOMATIC_HANDOFF]);
    let got = receiver.wait_for(2).await;
    assert!(got[..2]
        .iter()
        .all(|r| r.request_id() == injected.request_id));
    let change = sim.control_changes().pop().expect("change");
    assert_eq!(change.to.kind, "AGENT");
    assert!(sim
        .events()
        .iter()
        .any(|e| e.event_type == "control" && e.body["owner"]["type"] == "AGENT"));
}

/// More than 10 consecutive failures within 2 minutes suspend deliveries: the bot is DOWN,
/// the next message is handed to an agent without being delivered, and a successful probe
/// 2 sim-minutes later resumes deliveries.
#[tokio::test]
async fn suspension_after_persistent_failures() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let receiver = Receiver::start(move |_| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    })
    .await;
    let config = KhorosSimConfig {
        sender: SenderConfig {
            emit_created: false,
            ..sender(0)
        },
        ..config().with_webhook(&receiver.url, hmac())
    };
    let sim = start(config).await;
    for i in 0..11 {
        sim.send_text(&format!("u{i}"), "hi").expect("inject");
    }
    let health = sim
        .wait_until(LIMIT, "suspension", |sim| {
            let health = sim.health();
            health.suspended.then_some(health)
        })
        .await
        .expect("suspended");
    assert_eq!(health.report.status, HealthStatus::Down);
    let down = call(
        &sim,
        reqwest::Method::GET,
        &format!("/bots/v3/health/appId/{APP}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(down.body["data"][0]["status"], "DOWN");
    assert!(
        down.body["data"][0]["failureCount"]
            .as_u64()
            .expect("count")
            > 10
    );

    // Let already-queued events (handoff control events) settle, then count deliveries.
    sim.wait_until(LIMIT, "queued events to settle", |sim| {
        sim.events()
            .iter()
            .all(|e| e.outcome != DeliveryOutcome::Queued)
            .then_some(())
    })
    .await
    .expect("settled");
    let delivered_before = receiver.all().len();

    let late = sim.send_text("late", "anyone?").expect("inject");
    sim.wait_until(LIMIT, "handoff while suspended", |sim| {
        (sim.owner("late")?.kind == "AGENT").then_some(())
    })
    .await
    .expect("handed off");
    assert_eq!(
        sim.tags("late"),
        vec![TAG_BOT_HANDOFF, TAG_AUTOMATIC_HANDOFF]
    );
    let event = sim
        .events()
        .into_iter()
        .find(|e| e.request_id == late.request_id)
        .expect("event");
    assert_eq!(event.outcome, DeliveryOutcome::Suspended);
    assert_eq!(receiver.all().len(), delivered_before, "nothing delivered");

    // The bot recovers; the probe after 2 sim-minutes ends the suspension.
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    sim.advance_clock(2 * MINUTE);
    sim.wait_until(LIMIT, "probe to resume deliveries", |sim| {
        (!sim.health().suspended).then_some(())
    })
    .await
    .expect("resumed");
    let probe = receiver.all().pop().expect("probe delivered");
    assert_eq!(probe.json()["type"], "probe");
    sim.send_text("after", "back?").expect("inject");
    let after = receiver.wait_for(delivered_before + 2).await;
    assert_eq!(after.last().expect("message").json()["text"], "back?");
}

/// Injected faults: 503 for the next 2 calls then 200; 429 carries Retry-After; a dropped
/// connection ends without a response; faults can be added over `/sim/faults`.
#[tokio::test]
async fn fault_injection() {
    let sim = start(config()).await;
    sim.add_fault(Fault::status("respond", 503).times(2))
        .expect("fault");
    for _ in 0..2 {
        let answer = respond(&sim, TOKEN, "u1").await;
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.body,
            json!({"error": {"messages": ["Service Unavailable"]}, "requestId": answer.request_id})
        );
    }
    assert_eq!(respond(&sim, TOKEN, "u1").await.status, 200);

    let added = call(
        &sim,
        reqwest::Method::POST,
        "/sim/faults",
        None,
        Some(json!({"route": "respond", "status": 429, "retryAfterSecs": 7, "times": 1})),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let limited = respond(&sim, TOKEN, "u1").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.headers.get("retry-after").expect("Retry-After"),
        "7"
    );
    assert_eq!(respond(&sim, TOKEN, "u1").await.status, 200);

    sim.add_fault(Fault::drop_connection("respond").times(1))
        .expect("fault");
    let dropped = reqwest::Client::new()
        .post(format!("{}/bots/v3/respond", sim.base_url()))
        .bearer_auth(TOKEN)
        .json(&respond_body("u1", "x"))
        .send()
        .await;
    assert!(dropped.is_err(), "no response: {dropped:?}");

    let refused = call(
        &sim,
        reqwest::Method::POST,
        "/sim/faults",
        None,
        Some(json!({"route": "nowhere", "status": 500})),
    )
    .await;
    assert_eq!(refused.status, 400);
    // Faults and their outcomes are in the request log.
    let states: Vec<_> = sim
        .requests()
        .iter()
        .map(|r| r.details["code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(states, ["503", "503", "200", "429", "200", "NONE"]);
}

/// A fault with `after` strikes once the call took effect: the client sees 503, yet the
/// message was sent once and the request log lists it as SUCCESS with its payload.
#[tokio::test]
async fn fault_after_the_call_took_effect() {
    let sim = start(config()).await;
    let added = call(
        &sim,
        reqwest::Method::POST,
        "/sim/faults",
        None,
        Some(json!({"route": "respond", "status": 503, "after": true, "times": 1})),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);

    let body = respond_body("u-after", "sent though lost");
    let answer = call(
        &sim,
        reqwest::Method::POST,
        "/bots/v3/respond",
        Some(TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body,
        json!({"error": {"messages": ["Service Unavailable"]}, "requestId": answer.request_id})
    );

    let sent = call(
        &sim,
        reqwest::Method::GET,
        "/sim/messages/u-after",
        None,
        None,
    )
    .await;
    let texts: Vec<_> = sent
        .body
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("sent though lost")], "{}", sent.body);

    let log = call(
        &sim,
        reqwest::Method::GET,
        &format!("/bots/v3/request/appId/{APP}?origin=BOT"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(log.status, 200, "{}", log.body);
    let record = log.body["data"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["id"] == answer.request_id.as_str())
        .cloned()
        .expect("the respond call is logged");
    assert_eq!(record["state"], "SUCCESS");
    let payload: Value =
        serde_json::from_str(record["payload"].as_str().expect("payload")).expect("JSON");
    assert_eq!(payload, body);
    // The fault was used up: the next call is answered normally.
    assert_eq!(respond(&sim, TOKEN, "u-after").await.status, 200);
}

/// The sender's HMAC v2 signature verifies with the bridge's own `HmacVerifier`; each
/// tamper knob makes verification fail for its reason, and `x-smm-*` headers are signed.
#[tokio::test]
async fn sender_signature_verifies_with_the_hmac_verifier() {
    let receiver = Receiver::start(|_| StatusCode::ACCEPTED).await;
    let config = KhorosSimConfig {
        sender: sender(0),
        ..config().with_webhook(&receiver.url, hmac())
    };
    let sim = start(config).await;
    let verifier = HmacVerifier::new(
        HmacKeys::single(HMAC_KEY, &Secret::new(HMAC_SECRET)),
        Duration::from_secs(60),
        None,
    );
    let verify = |r: &Received| {
        verifier.verify(&RequestParts {
            method: "POST",
            host: "127.0.0.1",
            path_and_query: &r.path_and_query,
            headers: &r.headers,
            body: &r.body,
        })
    };

    sim.send_text("u1", "hi").expect("inject");
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].json()["type"], "message");
    assert_eq!(got[1].json()["operation"], "CREATED");
    for r in &got {
        assert!(verify(r).is_ok(), "{:?}", verify(r));
    }

    let cases = [
        (
            Tamper {
                wrong_signature: true,
                ..Tamper::default()
            },
            Err(AuthFailure::BadSignature),
        ),
        (
            Tamper {
                stale_timestamp: true,
                ..Tamper::default()
            },
            Err(AuthFailure::StaleTimestamp),
        ),
        (
            Tamper {
                unknown_api_key: true,
                ..Tamper::default()
            },
            Err(AuthFailure::UnknownKey),
        ),
        (
            Tamper {
                smm_headers: [("x-smm-example".to_string(), "abc, def".to_string())].into(),
                ..Tamper::default()
            },
            Ok(()),
        ),
    ];
    for (i, (tamper, expected)) in cases.into_iter().enumerate() {
        sim.set_tamper(tamper);
        sim.send_text("u1", "again").expect("inject");
        let got = receiver.wait_for(3 + i).await;
        let last = &got[2 + i];
        assert_eq!(verify(last).map(|_| ()), expected, "case {i}");
    }
    assert!(receiver.all()[5].headers.contains_key("x-smm-example"));
}

/// The `/sim` API drives the same model over HTTP: inject a message, advance the clock,
/// read messages and conversations.
#[tokio::test]
async fn inspection_api_over_http() {
    let sim = start(config()).await;
    let injected = call(
        &sim,
        reqwest::Method::POST,
        "/sim/actions/message",
        None,
        Some(json!({"authorId": "web-7", "text": "hi", "actions": [{"type": "reply", "payload": "P", "text": "T"}]})),
    )
    .await;
    assert_eq!(injected.status, 200, "{}", injected.body);
    assert_eq!(injected.body["owner"]["type"], "BOT");
    assert_eq!(respond(&sim, TOKEN, "web-7").await.status, 200);
    let messages = sim
        .wait_for_messages("web-7", 1, LIMIT)
        .await
        .expect("message");
    let over_http = call(
        &sim,
        reqwest::Method::GET,
        "/sim/messages/web-7",
        None,
        None,
    )
    .await;
    assert_eq!(over_http.body, json!(messages));

    let clock = call(
        &sim,
        reqwest::Method::POST,
        "/sim/clock",
        None,
        Some(json!({"advanceMs": 600_000})),
    )
    .await;
    assert_eq!(clock.body["nowMs"], 1_700_000_600_000_i64);
    let conversation = call(
        &sim,
        reqwest::Method::GET,
        "/sim/conversations/web-7",
        None,
        None,
    )
    .await;
    assert_eq!(conversation.body["status"], "OPEN");
    assert_eq!(
        conversation.body["replies"].as_array().map(Vec::len),
        Some(1)
    );
    let take = call(
        &sim,
        reqwest::Method::POST,
        "/sim/actions/agent-take",
        None,
        Some(json!({"authorId": "web-7"})),
    )
    .await;
    assert_eq!(take.body["owner"]["type"], "AGENT");
    let bad = call(
        &sim,
        reqwest::Method::POST,
        "/sim/actions/close",
        None,
        Some(json!({"authorId": "ghost"})),
    )
    .await;
    assert_eq!(bad.status, 404);
    let tokens = call(&sim, reqwest::Method::GET, "/sim/tokens", None, None).await;
    assert_eq!(tokens.body[0]["state"], "ACTIVE");
    sim.shutdown().await;
}
