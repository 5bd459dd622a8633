//! The ingress against a real nats-server: what is stored, what is refused, and recovery.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use http::HeaderMap;
use serde_json::json;
use shared::auth::{Clock, SystemClock};
use shared::contract::{headers, ConversationKey};
use shared::topology::EVENTS_STREAM;
use testkit::nats_server::NatsServer;
use testkit::wait;

use crate::helpers::{jetstream, mark_turn, message_event, TestIngress, HMAC_KEY};

/// Every message in the events stream, in order.
async fn stored(nats: &NatsServer) -> Vec<StreamMessage> {
    let js = jetstream(nats).await;
    let stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .expect("events stream exists");
    let info = stream.get_info().await.expect("stream info");
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        out.push(stream.get_raw_message(seq).await.expect("stored message"));
    }
    out
}

fn header(msg: &StreamMessage, name: &str) -> Option<String> {
    msg.headers.get(name).map(|v| v.as_str().to_string())
}

/// A valid HMAC request is stored once, raw, on its partition subject with the request id as Msg-Id.
#[tokio::test]
async fn hmac_event_is_stored_once_with_subject_and_msg_id() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[]).await;
    let body = message_event("user-42", "where is my order?");
    let (status, text) = ingress.send(&body, Some("req-0001")).await;
    assert_eq!(status, 202, "{text}");

    let msgs = stored(&nats).await;
    assert_eq!(msgs.len(), 1);
    let partition = ConversationKey {
        network: "brandmessenger",
        external_id: "bm-web-01",
        author_id: "user-42",
    }
    .partition(256);
    assert_eq!(
        msgs[0].subject.as_str(),
        format!("khoros.events.message.{partition}")
    );
    assert_eq!(
        header(&msgs[0], headers::MSG_ID).as_deref(),
        Some("req-0001")
    );
    assert_eq!(
        header(&msgs[0], headers::REQUEST_ID).as_deref(),
        Some("req-0001")
    );
    let received: i64 = header(&msgs[0], headers::RECEIVED_AT)
        .expect("receive timestamp")
        .parse()
        .unwrap();
    assert!((SystemClock.now_ms() - received).abs() < 60_000);
    assert_eq!(
        msgs[0].payload.as_ref(),
        body.as_bytes(),
        "body must be stored byte for byte"
    );
}

/// Khoros retries with the same request id and a fresh signature: stored once, still 202.
#[tokio::test]
async fn khoros_retry_with_same_request_id_is_stored_once() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[]).await;
    let body = message_event("user-7", "hello");
    let signer = &ingress.signer;
    for offset in [0, 1_000] {
        let mut h = signer.headers_at(
            body.as_bytes(),
            SystemClock.now_ms() - offset,
            &HeaderMap::new(),
        );
        h.insert("x-amzn-RequestId", "retry-1".parse().unwrap());
        let r = ingress
            .http
            .post(&ingress.url)
            .headers(h)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    assert_eq!(stored(&nats).await.len(), 1);
}

/// Basic auth works when configured, and wrong credentials are refused.
#[tokio::test]
async fn basic_auth_event_is_stored_and_wrong_password_refused() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("KHOROS_AUTH", "basic")]).await;
    let body = message_event("user-9", "hi");
    assert_eq!(ingress.send(&body, Some("basic-1")).await.0, 202);
    let wrong = shared::auth::basic::header_value("khoros-cb", "guess");
    let r = ingress
        .http
        .post(&ingress.url)
        .header("authorization", wrong)
        .header("x-amzn-RequestId", "basic-2")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let msgs = stored(&nats).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        header(&msgs[0], headers::MSG_ID).as_deref(),
        Some("basic-1")
    );
}

