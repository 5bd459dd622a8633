//! kore-sim behaviour tests: the Webhook channel as `docs/vendors/kore-webhook-channel.md`
//! describes it (JWT checks, payload rules, sync/async answers, errors, polling) and the
//! `/sim/...` control API.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use kore_sim::{
    Button, ChannelConfig, DeliveryKind, JwtAlg, KoreSim, KoreSimConfig, Mode, TokenHeader, Turn,
};
use serde_json::{json, Value};
use shared::kore::{
    BotItem, KoreClient, KoreConfig, KoreMode, KoreVersion, Polled, SyncAnswer, UserTurn,
};
use shared::retry::{retry, RetryClass, RetryPolicy};
use shared::upstream::UpstreamError;
use shared::Secret;
use testkit::wait;
use tokio::sync::mpsc;

const USER: &str = "khoros:brandmessenger:bm-web-01:user-42";
const LIMIT: Duration = Duration::from_secs(5);

async fn sim(config: KoreSimConfig) -> KoreSim {
    KoreSim::start(config).await.expect("start kore-sim")
}

/// POSTs `body` with `Authorization: <auth>` (if any); returns status and JSON (or null).
async fn call(url: &str, auth: Option<String>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn v1_body(text: &str) -> Value {
    json!({ "message": { "text": text }, "from": { "id": USER },
            "to": { "id": "st-11111111-2222-3333-4444-555555555555" } })
}

fn v2_body(text: &str) -> Value {
    json!({ "session": { "new": false }, "message": { "type": "text", "val": text },
            "from": { "id": USER } })
}

fn assert_401(body: &Value, v2: bool) {
    assert_eq!(body["errors"][0]["msg"], "Invalid Access token", "{body}");
    assert_eq!(body["errors"][0]["code"], 401, "{body}");
    if v2 {
        assert_eq!(body["_v"], "v2");
        assert!(
            body["_t"].as_str().unwrap_or("").starts_with("RTM-TRACE-"),
            "{body}"
        );
    } else {
        assert!(
            body.get("_v").is_none() && body.get("_t").is_none(),
            "{body}"
        );
    }
}

/// A fake POST_URL: forwards each delivery's headers and body over a channel.
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<(HeaderMap, Value)>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new()
            .route(
                "/kore/callback",
                post(
                    |State(tx): State<mpsc::UnboundedSender<(HeaderMap, Value)>>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        let _ = tx.send((headers, body));
                        "ok"
                    },
                ),
            )
            .with_state(tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/kore/callback", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, rx }
    }

    async fn next(&mut self) -> (HeaderMap, Value) {
        tokio::time::timeout(LIMIT, self.rx.recv())
            .await
            .expect("a delivery within the limit")
            .expect("receiver open")
    }
}

