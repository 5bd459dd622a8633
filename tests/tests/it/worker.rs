//! End to end: khoros-sim -> ingress -> JetStream -> worker -> kore-sim -> khoros-sim.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use khoros_sim::faults::Fault;
use kore_sim::script::Turn;
use kore_sim::KoreSimConfig;
use serde_json::{json, Value};
use shared::topology::DEAD_LETTER_STREAM;
use testkit::wait;

use crate::helpers::jetstream;
use crate::stack::{Stack, WAIT};

async fn dead_letters(stack: &Stack) -> Vec<StreamMessage> {
    let js = jetstream(&stack.nats).await;
    let stream = js.get_stream(DEAD_LETTER_STREAM).await.expect("dlq stream");
    let info = stream.get_info().await.expect("info");
    let mut out = Vec::new();
    if info.state.messages > 0 {
        for seq in info.state.first_sequence..=info.state.last_sequence {
            out.push(stream.get_raw_message(seq).await.expect("dead letter"));
        }
    }
    out
}

/// A customer's message comes back as the bot's reply, and Kore.ai was asked the right way.
#[tokio::test]
async fn the_reply_arrives_and_kore_is_asked_with_a_signed_jwt() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack
        .khoros
        .send_text("user-1", "where is my order?")
        .expect("inject");
    assert_eq!(
        stack.replies("user-1", 1).await,
        ["You said: where is my order?"]
    );

    let requests = stack.kore.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.status, 200);
    // Kore.ai knows the customer only by a keyed hash of the whole conversation key.
    let user = crate::helpers::kore_user("user-1");
    assert!(user.starts_with("kb-"), "{user}");
    assert_eq!(request.body["from"]["id"], user.as_str());
    assert_eq!(request.body["message"]["val"], "where is my order?");
    assert_eq!(
        request.body["customData"]["khoros"]["externalId"],
        "bm-web-01"
    );
    assert!(
        !request.body.to_string().contains("user-1"),
        "the author id must not reach Kore.ai: {}",
        request.body
    );
    let claims = &request.auth.as_ref().expect("jwt decoded")["jwt"]["claims"];
    assert_eq!(claims["appId"], "cs-00000000-test-app");
    assert_eq!(claims["sub"], user.as_str());
    assert_eq!(claims["userIdentity"], user.as_str());
}

/// An agent-owned conversation gets nothing; handed back, the next message is answered alone.
#[tokio::test]
async fn an_agent_owned_conversation_gets_no_reply() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.khoros.send_text("user-2", "first").expect("inject");
    stack.replies("user-2", 1).await;
    stack
        .khoros
        .agent_take("user-2", Some("I'll take it"))
        .expect("agent takes");
    stack
        .khoros
        .send_text("user-2", "to the agent")
        .expect("inject");
    stack
        .khoros
        .agent_return("user-2", None)
        .expect("agent returns");
    stack
        .khoros
        .send_text("user-2", "back to the bot")
        .expect("inject");
    // Same partition, handled in order: once this reply exists the agent-owned one was handled.
    let replies = stack.replies("user-2", 2).await;
    assert_eq!(replies, ["You said: first", "You said: back to the bot"]);
    let asked: Vec<Value> = stack
        .kore
        .requests()
        .iter()
        .map(|r| r.body["message"]["val"].clone())
        .collect();
    assert!(
        !asked.contains(&json!("to the agent")),
        "the bot was asked about an agent-owned message: {asked:?}"
    );
}