/// Each rejection path answers its status with a clear message and stores nothing.
#[tokio::test]
async fn rejections_answer_their_status_and_store_nothing() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("MAX_BODY_BYTES", "4096")]).await;
    let body = message_event("user-1", "hi");
    let now = SystemClock.now_ms();
    let post = |h: HeaderMap, b: Vec<u8>| ingress.http.post(&ingress.url).headers(h).body(b).send();

    // No auth at all.
    let r = ingress
        .http
        .post(&ingress.url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"unauthorized"}"#,
        "401 must not say which check failed"
    );
    // Signature for another body.
    let h = ingress
        .signer
        .headers_at(b"{\"type\":\"message\"}", now, &HeaderMap::new());
    assert_eq!(
        post(h, body.clone().into_bytes())
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // Stale and future timestamps.
    for ts in [now - 61_000, now + 61_000] {
        let h = ingress
            .signer
            .headers_at(body.as_bytes(), ts, &HeaderMap::new());
        assert_eq!(
            post(h, body.clone().into_bytes())
                .await
                .unwrap()
                .status()
                .as_u16(),
            401,
            "ts {ts}"
        );
    }
    // Unknown api key.
    let mut h = ingress
        .signer
        .headers_at(body.as_bytes(), now, &HeaderMap::new());
    h.insert("x-auth-apikey", "someone-else".parse().unwrap());
    assert_eq!(
        post(h, body.clone().into_bytes())
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // Too large (signed correctly, so only the size is wrong).
    let big = format!(r#"{{"type":"message","text":"{}"}}"#, "x".repeat(5000));
    let h = ingress
        .signer
        .headers_at(big.as_bytes(), now, &HeaderMap::new());
    let r = post(h, big.into_bytes()).await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert!(r.text().await.unwrap().contains("4096"));
    // Not JSON, and JSON without a type.
    for (bad, needle) in [
        ("not json", "not a JSON event"),
        (r#"{"text":"no type"}"#, "no `type`"),
        ("[1,2]", "not a JSON event"),
    ] {
        let h = ingress
            .signer
            .headers_at(bad.as_bytes(), now, &HeaderMap::new());
        let r = post(h, bad.as_bytes().to_vec()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{bad}: {text}");
    }
    assert!(
        stored(&nats).await.is_empty(),
        "a rejected request must not be stored"
    );

    let metrics = ingress
        .http
        .get(format!("{}/metrics", ingress.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing_header",
        "bad_signature",
        "stale_timestamp",
        "unknown_key",
    ] {
        assert!(
            metrics.contains(&format!(
                "ingress_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
}

/// A captured signature replayed under a new request id is stored with the same signature
/// digest as the original, on any replica (the worker drops the second one: see
/// `worker::signed_request_replayed_under_a_new_request_id_reaches_the_bot_once`); the
/// identical request (same id) is a harmless duplicate. One JetStream write per request.
#[tokio::test]
async fn replayed_signature_carries_the_digest_that_lets_the_worker_drop_it() {
    let nats = NatsServer::start();
    let a = TestIngress::start(&nats, &[]).await;
    let b = TestIngress::start(&nats, &[]).await;
    let body = message_event("user-5", "pay me");
    let signed = a
        .signer
        .headers_at(body.as_bytes(), SystemClock.now_ms(), &HeaderMap::new());
    let send = |ing: &TestIngress, id: &str| {
        let mut h = signed.clone();
        h.insert("x-amzn-RequestId", id.parse().unwrap());
        // Same path on both replicas, so the same signature verifies on both.
        ing.http
            .post(format!("{}/khoros/events", ing.base))
            .headers(h)
            .body(body.clone())
            .send()
    };
    assert_eq!(send(&a, "orig-1").await.unwrap().status().as_u16(), 202);
    let duplicate = send(&b, "orig-1").await.unwrap();
    assert_eq!(duplicate.status().as_u16(), 202);
    assert_eq!(
        duplicate.text().await.unwrap(),
        r#"{"status":"duplicate"}"#,
        "identical request is a duplicate, not an attack"
    );
    assert_eq!(send(&b, "replay-2").await.unwrap().status().as_u16(), 202);
    let msgs = stored(&nats).await;
    assert_eq!(msgs.len(), 2, "the original and the replay");
    let digests: Vec<_> = msgs
        .iter()
        .map(|m| header(m, headers::SIGNATURE_DIGEST).expect("digest header"))
        .collect();
    assert_eq!(digests[0], digests[1], "same signature, same digest");
    assert_eq!(digests[0].len(), 64, "hex SHA-256");
    assert_eq!(
        header(&msgs[1], headers::MSG_ID).as_deref(),
        Some("replay-2")
    );
    let other = message_event("user-5", "pay me again");
    let (status, _) = a.send(&other, Some("orig-3")).await;
    assert_eq!(status, 202);
    let msgs = stored(&nats).await;
    assert_ne!(
        header(&msgs[2], headers::SIGNATURE_DIGEST),
        Some(digests[0].clone()),
        "another request, another digest"
    );
}

/// Without `x-amzn-RequestId` the dedup id comes from the body: the same body is stored once.
#[tokio::test]
async fn missing_request_id_gets_a_stable_dedup_id() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[]).await;
    let body = message_event("user-3", "no id");
    let first = ingress.signer.headers_at(
        body.as_bytes(),
        SystemClock.now_ms() - 500,
        &HeaderMap::new(),
    );
    let second =
        ingress
            .signer
            .headers_at(body.as_bytes(), SystemClock.now_ms(), &HeaderMap::new());
    for h in [first, second] {
        let r = ingress
            .http
            .post(&ingress.url)
            .headers(h)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    let msgs = stored(&nats).await;
    assert_eq!(msgs.len(), 1);
    let id = header(&msgs[0], headers::MSG_ID).unwrap();
    assert!(id.starts_with("body-") && id.len() == 69, "{id}");
    assert_eq!(header(&msgs[0], headers::REQUEST_ID), None);
}

/// Unknown event types are accepted and stored on a subject of their own.
#[tokio::test]
async fn unknown_event_type_is_accepted_and_stored() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("PARTITIONS", "4")]).await;
    let body = r#"{"type":"Survey.Response","coordinate":{"networkKey":"n","externalId":"e"},"author":{"id":"a"},"new":{"x":1}}"#;
    assert_eq!(ingress.send(body, Some("unk-1")).await.0, 202);
    let msgs = stored(&nats).await;
    assert_eq!(msgs.len(), 1);
    let p = ConversationKey {
        network: "n",
        external_id: "e",
        author_id: "a",
    }
    .partition(4);
    assert_eq!(
        msgs[0].subject.as_str(),
        format!("khoros.events.survey_response.{p}")
    );
}

/// NATS down: 503 (never 202); NATS back: 202 again without restarting the ingress,
/// and every event that got a 202 is in the stream.
#[tokio::test]
async fn nats_outage_gives_503_then_recovers_without_restart() {
    let mut nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[]).await;
    assert_eq!(
        ingress
            .send(&message_event("u", "before"), Some("before-1"))
            .await
            .0,
        202
    );

    nats.stop();
    let (status, text) = ingress
        .send(&message_event("u", "during"), Some("during-1"))
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("unavailable"), "{text}");

    nats.restart();
    let mut accepted = vec!["before-1".to_string()];
    let mut n = 0;
    wait::until(
        Duration::from_secs(20),
        "ingress to accept again after NATS restart",
        || {
            n += 1;
            let id = format!("after-{n}");
            let ingress = &ingress;
            async move {
                let (status, _) = ingress.send(&message_event("u", "after"), Some(&id)).await;
                assert!(
                    status == 202 || status == 503,
                    "only 202 or 503 while recovering, got {status}"
                );
                (status == 202).then_some(id)
            }
        },
    )
    .await;
    accepted.push(format!("after-{n}"));
    let ids: Vec<String> = stored(&nats)
        .await
        .iter()
        .filter_map(|m| header(m, headers::MSG_ID))
        .collect();
    for id in &accepted {
        assert!(ids.contains(id), "{id} got 202 but is not stored: {ids:?}");
    }
    ingress.stop().await;
}

/// A store outage shorter than `STORE_DEADLINE` (a clustered stream electing a leader looks the
/// same: no responders, no PubAck) is waited out: the webhook sent during it is held, stored
/// once when NATS is back, and answered 202 "accepted", not 503 (which Khoros would count
/// as a failed delivery and hand the conversation to an agent).
#[tokio::test]
async fn an_outage_shorter_than_the_store_deadline_is_waited_out() {
    let mut nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("STORE_DEADLINE", "20s")]).await;
    assert_eq!(
        ingress
            .send(&message_event("u-held", "before"), Some("held-0"))
            .await
            .0,
        202
    );
    nats.stop();
    let sent = std::time::Instant::now();
    let held = tokio::spawn({
        let (signer, http) = (ingress.signer.clone(), ingress.http.clone());
        async move {
            let body = message_event("u-held", "during the outage");
            let response = signer
                .request(&http, body.as_bytes(), Some("held-1"))
                .send()
                .await
                .expect("answered");
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    });
    // The outage: twice the PubAck deadline of one attempt (750 ms in these tests), so only
    // an attempt made again after it can store the event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_finished(), "the webhook is held, not refused");
    nats.restart();
    let (status, text) = tokio::time::timeout(Duration::from_secs(25), held)
        .await
        .expect("answered within STORE_DEADLINE")
        .expect("join");
    assert_eq!(status, 202, "{text}");
    assert!(
        text.contains("accepted"),
        "a first delivery, not a duplicate: {text}"
    );
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    let ids: Vec<String> = stored(&nats)
        .await
        .iter()
        .filter_map(|m| header(m, headers::MSG_ID))
        .collect();
    assert_eq!(ids, vec!["held-0".to_string(), "held-1".to_string()]);
    ingress.stop().await;
}

/// The x-amzn-RequestId must be sane; a malformed one is a 400, not a crash.
#[tokio::test]
async fn oversized_request_id_is_a_bad_request() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[]).await;
    let long = "r".repeat(300);
    let (status, text) = ingress.send(&message_event("u", "x"), Some(&long)).await;
    assert_eq!(status, 400);
    assert!(text.contains("x-amzn-RequestId"), "{text}");
    let _ = HMAC_KEY;
}