/// The default bot echoes over V1 (string `text`) and V2 (`data[]` item) with an HS256 token,
/// accepting `bearer` and `Bearer`; the log shows decoded claims, never the raw token.
#[tokio::test]
async fn echo_reply_v1_and_v2_with_hs256() {
    let sim = sim(KoreSimConfig::default()).await;
    let token = sim.token();

    let (status, body) = call(
        &sim.v1_url(),
        Some(format!("bearer {token}")),
        &v1_body("hello"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "text": "You said: hello" }));

    let (status, body) = call(
        &sim.v2_url(),
        Some(format!("Bearer {token}")),
        &v2_body("hi"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["_v"], "v2");
    assert_eq!(body["to"], USER);
    assert_eq!(body["from"], "st-11111111-2222-3333-4444-555555555555");
    let item = &body["data"][0];
    assert_eq!(
        (&item["type"], &item["val"]),
        (&json!("text"), &json!("You said: hi"))
    );
    assert!(item["messageId"].as_str().unwrap().starts_with("ms-"));
    assert!(item["createdOn"].as_str().unwrap().ends_with('Z'));
    assert!(body.get("endOfTask").is_none());

    let requests = sim.wait_for_requests(2, LIMIT).await.unwrap();
    let v2 = &requests[1];
    assert_eq!(
        v2.path,
        "/chatbot/v2/webhook/st-11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(v2.user_id.as_deref(), Some(USER));
    assert_eq!(
        v2.auth.as_ref().unwrap()["jwt"]["claims"]["appId"],
        "cs-00000000-test-app"
    );
    assert!(!v2.headers.contains_key("authorization"));
    let logged = serde_json::to_string(&requests).unwrap();
    assert!(!logged.contains(&token), "the raw token must not be logged");
    let session = sim.session(USER).unwrap();
    assert_eq!((session.turns, session.sessions), (2, 1));
    sim.shutdown().await;
}

/// With the app set to HS512 an HS512 token passes and an HS256 one (right secret) is refused.
#[tokio::test]
async fn hs512_accepted_when_configured_and_hs256_refused() {
    let sim = sim(KoreSimConfig {
        jwt_alg: JwtAlg::HS512,
        ..KoreSimConfig::default()
    })
    .await;
    let hs512 = sim.token();
    let (status, _) = call(
        &sim.v2_url(),
        Some(format!("bearer {hs512}")),
        &v2_body("x"),
    )
    .await;
    assert_eq!(status, 200);
    let hs256 = kore_sim::jwt::mint(&sim.claims(), JwtAlg::HS256, b"kore-test-client-secret-123");
    let (status, body) = call(
        &sim.v2_url(),
        Some(format!("bearer {hs256}")),
        &v2_body("x"),
    )
    .await;
    assert_eq!(status, 401);
    assert_401(&body, true);
}

/// Wrong secret, wrong appId, expired token, missing header and (V2) a userIdentity that is not
/// `from.id` all get 401 with Kore's envelope (V1 without `_v`/`_t`).
#[tokio::test]
async fn bad_tokens_get_401_with_the_envelope() {
    let sim = sim(KoreSimConfig::default()).await;
    let claims = sim.claims();

    let wrong_secret = kore_sim::jwt::mint(&claims, JwtAlg::HS256, b"not-the-secret");
    let mut wrong_app = claims.clone();
    wrong_app.app_id = "cs-someone-else".into();
    let mut expired = claims.clone();
    expired.iat = Some(1_700_000_000);
    expired.exp = Some(1_700_003_600);
    let bad = [
        Some(format!("bearer {wrong_secret}")),
        Some(format!("bearer {}", sim.token_with(&wrong_app))),
        Some(format!("bearer {}", sim.token_with(&expired))),
        None,
        Some(format!("Basic {}", sim.token())),
    ];
    for auth in bad {
        let (status, body) = call(&sim.v2_url(), auth.clone(), &v2_body("x")).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_401(&body, true);
        let (status, body) = call(&sim.v1_url(), auth.clone(), &v1_body("x")).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_401(&body, false);
    }

    let mut bound = claims.clone();
    bound.user_identity = Some("someone-else".into());
    let auth = Some(format!("bearer {}", sim.token_with(&bound)));
    let (status, body) = call(&sim.v2_url(), auth, &v2_body("x")).await;
    assert_eq!(status, 401);
    assert_401(&body, true);
    bound.user_identity = Some(USER.into());
    let auth = Some(format!("bearer {}", sim.token_with(&bound)));
    let (status, _) = call(&sim.v2_url(), auth, &v2_body("x")).await;
    assert_eq!(status, 200, "a matching userIdentity is accepted");

    let errors: Vec<String> = sim.requests().into_iter().filter_map(|r| r.error).collect();
    assert!(errors.iter().any(|e| e.contains("expired")), "{errors:?}");
}

/// Scripted turns are consumed per user in order and rendered as
/// `docs/vendors/kore-webhook-channel.md` ("Sync answers") shows: V1 arrays and
/// template objects in `text`, V2 `template` items, task-end fields, then back to the echo.
#[tokio::test]
async fn scripted_turns_render_as_specified() {
    let sim = sim(KoreSimConfig::default()).await;
    let auth = || Some(format!("bearer {}", sim.token()));
    sim.script(
        USER,
        [
            Turn::texts(["Order 5512 shipped yesterday.", "Anything else?"])
                .end_task("Order Status"),
            Turn::quick_replies("Pick one", &[("Yes", "YES"), ("Talk to a person", "AGENT")]),
            Turn::handoff("billing dispute", &[4107]),
            Turn::buttons(
                "Next?",
                &[
                    Button::postback("Start", "START"),
                    Button::web_url("Help", "https://help.example.com"),
                ],
            )
            .then_template(kore_sim::templates::image("https://cdn.example.com/a.png")),
        ],
    );
    sim.script("another-user", [Turn::text("not yours")]);

    let (_, body) = call(&sim.v1_url(), auth(), &v1_body("where is 5512?")).await;
    assert_eq!(
        body["text"],
        json!(["Order 5512 shipped yesterday.", "Anything else?"])
    );
    assert_eq!(body["endOfTask"], true);
    assert_eq!(body["endReason"], "Fulfilled");
    assert_eq!(body["completedTaskName"], "Order Status");
    assert!(body["completedTaskId"].as_str().unwrap().starts_with("dg-"));

    let (_, body) = call(&sim.v2_url(), auth(), &v2_body("more")).await;
    let item = &body["data"][0];
    assert_eq!(item["type"], "template");
    assert_eq!(item["val"]["payload"]["template_type"], "quick_replies");
    assert_eq!(
        item["val"]["payload"]["quick_replies"][1],
        json!({"content_type":"text","title":"Talk to a person","payload":"AGENT"})
    );

    let (_, body) = call(&sim.v1_url(), auth(), &v1_body("AGENT")).await;
    assert_eq!(
        body["text"],
        json!({ "type": "template", "payload": {
        "template_type": "khoros_handoff", "comment": "billing dispute", "tagIds": [4107] } })
    );

    let (_, body) = call(&sim.v1_url(), auth(), &v1_body("next")).await;
    assert_eq!(body["text"][0]["payload"]["buttons"][1]["type"], "web_url");
    assert_eq!(
        body["text"][1],
        json!({"type":"image","payload":{"url":"https://cdn.example.com/a.png"}})
    );

    let (_, body) = call(&sim.v1_url(), auth(), &v1_body("done")).await;
    assert_eq!(
        body["text"], "You said: done",
        "script exhausted: echo again"
    );
    assert_eq!(
        sim.pending_script().len(),
        1,
        "the other user's turn is untouched"
    );
}

/// Scripted 429 and 5xx answer with those statuses and Kore's envelope; the outage switch fails
/// every call until cleared; the default reply override replaces the echo.
#[tokio::test]
async fn scripted_errors_outage_and_default_reply() {
    let sim = sim(KoreSimConfig::default()).await;
    let auth = || Some(format!("bearer {}", sim.token()));
    sim.script(
        USER,
        [
            Turn::fail(429),
            Turn::fail(502),
            Turn::fail_with(500, "boom"),
        ],
    );

    let (status, body) = call(&sim.v2_url(), auth(), &v2_body("a")).await;
    assert_eq!(status, 429);
    assert_eq!(
        body["errors"][0],
        json!({ "msg": "Too Many requests", "code": 429 })
    );
    assert_eq!(body["_v"], "v2");
    let (status, body) = call(&sim.v1_url(), auth(), &v1_body("b")).await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({ "errors": [ { "msg": "Bad Gateway", "code": 502 } ] })
    );
    let (status, body) = call(&sim.v2_url(), auth(), &v2_body("c")).await;
    assert_eq!((status, &body["errors"][0]["msg"]), (500, &json!("boom")));

    sim.set_outage(Some(503)).unwrap();
    let (status, _) = call(&sim.v2_url(), auth(), &v2_body("d")).await;
    assert_eq!(status, 503);
    sim.set_outage(None).unwrap();
    sim.set_default_reply(Some(Turn::text("We are closed.")))
        .unwrap();
    let (status, body) = call(&sim.v1_url(), auth(), &v1_body("e")).await;
    assert_eq!((status, &body["text"]), (200, &json!("We are closed.")));
}