/// The same event stored twice (Khoros re-sent it after the dedup window) is answered once.
#[tokio::test]
async fn a_resent_event_is_answered_once() {
    // Every service ensures the topology, so all must agree on the window.
    let stack = Stack::start(
        &[("DEDUP_WINDOW", "200ms")],
        &[("DEDUP_WINDOW", "200ms")],
        KoreSimConfig::default(),
    )
    .await;
    let body = crate::helpers::message_event("user-3", "only once please");
    assert_eq!(stack.ingress.send(&body, Some("resent-1")).await.0, 202);
    stack.replies("user-3", 1).await;
    // Once JetStream forgets the id (the window passed), the same event is stored again.
    wait::until(WAIT, "the re-sent event to be stored again", || async {
        let (status, text) = stack.ingress.send(&body, Some("resent-1")).await;
        assert_eq!(status, 202, "{text}");
        (text == r#"{"status":"accepted"}"#).then_some(())
    })
    .await;
    stack.khoros.send_text("user-3", "next").expect("inject");
    let replies = stack.replies("user-3", 2).await;
    assert_eq!(
        replies,
        ["You said: only once please", "You said: next"],
        "no second reply to the re-sent event"
    );
    assert_eq!(
        stack.kore.requests().len(),
        2,
        "the bot is not asked again for a processed event"
    );
}

/// Two quick messages from one customer are answered in order while several workers compete.
#[tokio::test]
async fn messages_of_one_customer_are_answered_in_order_across_workers() {
    let mut stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.add_worker().await;
    stack.add_worker().await;
    stack.kore.set_latency(Duration::from_millis(150));
    for i in 1..=4 {
        stack
            .khoros
            .send_text("user-4", &format!("message {i}"))
            .expect("inject");
    }
    let replies = stack.replies("user-4", 4).await;
    assert_eq!(
        replies,
        [
            "You said: message 1",
            "You said: message 2",
            "You said: message 3",
            "You said: message 4"
        ]
    );
}

/// A worker killed while the reply is on its way to Khoros: the next worker finishes the job
/// without asking Kore.ai again and without sending the reply twice.
#[tokio::test]
async fn a_worker_killed_mid_reply_loses_nothing_and_sends_nothing_twice() {
    let mut stack = Stack::start(&[("ACK_WAIT", "1s")], &[], KoreSimConfig::default()).await;
    stack
        .khoros
        .add_fault(Fault::latency("respond", Duration::from_secs(3)).times(1))
        .expect("fault");
    stack.khoros.send_text("user-5", "hello").expect("inject");
    // Kore.ai answered and the worker is now inside the slow /respond.
    wait::until(WAIT, "the bot to be asked", || async {
        (stack.kore.requests().len() == 1).then_some(())
    })
    .await;
    // A one-shot fault disappears from the list as soon as a call picks it up.
    wait::until(WAIT, "the /respond to start", || async {
        stack.khoros.faults().is_empty().then_some(())
    })
    .await;
    stack.workers.remove(0).kill();
    stack.add_worker().await;
    assert_eq!(stack.replies("user-5", 1).await, ["You said: hello"]);
    // Give a second copy every chance to show up: one more message must come after it.
    stack.khoros.send_text("user-5", "again").expect("inject");
    assert_eq!(
        stack.replies("user-5", 2).await,
        ["You said: hello", "You said: again"]
    );
    assert_eq!(
        stack.kore.requests().len(),
        2,
        "Kore.ai asked once per message"
    );
}

/// A worker killed while waiting for Kore.ai: the message is redelivered and answered once.
#[tokio::test]
async fn a_worker_killed_while_asking_the_bot_is_replaced() {
    let mut stack = Stack::start(&[("ACK_WAIT", "1s")], &[], KoreSimConfig::default()).await;
    stack.kore.set_latency(Duration::from_millis(1500));
    stack
        .khoros
        .send_text("user-6", "are you there?")
        .expect("inject");
    wait::until(WAIT, "the bot to be asked", || async {
        (!stack.kore.requests().is_empty()).then_some(())
    })
    .await;
    stack.workers.remove(0).kill();
    stack.kore.set_latency(Duration::ZERO);
    stack.add_worker().await;
    assert_eq!(
        stack.replies("user-6", 1).await,
        ["You said: are you there?"]
    );
    stack.khoros.send_text("user-6", "good").expect("inject");
    assert_eq!(stack.replies("user-6", 2).await.len(), 2);
}

/// Kore.ai 5xx is retried, then the reply goes out.
#[tokio::test]
async fn kore_server_errors_are_retried() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.kore.script(
        &crate::helpers::kore_user("user-7"),
        [
            Turn::fail(503),
            Turn::fail(500),
            Turn::text("sorry for the wait"),
        ],
    );
    stack.khoros.send_text("user-7", "hi").expect("inject");
    assert_eq!(stack.replies("user-7", 1).await, ["sorry for the wait"]);
    let statuses: Vec<u16> = stack.kore.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
}