/// A body the NATS server could never store (1 MiB, its default `max_payload`, leaves no room
/// for headers) is refused from its `Content-Length` alone, before any of it is sent.
#[tokio::test]
async fn a_body_that_could_never_be_published_is_refused_up_front() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("MAX_BODY_BYTES", "1048576")]).await;
    let addr = ingress.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = message_event("user-big", "big");
    let headers = ingress.signer.headers(body.as_bytes());
    let mut head =
        format!("POST /khoros/events HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1048576\r\n");
    for (name, value) in &headers {
        if name != "content-length" {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body larger than"), "says why: {answer}");
    assert!(stored(&nats).await.is_empty());
}

/// At the events stream's size cap new events are refused with 503 (Khoros retries), and the
/// stored, unprocessed ones are kept rather than discarded to make room.
#[tokio::test]
async fn a_full_events_stream_refuses_new_events_and_keeps_old_ones() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("EVENTS_MAX_BYTES", "4096")]).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let body = message_event(&format!("user-full-{i}"), "fill me up");
        let id = format!("full-{i}");
        match ingress.send(&body, Some(&id)).await.0 {
            202 => accepted.push(id),
            503 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        !accepted.is_empty() && refused > 0,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    let ids: Vec<_> = stored(&nats)
        .await
        .iter()
        .filter_map(|m| header(m, headers::MSG_ID))
        .collect();
    assert_eq!(ids, accepted, "the first events are all still there");
}