/// A turn slower than the (shortened) sync timeout gets 504 "The request has been timed-out"
/// at the timeout, not when the bot would have finished.
#[tokio::test]
async fn slow_answer_beyond_sync_timeout_is_504() {
    let sim = sim(KoreSimConfig {
        sync_timeout: Duration::from_millis(300),
        ..KoreSimConfig::default()
    })
    .await;
    sim.script(
        USER,
        [
            Turn::text("late").delayed(Duration::from_secs(3)),
            Turn::text("ok").delayed(Duration::from_millis(50)),
        ],
    );
    let started = Instant::now();
    let (status, body) = call(
        &sim.v2_url(),
        Some(format!("bearer {}", sim.token())),
        &v2_body("a"),
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(body["errors"][0]["msg"], "The request has been timed-out");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = call(
        &sim.v2_url(),
        Some(format!("bearer {}", sim.token())),
        &v2_body("b"),
    )
    .await;
    assert_eq!((status, &body["data"][0]["val"]), (200, &json!("ok")));
}

/// Async V2 with a custom token header: 200 `{"status":"ok"}` at once, then one POST per
/// message in order, then the separate task-status delivery, each carrying the raw token.
#[tokio::test]
async fn async_v2_delivers_each_message_then_the_status() {
    let mut receiver = Receiver::start().await;
    let sim = sim(KoreSimConfig {
        channel: ChannelConfig {
            mode: Mode::Async,
            post_url: Some(receiver.url.clone()),
            access_token: Some(Secret::new("async-token-1")),
            token_header: TokenHeader::from_name("X-Kore-Token").unwrap(),
            async_delay: Duration::from_millis(20),
            ..ChannelConfig::default()
        },
        ..KoreSimConfig::default()
    })
    .await;
    sim.script(
        USER,
        [Turn::texts(["one", "two"])
            .then_template(json!({"type":"image","payload":{"url":"u"}}))
            .end_task("Order Status")],
    );

    let (status, ack) = call(
        &sim.v2_url(),
        Some(format!("bearer {}", sim.token())),
        &v2_body("go"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!((&ack["status"], &ack["_v"]), (&json!("ok"), &json!("v2")));
    assert!(ack["traceId"].as_str().unwrap().starts_with("RTM-TRACE-"));

    let mut vals = Vec::new();
    for _ in 0..3 {
        let (headers, body) = receiver.next().await;
        assert_eq!(headers["x-kore-token"], "async-token-1");
        assert!(headers.get("authorization").is_none());
        assert_eq!((&body["to"], &body["_v"]), (&json!(USER), &json!("v2")));
        assert_eq!(
            body["data"].as_array().unwrap().len(),
            1,
            "one message per delivery"
        );
        vals.push(body["data"][0]["val"].clone());
    }
    assert_eq!(
        vals,
        vec![
            json!("one"),
            json!("two"),
            json!({"type":"image","payload":{"url":"u"}})
        ]
    );
    let (_, status) = receiver.next().await;
    assert_eq!(status["endOfTask"], true);
    assert_eq!(status["completedTaskName"], "Order Status");
    assert!(status.get("data").is_none());

    let deliveries = sim.wait_for_deliveries(4, LIMIT).await.unwrap();
    assert!(deliveries.iter().all(|d| d.status == Some(200)));
    assert_eq!(deliveries[3].kind, DeliveryKind::Status);
    assert_eq!(deliveries[0].token_header.as_deref(), Some("x-kore-token"));
}

/// Async V1 with the default `Authorization: Bearer` form: empty 200 ack, and two turns sent
/// back to back are delivered in order as `{"text","to","from"}`.
#[tokio::test]
async fn async_v1_uses_bearer_and_keeps_order_across_turns() {
    let mut receiver = Receiver::start().await;
    let sim = sim(KoreSimConfig {
        channel: ChannelConfig {
            mode: Mode::Async,
            post_url: Some(receiver.url.clone()),
            access_token: Some(Secret::new("async-token-2")),
            ..ChannelConfig::default()
        },
        ..KoreSimConfig::default()
    })
    .await;
    sim.script(
        USER,
        [
            Turn::text("first").delayed(Duration::from_millis(100)),
            Turn::text("second"),
        ],
    );
    let auth = Some(format!("bearer {}", sim.token()));
    let (status, ack) = call(&sim.v1_url(), auth.clone(), &v1_body("a")).await;
    assert_eq!((status, ack), (200, Value::Null));
    let (status, _) = call(&sim.v1_url(), auth, &v1_body("b")).await;
    assert_eq!(status, 200);

    for expected in ["first", "second"] {
        let (headers, body) = receiver.next().await;
        assert_eq!(headers["authorization"], "Bearer async-token-2");
        assert_eq!(
            body,
            json!({ "text": expected, "to": USER,
            "from": "st-11111111-2222-3333-4444-555555555555" })
        );
    }
}

/// V1 without `message.text`, malformed JSON and a V2 text without `val` get 400 "Invalid
/// Request Payload"; an unknown bot id gets 404 in the envelope.
#[tokio::test]
async fn invalid_payloads_get_400_and_unknown_bots_404() {
    let sim = sim(KoreSimConfig::default()).await;
    let auth = Some(format!("bearer {}", sim.token()));
    let (status, body) = call(
        &sim.v1_url(),
        auth.clone(),
        &json!({ "message": {}, "from": { "id": USER } }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({ "errors": [ { "msg": "Invalid Request Payload", "code": 400 } ] })
    );
    let (status, _) = call(
        &sim.v1_url(),
        auth.clone(),
        &json!({ "message": { "text": "x" } }),
    )
    .await;
    assert_eq!(status, 400, "from.id is required");
    let (status, body) = call(
        &sim.v2_url(),
        auth.clone(),
        &json!({ "message": { "type": "text" }, "from": { "id": USER } }),
    )
    .await;
    assert_eq!((status, &body["_v"]), (400, &json!("v2")));

    let response = reqwest::Client::new()
        .post(sim.v1_url())
        .header("authorization", auth.clone().unwrap())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["msg"], "Invalid Request Payload");

    let url = format!("{}/chatbot/v2/webhook/st-unknown", sim.base_url());
    let (status, body) = call(&url, auth, &v2_body("x")).await;
    assert_eq!((status, &body["errors"][0]["code"]), (404, &json!(404)));
}

/// V2 sync polling: a pause in a turn yields the first messages plus a `pollId`; polling says
/// `Inprogress` until the pause is over, then hands out the rest once ("No data found" after).
#[tokio::test]
async fn v2_polling_hands_out_slow_messages_once() {
    let sim = sim(KoreSimConfig::default()).await;
    sim.script(
        USER,
        [Turn::text("Let me check that for you…")
            .then_pause(Duration::from_millis(300))
            .then_text("Shipped.")
            .end_task("Order Status")],
    );
    let token = sim.token();
    let (status, body) = call(
        &sim.v2_url(),
        Some(format!("bearer {token}")),
        &v2_body("5512?"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["val"], "Let me check that for you…");
    assert!(body.get("endOfTask").is_none());
    let poll_id = body["pollId"].as_str().expect("pollId").to_string();

    let http = reqwest::Client::new();
    let poll = || async {
        let r = http
            .get(sim.poll_url(&poll_id))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = poll().await;
    assert_eq!((status, &body["status"]), (200, &json!("Inprogress")));
    let done = wait::until(LIMIT, "the poll to finish", || async {
        let (_, body) = poll().await;
        body.get("data").is_some().then_some(body)
    })
    .await;
    assert_eq!(done["data"][0]["val"], "Shipped.");
    assert_eq!(done["completedTaskName"], "Order Status");
    let (status, body) = poll().await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({ "errors": [ { "msg": "No data found", "code": 400 } ] })
        )
    );
}

/// The bridge's own Kore.ai client, pointed at `sim`.
fn kore_client(
    sim: &KoreSim,
    mode: KoreMode,
    hook_instance: Option<&str>,
    timeout: Duration,
) -> KoreClient {
    let config = sim.config();
    KoreClient::new(KoreConfig {
        base_url: sim.base_url(),
        bot_id: config.bot_id,
        hook_instance: hook_instance.map(str::to_string),
        client_id: config.client_id,
        client_secret: config.client_secret,
        algorithm: jsonwebtoken::Algorithm::HS256,
        version: KoreVersion::V2,
        mode,
        timeout,
    })
}

fn user_turn(text: &str) -> UserTurn {
    UserTurn {
        user_id: USER.into(),
        text: text.into(),
        ..UserTurn::default()
    }
}

fn texts(answer: &SyncAnswer) -> Vec<&str> {
    answer
        .answer
        .items
        .iter()
        .map(|item| match item {
            BotItem::Text(text) => text.as_str(),
            BotItem::Template(_) => "<template>",
        })
        .collect()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The client follows V2 polling on a `hookInstance` channel (whose poll path has no instance
/// segment): the first messages come with a `pollId`, polling says `InProgress` until the
/// slow node is done, then hands out the rest (with the next `pollId` while pauses remain),
/// and the same id again is `Gone`.
#[tokio::test]
async fn kore_client_polls_a_slow_turn() {
    let sim = sim(KoreSimConfig {
        instances: [("inst-2".to_string(), ChannelConfig::default())].into(),
        ..KoreSimConfig::default()
    })
    .await;
    let pause = Duration::from_millis(400);
    sim.script(
        USER,
        [Turn::text("Let me check…")
            .then_pause(pause)
            .then_text("Still looking…")
            .then_pause(Duration::from_millis(100))
            .then_text("Shipped.")
            .end_task("Order Status")],
    );
    let client = kore_client(&sim, KoreMode::Sync, Some("inst-2"), LIMIT);
    let sent = Instant::now();
    let first = client
        .send(&user_turn("5512?"), now_s())
        .await
        .expect("turn")
        .expect("a sync answer");
    assert_eq!(texts(&first), ["Let me check…"]);
    let poll_id = first.poll_id.clone().expect("pollId");
    assert!(shared::kore::is_valid_poll_id(&poll_id), "{poll_id}");

    let early = client.poll(USER, &poll_id, now_s()).await.expect("poll");
    assert!(sent.elapsed() < pause, "the test machine is too slow");
    assert_eq!(early, Polled::InProgress);

    let second = wait::until(LIMIT, "the slow node to finish", || async {
        match client.poll(USER, &poll_id, now_s()).await.expect("poll") {
            Polled::Ready(answer) => Some(answer),
            Polled::InProgress => None,
            Polled::Gone => panic!("gone before it was collected"),
        }
    })
    .await;
    assert!(sent.elapsed() >= pause);
    assert_eq!(texts(&second), ["Still looking…"]);
    assert!(!second.answer.end_of_task);
    let next_id = second.poll_id.clone().expect("another pause follows");
    assert_eq!(
        client.poll(USER, &poll_id, now_s()).await.expect("poll"),
        Polled::Gone
    );

    let last = wait::until(LIMIT, "the last part", || async {
        match client.poll(USER, &next_id, now_s()).await.expect("poll") {
            Polled::Ready(answer) => Some(answer),
            _ => None,
        }
    })
    .await;
    assert_eq!(texts(&last), ["Shipped."]);
    assert_eq!(last.poll_id, None);
    assert_eq!(
        last.answer.completed_task_name.as_deref(),
        Some("Order Status")
    );
    let polls: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.poll_id.is_some())
        .collect();
    assert!(polls
        .iter()
        .all(|r| r.path.starts_with("/chatbot/v2/webhook/") && !r.path.contains("hookInstance")));
    assert!(polls.iter().all(|r| r
        .auth
        .as_ref()
        .is_some_and(|a| a["jwt"]["claims"]["userIdentity"] == USER)));
}

/// A turn whose answer does not come back within the client's timeout (kore-sim is slower)
/// is not resent by the retry loop, in sync and in async mode: Kore's request log holds one
/// call.
#[tokio::test]
async fn kore_turn_timed_out_is_sent_once() {
    let receiver = Receiver::start().await;
    let once = |mode: KoreMode| {
        let post_url = receiver.url.clone();
        async move {
            let sim = sim(KoreSimConfig {
                latency: Duration::from_millis(800),
                channel: ChannelConfig {
                    mode: match mode {
                        KoreMode::Sync => Mode::Sync,
                        KoreMode::Async => Mode::Async,
                    },
                    post_url: Some(post_url),
                    access_token: Some(Secret::new("t")),
                    ..ChannelConfig::default()
                },
                ..KoreSimConfig::default()
            })
            .await;
            let client = kore_client(&sim, mode, None, Duration::from_millis(200));
            let fast = RetryPolicy {
                max_retries: 3,
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                max_elapsed: Duration::from_secs(1),
            };
            let mut retries = 0;
            let turn = user_turn("hi");
            let result = retry(fast, || client.send(&turn, now_s()), |_, _| retries += 1).await;
            let error = result.expect_err("the client times out");
            assert!(
                matches!(error, UpstreamError::Timeout { .. }),
                "{mode:?}: {error:?}"
            );
            assert!(!error.is_retryable());
            assert_eq!(retries, 0, "{mode:?}");
            sim.wait_for_requests(1, LIMIT).await.expect("the call");
            // Any resend would have reached the sim by now.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert_eq!(sim.requests().len(), 1, "{mode:?}");
        }
    };
    tokio::join!(once(KoreMode::Sync), once(KoreMode::Async));
}

/// The HTTP control API scripts turns, changes config at runtime, lists requests and sessions,
/// and resets; SESSION_CLOSURE closes the session per `docs/vendors/kore-webhook-channel.md`,
/// "Session events".
#[tokio::test]
async fn control_api_over_http() {
    let sim = sim(KoreSimConfig::default()).await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let r = http.post(format!("{base}/sim/script"))
        .json(&json!({ "user": USER, "turns": [ { "messages": ["scripted", { "type": "template", "payload": { "template_type": "khoros_handoff", "comment": "c", "tagIds": [] } }], "endOfTask": true } ] }))
        .send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http
        .post(format!("{base}/sim/script"))
        .json(&json!({ "user": USER, "turns": [ { "bogus": 1 } ] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(format!("{base}/sim/config"))
        .json(&json!({ "latencyMs": 5, "mode": "async" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "async without a POST_URL is refused"
    );
    let r = http
        .post(format!("{base}/sim/config"))
        .json(&json!({ "latencyMs": 5 }))
        .send()
        .await
        .unwrap();
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["latencyMs"], 5);
    assert_eq!(config["clientSecret"], "***");

    let auth = Some(format!("bearer {}", sim.token()));
    let (_, body) = call(&sim.v1_url(), auth.clone(), &v1_body("hi")).await;
    assert_eq!(body["text"][0], "scripted");
    assert_eq!(
        body["text"][1]["payload"]["template_type"],
        "khoros_handoff"
    );
    let closure =
        json!({ "message": { "type": "event", "val": "SESSION_CLOSURE" }, "from": { "id": USER } });
    let (_, body) = call(&sim.v2_url(), auth.clone(), &closure).await;
    assert_eq!(body["data"][0]["eventType"], "SESSION_CLOSURE_SUCCESS");
    let (_, body) = call(&sim.v2_url(), auth, &closure).await;
    assert_eq!(body["data"][0]["eventType"], "SESSION_CLOSURE_IGNORED");

    let requests: Value = http
        .get(format!("{base}/sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 3);
    assert_eq!(requests[0]["version"], "v1");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["auth"]["jwt"]["header"]["alg"], "HS256");
    let sessions: Value = http
        .get(format!("{base}/sim/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sessions[0]["userId"], USER);
    assert_eq!(sessions[0]["active"], false);
    let r = http
        .delete(format!("{base}/sim/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(sim.requests().is_empty());
}

/// A `hookInstance` path is served with that instance's channel config (here async) while the
/// bot-level path keeps the first channel's (sync).
#[tokio::test]
async fn hook_instances_use_their_own_channel_config() {
    let mut receiver = Receiver::start().await;
    let mut config = KoreSimConfig::default();
    config.instances.insert(
        "ivrInst-0001".into(),
        ChannelConfig {
            mode: Mode::Async,
            post_url: Some(receiver.url.clone()),
            ..ChannelConfig::default()
        },
    );
    let sim = sim(config).await;
    let auth = Some(format!("bearer {}", sim.token()));
    let (status, ack) = call(
        &sim.v2_instance_url("ivrInst-0001"),
        auth.clone(),
        &v2_body("a"),
    )
    .await;
    assert_eq!((status, &ack["status"]), (200, &json!("ok")));
    let (headers, body) = receiver.next().await;
    assert!(
        headers.get("authorization").is_none(),
        "no access token configured"
    );
    assert_eq!(body["data"][0]["val"], "You said: a");
    let (status, body) = call(&sim.v2_url(), auth, &v2_body("b")).await;
    assert_eq!(
        (status, &body["data"][0]["val"]),
        (200, &json!("You said: b"))
    );
    let requests = sim.wait_for_requests(2, LIMIT).await.unwrap();
    assert_eq!(requests[0].instance.as_deref(), Some("ivrInst-0001"));
}