/// Kore.ai down: the customer is handed to an agent with a clear comment, not left waiting;
/// after enough failures the breaker answers at once.
#[tokio::test]
async fn kore_down_hands_the_customer_to_an_agent() {
    let stack = Stack::start(
        &[("BREAKER_FAILURES", "1"), ("KORE_RETRY_MAX", "1")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    stack.kore.set_outage(Some(503)).expect("outage");
    stack.khoros.send_text("user-8", "help").expect("inject");
    let change = stack
        .khoros
        .wait_until(WAIT, "a hand-off to an agent", |sim| {
            sim.control_changes()
                .into_iter()
                .find(|c| c.key.author_id == "user-8" && c.to.kind == "AGENT")
        })
        .await
        .expect("hand-off");
    assert!(
        change
            .comment
            .as_deref()
            .unwrap_or("")
            .contains("could not answer"),
        "{:?}",
        change.comment
    );
    assert!(stack
        .khoros
        .tags("user-8")
        .iter()
        .any(|t| t == "Standard Bot Handoff"));
    assert!(stack.khoros.messages("user-8").is_empty());
    // The breaker is open now: the next customer is handed off without calling Kore.ai.
    let asked_before = stack.kore.requests().len();
    stack.khoros.send_text("user-9", "hello?").expect("inject");
    stack
        .khoros
        .wait_until(WAIT, "second hand-off", |sim| {
            sim.control_changes()
                .into_iter()
                .find(|c| c.key.author_id == "user-9" && c.to.kind == "AGENT")
        })
        .await
        .expect("hand-off");
    assert_eq!(
        stack.kore.requests().len(),
        asked_before,
        "breaker open: Kore.ai not called"
    );
}

/// A Khoros 4xx is not retried: the event lands in the dead-letter stream with the reason.
#[tokio::test]
async fn a_khoros_client_error_is_dead_lettered() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack
        .khoros
        .add_fault(Fault::status("respond", 400).times(50))
        .expect("fault");
    stack.khoros.send_text("user-10", "hi").expect("inject");
    let letters = wait::until(WAIT, "a dead letter", || async {
        let letters = dead_letters(&stack).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].subject.as_str(), "bridge.dlq.message");
    let letter: Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert_eq!(letter["step"], "respond");
    assert_eq!(letter["status"], "400");
    assert_eq!(letter["attempts"], 1, "4xx is not retried");
    assert_eq!(
        stack
            .khoros
            .requests()
            .iter()
            .filter(|r| r.details.get("code").and_then(Value::as_str) == Some("400"))
            .count(),
        1
    );
    assert!(
        letter["body_excerpt"].as_str().unwrap().contains("error"),
        "{letter}"
    );
    assert_eq!(letter["event"]["text"], "hi");
    assert!(letter["subject"]
        .as_str()
        .unwrap()
        .starts_with("khoros.events.message."));
}

/// Quick replies become actions; the hand-off template becomes PUT /control with its comment
/// and tags.
#[tokio::test]
async fn quick_replies_and_handoff_templates_map_as_written() {
    let stack = Stack::start(
        &[("TAG_HANDOFF", "4100"), ("TAG_BOT_REPLY", "4000")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    stack.kore.script(
        &crate::helpers::kore_user("user-11"),
        [
            Turn::quick_replies(
                "Track an order?",
                &[("Yes", "TRACK_YES"), ("No", "TRACK_NO")],
            ),
            Turn::handoff("billing dispute", &[4107]),
        ],
    );
    stack.khoros.send_text("user-11", "hi").expect("inject");
    let reply = stack
        .khoros
        .wait_for_messages("user-11", 1, WAIT)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(reply["text"], "Track an order?");
    assert_eq!(
        reply["actions"],
        json!([{"type":"reply","text":"Yes","payload":"TRACK_YES"},{"type":"reply","text":"No","payload":"TRACK_NO"}])
    );
    stack
        .khoros
        .send_text("user-11", "my bill is wrong")
        .expect("inject");
    let change = stack
        .khoros
        .wait_until(WAIT, "the bot's hand-off", |sim| {
            sim.control_changes()
                .into_iter()
                .find(|c| c.key.author_id == "user-11" && c.to.kind == "AGENT")
        })
        .await
        .expect("hand-off");
    assert_eq!(change.comment.as_deref(), Some("billing dispute"));
    let tag_ids = stack
        .khoros
        .wait_until(WAIT, "hand-off tags", |sim| {
            let ids = sim.tag_ids("user-11");
            (ids.contains(&4107) && ids.contains(&4100)).then_some(ids)
        })
        .await
        .expect("tags");
    assert!(
        tag_ids.contains(&4000),
        "bot-reply tag at the first reply: {tag_ids:?}"
    );
    assert_eq!(
        stack.khoros.messages("user-11").len(),
        1,
        "the hand-off template is not shown to the customer"
    );
}

/// Async mode: Kore.ai acknowledges, delivers to /kore/callback, and the reply reaches the customer.
#[tokio::test]
async fn async_mode_replies_through_the_callback() {
    let mut kore = KoreSimConfig::default();
    kore.channel.mode = kore_sim::config::Mode::Async;
    kore.channel.access_token = Some(shared::Secret::new("kore-callback-token"));
    // The ingress' address is only known once it runs, so POST_URL is set after start.
    let stack = Stack::start(
        &[("KORE_MODE", "async")],
        &[("KORE_CALLBACK_TOKEN", "kore-callback-token")],
        KoreSimConfig {
            channel: kore_sim::config::ChannelConfig {
                post_url: Some("http://127.0.0.1:9/unset".into()),
                ..kore.channel.clone()
            },
            ..kore
        },
    )
    .await;
    let patch = kore_sim::config::ConfigPatch {
        post_url: Some(format!("{}/kore/callback", stack.ingress.base)),
        ..Default::default()
    };
    stack.kore.update_config(&patch).expect("post url");
    stack.kore.script(
        &crate::helpers::kore_user("user-12"),
        [Turn::texts([
            "Looking that up.",
            "Order 5512 shipped yesterday.",
        ])],
    );
    stack
        .khoros
        .send_text("user-12", "where is 5512?")
        .expect("inject");
    let replies = stack.replies("user-12", 2).await;
    assert_eq!(
        replies,
        ["Looking that up.", "Order 5512 shipped yesterday."]
    );
    let deliveries = stack.kore.deliveries();
    assert!(
        deliveries.iter().all(|d| d.status == Some(200)),
        "every delivery accepted: {deliveries:?}"
    );
}

/// The token is rotated while the worker runs; after the old one's grace period the worker
/// uses the new one: no reply fails with 401.
#[tokio::test]
async fn a_rotated_token_is_picked_up_without_a_401() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.khoros.send_text("user-13", "before").expect("inject");
    stack.replies("user-13", 1).await;
    // What the scheduler does: refresh with the current token, store the new one in KV.
    stack.rotate_token().await;
    // Past the 10-minute grace: only the new token works now.
    stack.khoros.advance_clock(Duration::from_secs(11 * 60));
    stack.khoros.send_text("user-13", "after").expect("inject");
    assert_eq!(
        stack.replies("user-13", 2).await,
        ["You said: before", "You said: after"]
    );
    let unauthorized = stack
        .khoros
        .requests()
        .iter()
        .filter(|r| r.details.get("code").and_then(Value::as_str) == Some("401"))
        .count();
    assert_eq!(unauthorized, 0, "no Bot API call was refused");
}

/// SIGTERM while an event is being handled: the worker stops pulling, gives the event back at
/// its deadline, and the next worker answers it once.
#[tokio::test]
async fn graceful_shutdown_gives_in_flight_work_back() {
    let mut stack = Stack::start(
        &[("SHUTDOWN_TIMEOUT", "300ms")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    let ready = reqwest::get(format!("{}/readyz", stack.workers[0].base))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    stack.kore.set_latency(Duration::from_secs(2));
    stack
        .khoros
        .send_text("user-14", "slow one")
        .expect("inject");
    wait::until(WAIT, "the bot to be asked", || async {
        (!stack.kore.requests().is_empty()).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    stack.workers.remove(0).stop().await;
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "stop waited for the slow call instead of giving it back"
    );
    stack.kore.set_latency(Duration::ZERO);
    stack.add_worker().await;
    assert_eq!(stack.replies("user-14", 1).await, ["You said: slow one"]);
    stack.khoros.send_text("user-14", "next").expect("inject");
    assert_eq!(
        stack.replies("user-14", 2).await,
        ["You said: slow one", "You said: next"]
    );
}

/// A bot slower than the ack wait: in-progress acks keep the event alive, so it is neither
/// redelivered nor asked twice.
#[tokio::test]
async fn long_bot_calls_keep_the_event_alive() {
    let stack = Stack::start(&[("ACK_WAIT", "1s")], &[], KoreSimConfig::default()).await;
    stack.kore.set_latency(Duration::from_millis(2500));
    stack
        .khoros
        .send_text("user-15", "take your time")
        .expect("inject");
    assert_eq!(
        stack.replies("user-15", 1).await,
        ["You said: take your time"]
    );
    assert_eq!(stack.kore.requests().len(), 1);
    let js = jetstream(&stack.nats).await;
    let stream = js
        .get_stream(shared::topology::EVENTS_STREAM)
        .await
        .unwrap();
    let mut redelivered = 0;
    for p in 0..4 {
        let mut consumer =
            crate::helpers::partition_consumer(&stream, &format!("worker-message-{p}"))
                .await
                .expect("every partition has a consumer");
        redelivered += consumer.info().await.unwrap().num_redelivered;
    }
    assert_eq!(
        redelivered, 0,
        "the event was redelivered despite in-progress acks"
    );
}

/// The ingress stores a signed request replayed under a new request id (one write per event
/// keeps it fast); the worker sees the same signature digest and drops the replay, so the bot
/// is asked once and the customer answered once.
#[tokio::test]
async fn signed_request_replayed_under_a_new_request_id_reaches_the_bot_once() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.khoros.send_text("user-r", "hello").expect("inject");
    assert_eq!(stack.replies("user-r", 1).await, ["You said: hello"]);
    let mut event = stack
        .khoros
        .events()
        .into_iter()
        .find(|e| e.author_id.as_deref() == Some("user-r"))
        .expect("the emitted event")
        .body;
    event["text"] = json!("pay twice?");
    event["coordinate"]["messageId"] = json!("m-replayed");
    let body = serde_json::to_vec(&event).unwrap();
    let signed = stack.ingress.signer.headers(&body);
    for request_id in ["captured-1", "replayed-2"] {
        let mut headers = signed.clone();
        headers.insert("x-amzn-RequestId", request_id.parse().unwrap());
        let status = stack
            .ingress
            .http
            .post(&stack.ingress.url)
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202, "{request_id} is stored");
    }
    let js = jetstream(&stack.nats).await;
    wait::until(
        WAIT,
        "both events handled (the work queue is empty)",
        || {
            let js = js.clone();
            async move {
                let info = js
                    .get_stream(shared::topology::EVENTS_STREAM)
                    .await
                    .ok()?
                    .get_info()
                    .await
                    .ok()?;
                (info.state.messages == 0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        stack.replies("user-r", 2).await,
        ["You said: hello", "You said: pay twice?"]
    );
    assert_eq!(
        stack.kore.requests().len(),
        2,
        "the replay never reached the bot"
    );
    assert_eq!(stack.khoros.messages("user-r").len(), 2, "answered once");
}