const KORE_TOKEN: &str = "kore-callback-token";

/// Every message in the Kore.ai replies stream, in order.
async fn kore_replies(nats: &NatsServer) -> Vec<StreamMessage> {
    let stream = jetstream(nats)
        .await
        .get_stream(shared::topology::KORE_REPLIES_STREAM)
        .await
        .expect("kore replies stream exists");
    let info = stream.get_info().await.expect("stream info");
    let mut out = Vec::new();
    if info.state.messages > 0 {
        for seq in info.state.first_sequence..=info.state.last_sequence {
            out.push(stream.get_raw_message(seq).await.expect("stored delivery"));
        }
    }
    out
}

/// POSTs a Kore.ai delivery with the callback token; returns status and JSON body.
async fn deliver(ingress: &TestIngress, body: &str) -> (u16, serde_json::Value) {
    let response = ingress
        .http
        .post(format!("{}/kore/callback", ingress.base))
        .bearer_auth(KORE_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A Kore.ai delivery is stored only for a user with a bot turn outstanding: no `to`, a `to`
/// that cannot be a KV key, or no turn mark: 403 and nothing stored; with the mark: 200 and
/// stored with its content-hash `Nats-Msg-Id`. `/readyz` covers the turn bucket.
#[tokio::test]
async fn kore_delivery_needs_an_outstanding_turn() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("KORE_CALLBACK_TOKEN", KORE_TOKEN)]).await;
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", ingress.ops))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["resources"]["bridge_conversations"], true, "{ready}");

    let refused = json!({"error": "no bot turn is outstanding for this user"});
    for body in [
        json!({"text": "no recipient", "from": "st-1"}),
        json!({"text": "bad id", "to": "user.7", "from": "st-1"}),
        json!({"text": "no turn", "to": "user-7", "from": "st-1"}),
    ] {
        let (status, answer) = deliver(&ingress, &body.to_string()).await;
        assert_eq!((status, &answer), (403, &refused), "{body}");
    }
    assert!(kore_replies(&nats).await.is_empty());

    mark_turn(&nats, "user-7").await;
    let body =
        json!({"to": "user-7", "data": [{"type": "text", "val": "hi"}], "_v": "v2"}).to_string();
    let (status, answer) = deliver(&ingress, &body).await;
    assert_eq!((status, answer), (200, json!({"status": "ok"})));
    let stored = kore_replies(&nats).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload.as_ref(), body.as_bytes());
    assert_eq!(
        header(&stored[0], headers::MSG_ID),
        Some(shared::contract::route::kore_delivery_message_id(
            body.as_bytes()
        ))
    );
    let partition = ConversationKey {
        network: "kore",
        external_id: "",
        author_id: "user-7",
    }
    .partition(256);
    assert_eq!(
        stored[0].subject.as_str(),
        format!("kore.replies.{partition}")
    );
}

/// The same delivery posted twice inside the duplicate window is stored once; both posts
/// are answered 200 `{"status":"ok"}`.
#[tokio::test]
async fn kore_delivery_posted_twice_is_stored_once() {
    let nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("KORE_CALLBACK_TOKEN", KORE_TOKEN)]).await;
    mark_turn(&nats, "user-8").await;
    let body = json!({"text": "Anything else?", "to": "user-8", "from": "st-1"}).to_string();
    for _ in 0..2 {
        let (status, answer) = deliver(&ingress, &body).await;
        assert_eq!((status, answer), (200, json!({"status": "ok"})));
    }
    let other = json!({"text": "Bye.", "to": "user-8", "from": "st-1"}).to_string();
    assert_eq!(deliver(&ingress, &other).await.0, 200);
    let stored = kore_replies(&nats).await;
    let payloads: Vec<_> = stored.iter().map(|m| m.payload.as_ref()).collect();
    assert_eq!(payloads, [body.as_bytes(), other.as_bytes()]);
}

/// Without NATS the turn cannot be checked: 503 (Kore.ai may retry), nothing is lost.
#[tokio::test]
async fn kore_delivery_without_nats_is_503() {
    let mut nats = NatsServer::start();
    let ingress = TestIngress::start(&nats, &[("KORE_CALLBACK_TOKEN", KORE_TOKEN)]).await;
    mark_turn(&nats, "user-9").await;
    nats.stop();
    let body = json!({"text": "hi", "to": "user-9", "from": "st-1"}).to_string();
    let (status, answer) = deliver(&ingress, &body).await;
    assert_eq!(status, 503, "{answer}");
    nats.restart();
    wait::until(Duration::from_secs(10), "the delivery stored", || async {
        (deliver(&ingress, &body).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(kore_replies(&nats).await.len(), 1);
}
