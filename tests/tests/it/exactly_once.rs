//! Exactly once, from the customer's side: every worker behaviour that could send a reply twice
//! or lose it — a `/respond` whose answer is lost, a crash mid-call with an unreadable request
//! log, a dead letter replayed, events waiting for a permit, poison events, Kore.ai async
//! deliveries posted twice or never, a Kore.ai call that times out, V2 polling — with a
//! `RELIABILITY` line of figures per test (run with `--nocapture`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use khoros_sim::actions::{AuthorRef, InboundMessage};
use khoros_sim::faults::Fault;
use kore_sim::config::{ChannelConfig, ConfigPatch, Mode};
use kore_sim::script::Turn;
use kore_sim::KoreSimConfig;
use serde_json::{json, Value};
use shared::contract::subject::EVENTS_PREFIX;
use shared::contract::{headers, ConversationKey};
use shared::topology::{DEAD_LETTER_STREAM, EVENTS_STREAM};
use testkit::wait;

use crate::helpers::{jetstream, kore_user, message_event};
use crate::stack::{Stack, WAIT};

const CALLBACK_TOKEN: &str = "kore-callback-token";

/// A worker as its own OS process on a known port, so its `/metrics` are its own (in-process
/// workers share the test binary's recorder with every other test) and it can be SIGKILLed.
struct WorkerProc {
    child: Child,
    base: String,
}

impl WorkerProc {
    async fn spawn(vars: &[(String, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let logs = || {
            if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = Command::new(env!("CARGO_BIN_EXE_worker-process"))
            .envs(vars.iter().cloned())
            .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(logs())
            .stderr(logs())
            .spawn()
            .expect("spawn worker process");
        let worker = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        crate::helpers::wait_ready(&worker.base, "worker process /readyz to answer 200").await;
        worker
    }

    /// The sum of `name`'s samples whose labels contain `label` (0 when absent).
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        metric_value(&text, name, label)
    }

    /// SIGKILL: no shutdown path runs, nothing in flight is acknowledged.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric_value(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, v| total + v)
}

/// Every dead letter in the stream, as JSON.
async fn dead_letters(stack: &Stack) -> Vec<Value> {
    let js = jetstream(&stack.nats).await;
    let stream = js.get_stream(DEAD_LETTER_STREAM).await.expect("dlq stream");
    let info = stream.get_info().await.expect("info");
    let mut out = Vec::new();
    if info.state.messages > 0 {
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                out.push(serde_json::from_slice(&message.payload).expect("dead letter JSON"));
            }
        }
    }
    out
}

async fn wait_for_dead_letters(stack: &Stack, n: usize, what: &str) -> Vec<Value> {
    wait::until(WAIT, what, || async {
        let letters = dead_letters(stack).await;
        (letters.len() >= n).then_some(letters)
    })
    .await
}

/// `worker dlq-replay --all`, run by the worker's own CLI in a process of its own (the
/// in-process `worker::cli::run` reads `NATS_URL` from the process environment, which tests
/// running in parallel would race on). Returns success and the output.
async fn dlq_replay_all(stack: &Stack) -> (bool, String) {
    let url = stack.nats.url();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_worker-process"))
            .args(["dlq-replay", "--all"])
            .env("NATS_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run dlq-replay");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("join")
}

/// The texts the bot sent to `author` (default network and page).
fn texts(stack: &Stack, author: impl Into<AuthorRef>) -> Vec<String> {
    stack
        .khoros
        .messages(author)
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `/respond` calls khoros-sim received (whatever their answer).
fn respond_calls(stack: &Stack) -> usize {
    stack
        .khoros
        .requests()
        .iter()
        .filter(|r| {
            r.details
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| p.ends_with("/respond"))
        })
        .count()
}

/// Kore.ai webhook calls (not polls) for `user`.
fn kore_calls(stack: &Stack, user: &str) -> usize {
    stack
        .kore
        .requests()
        .iter()
        .filter(|r| r.poll_id.is_none() && r.user_id.as_deref() == Some(user))
        .count()
}

async fn wait_for_agent(stack: &Stack, author: &str) -> Option<String> {
    stack
        .khoros
        .wait_until(WAIT, "a hand-off to an agent", |sim| {
            sim.control_changes()
                .into_iter()
                .find(|c| c.key.author_id == author && c.to.kind == "AGENT")
        })
        .await
        .expect("hand-off")
        .comment
}

/// Sends `text` as `author`, waits for the reply and returns what the customer has then: the
/// next event of the same conversation is handled after every earlier one (one lane), so a
/// late second copy of an earlier reply would be visible by now.
async fn follow_up(stack: &Stack, author: &str, text: &str, expected_total: usize) -> Vec<String> {
    stack.khoros.send_text(author, text).expect("inject");
    stack.replies(author, expected_total).await
}

// --- 1. a lost /respond answer is resolved against the request log ---

async fn lost_answer_case(
    name: &str,
    author: &str,
    fault: Fault,
    expect_result: &str,
    expect_respond_calls: usize,
) {
    let stack =
        Stack::start_without_workers(&[("KHOROS_TIMEOUT", "1s")], &[], KoreSimConfig::default())
            .await;
    let worker = WorkerProc::spawn(&stack.worker_vars()).await;
    stack.khoros.add_fault(fault).expect("fault");
    let started = Instant::now();
    stack.khoros.send_text(author, "hello").expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["You said: hello"]);
    let elapsed = started.elapsed();
    assert!(stack.khoros.faults().is_empty(), "the fault was used");
    let replies = follow_up(&stack, author, "again", 2).await;
    assert_eq!(
        replies,
        ["You said: hello", "You said: again"],
        "exactly once, in order"
    );
    let calls = respond_calls(&stack);
    let sent = worker
        .metric("worker_delivery_resolutions_total", "result=\"sent\"")
        .await;
    let not_sent = worker
        .metric("worker_delivery_resolutions_total", "result=\"not_sent\"")
        .await;
    let duplicates = replies.len() - 2;
    eprintln!(
        "RELIABILITY {name}: replies={} duplicates={duplicates} lost=0 respond_calls={calls} \
         resolutions sent={sent} not_sent={not_sent} first_reply_shown_after={elapsed:?}",
        replies.len()
    );
    assert_eq!(
        calls, expect_respond_calls,
        "/respond calls for two messages"
    );
    let (want_sent, want_not_sent) = if expect_result == "sent" {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    };
    assert_eq!(
        (sent, not_sent),
        (want_sent, want_not_sent),
        "worker_delivery_resolutions_total"
    );
}

/// `/respond` took effect but answered 503: the request log shows it arrived, so it is not
/// sent again.
#[tokio::test]
async fn lost_respond_answer_503_after_effect_is_not_resent() {
    lost_answer_case(
        "lost-answer-503-after",
        "eo-1a",
        Fault::status("respond", 503).after().times(1),
        "sent",
        2,
    )
    .await;
}

/// A storm of lost answers: Khoros acts on 24 replies at once but answers each with a 503, and
/// its request log is slow to list (300 ms). Each reply is resolved against the log and
/// arrives exactly once, but the worker does not list the log once per reply: resolutions
/// waiting while a listing is made share the next one, so Khoros sees a few listings, not 24.
#[tokio::test]
async fn a_storm_of_lost_answers_shares_request_log_listings() {
    const N: usize = 24;
    let stack =
        Stack::start_without_workers(&[("KHOROS_TIMEOUT", "2s")], &[], KoreSimConfig::default())
            .await;
    let worker = WorkerProc::spawn(&stack.worker_vars()).await;
    stack
        .khoros
        .add_fault(Fault::status("respond", 503).after().times(N as u32))
        .expect("fault");
    let slow_log = stack
        .khoros
        .add_fault(Fault::latency("request", Duration::from_millis(300)))
        .expect("latency fault");
    let authors: Vec<String> = (0..N).map(|i| format!("eo-storm-{i}")).collect();
    for author in &authors {
        stack.khoros.send_text(author, "hello").expect("inject");
    }
    for author in &authors {
        assert_eq!(
            stack.replies(author, 1).await,
            ["You said: hello"],
            "{author}"
        );
    }
    assert!(
        stack.khoros.faults().iter().all(|f| f.id == slow_log),
        "every 503 was used"
    );
    // The replies show before their senders have resolved what became of them.
    let sent = wait::until(WAIT, "every lost answer to be resolved", || async {
        let sent = worker
            .metric("worker_delivery_resolutions_total", "result=\"sent\"")
            .await;
        (sent >= N as f64).then_some(sent)
    })
    .await;
    let listed = worker
        .metric("worker_request_log_listings_total", "result=\"listed\"")
        .await;
    let shared = worker
        .metric("worker_request_log_listings_total", "result=\"shared\"")
        .await;
    let asked = stack
        .khoros
        .faults()
        .iter()
        .find(|f| f.id == slow_log)
        .map_or(0, |f| f.applied);
    eprintln!(
        "RELIABILITY lost-answer-storm: replies={N} respond_calls={} resolutions sent={sent} \
         request-log listings={listed} shared={shared} asked_of_khoros={asked}",
        respond_calls(&stack)
    );
    assert_eq!(respond_calls(&stack), N, "no reply sent twice");
    assert_eq!(sent, N as f64, "every lost answer resolved as sent");
    assert_eq!(listed + shared, N as f64, "one lookup per resolution");
    assert_eq!(asked as f64, listed, "what Khoros saw");
    assert!(
        listed <= (N / 3) as f64,
        "{listed} listings for {N} resolutions"
    );
}

/// `/respond` took effect but its answer came after `KHOROS_TIMEOUT`: not sent again.
#[tokio::test]
async fn lost_respond_answer_timeout_after_effect_is_not_resent() {
    lost_answer_case(
        "lost-answer-timeout-after",
        "eo-1b",
        Fault::latency("respond", Duration::from_millis(2500))
            .after()
            .times(1),
        "sent",
        2,
    )
    .await;
}

/// A 503 before the call took effect: the request log has no such call, so it IS sent again,
/// and arrives once.
#[tokio::test]
async fn respond_503_before_effect_is_resent_once() {
    lost_answer_case(
        "respond-503-before",
        "eo-1c",
        Fault::status("respond", 503).times(1),
        "not_sent",
        3,
    )
    .await;
}

// --- 2. dlq-replay resumes the original event's progress ---

/// A two-part reply whose second `/respond` fails for good: dead-lettered at step respond;
/// the replay sends only the second part, without asking Kore.ai again.
#[tokio::test]
async fn dlq_replay_resumes_at_the_failed_part() {
    let author = "eo-2";
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    stack.kore.script(
        &kore_user(author),
        [Turn::texts(["Part one.", "Part two."])],
    );
    // Rules of one route apply oldest first: the first call passes, the second gets 400.
    stack
        .khoros
        .add_fault(Fault::latency("respond", Duration::from_millis(1)).times(1))
        .expect("fault");
    stack
        .khoros
        .add_fault(Fault::status("respond", 400).times(1))
        .expect("fault");
    stack
        .khoros
        .send_text(author, "two parts please")
        .expect("inject");
    let letters = wait_for_dead_letters(&stack, 1, "the event to be dead-lettered").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["step"], "respond");
    assert_eq!(letters[0]["status"], "400");
    assert_eq!(texts(&stack, author), ["Part one."], "before the replay");

    let (ok, output) = dlq_replay_all(&stack).await;
    assert!(ok, "dlq-replay failed: {output}");
    let replies = stack.replies(author, 2).await;
    assert_eq!(replies, ["Part one.", "Part two."]);
    let replies = follow_up(&stack, author, "thanks", 3).await;
    assert_eq!(
        replies,
        ["Part one.", "Part two.", "You said: thanks"],
        "exactly once, in order"
    );
    let asked = kore_calls(&stack, &kore_user(author));
    let left = dead_letters(&stack).await.len();
    eprintln!(
        "RELIABILITY dlq-replay-resume: replies={replies:?} duplicates=0 lost=0 kore_calls={asked} \
         (2 messages) respond_calls={} dead_letters_left={left}",
        respond_calls(&stack)
    );
    assert_eq!(
        asked, 2,
        "Kore.ai asked once per message, not again on replay"
    );
    assert_eq!(left, 0, "the replayed letter left the dead-letter stream");
}

// --- 3. a crash mid-/respond with an unreadable request log ---

/// The worker process is SIGKILLed while its `/respond` (which took effect) is in flight and
/// the request log answers 503: the next worker cannot tell whether it arrived, so it parks
/// the event as `unknown_outcome` instead of resending; once the log is readable, the replay
/// finds the call there and sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_respond_with_unreadable_log_is_parked_not_resent() {
    let author = "eo-3";
    let stack = Stack::start_without_workers(
        &[
            ("ACK_WAIT", "1s"),
            ("KHOROS_TIMEOUT", "2s"),
            ("KHOROS_RETRY_MAX", "1"),
            ("MEMBER_TIMEOUT", "1s"),
        ],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    let vars = stack.worker_vars();
    let first = WorkerProc::spawn(&vars).await;
    stack
        .khoros
        .add_fault(
            Fault::latency("respond", Duration::from_secs(6))
                .after()
                .times(1),
        )
        .expect("fault");
    stack.khoros.send_text(author, "hello").expect("inject");
    // The call took effect (the customer has it) and its answer is still being held back.
    stack
        .khoros
        .wait_for_messages(author, 1, WAIT)
        .await
        .expect("the /respond took effect");
    let started = Instant::now();
    first.kill();
    stack
        .khoros
        .add_fault(Fault::status("request", 503))
        .expect("fault");
    let second = WorkerProc::spawn(&vars).await;
    let letters = wait_for_dead_letters(&stack, 1, "an unknown_outcome dead letter").await;
    let parked_after = started.elapsed();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["step"], "respond", "{}", letters[0]);
    assert_eq!(letters[0]["status"], "unknown_outcome", "{}", letters[0]);
    assert_eq!(
        texts(&stack, author),
        ["You said: hello"],
        "at most the one message while the outcome is unknown"
    );
    assert_eq!(respond_calls(&stack), 1, "nothing resent blindly");

    stack.khoros.clear_faults();
    let (ok, output) = dlq_replay_all(&stack).await;
    assert!(ok, "dlq-replay failed: {output}");
    wait::until(WAIT, "the replay to be resolved as sent", || async {
        (second
            .metric("worker_delivery_resolutions_total", "result=\"sent\"")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let replies = follow_up(&stack, author, "again", 2).await;
    assert_eq!(
        replies,
        ["You said: hello", "You said: again"],
        "exactly once, in order"
    );
    let unknown = second
        .metric("worker_delivery_resolutions_total", "result=\"unknown\"")
        .await;
    let calls = respond_calls(&stack);
    let asked = kore_calls(&stack, &kore_user(author));
    eprintln!(
        "RELIABILITY crash-mid-respond-unreadable-log: replies={} duplicates=0 lost=0 respond_calls={calls} \
         kore_calls={asked} resolutions unknown={unknown} parked_after_kill={parked_after:?} faults_injected=1 SIGKILL + request log 503",
        replies.len()
    );
    assert_eq!(calls, 2, "one /respond per message");
    assert_eq!(asked, 2, "Kore.ai asked once per message");
    assert!(unknown >= 1.0, "the unreadable log was counted as unknown");
}

// --- 4. events waiting for a concurrency permit are kept alive ---

/// One permit, a 1 s ack wait, a bot taking 1.5 s and three customers writing at once: the
/// waiting events get in-progress acks, so none is redelivered and nothing is asked twice.
#[tokio::test]
async fn events_waiting_for_a_permit_are_not_redelivered() {
    let stack = Stack::start(
        &[("WORKER_CONCURRENCY", "1"), ("ACK_WAIT", "1s")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    stack.kore.set_latency(Duration::from_millis(1500));
    let authors = ["eo-4a", "eo-4b", "eo-4c"];
    let started = Instant::now();
    for round in 1..=2 {
        for author in authors {
            stack
                .khoros
                .send_text(author, &format!("m{round}"))
                .expect("inject");
        }
    }
    for author in authors {
        let replies = stack
            .khoros
            .wait_for_messages(author, 2, Duration::from_secs(30))
            .await
            .expect("both replies");
        assert_eq!(replies.len(), 2);
    }
    let elapsed = started.elapsed();
    let js = jetstream(&stack.nats).await;
    let stream = js.get_stream(EVENTS_STREAM).await.expect("events stream");
    let mut redelivered = 0;
    for p in 0..4 {
        let mut consumer =
            crate::helpers::partition_consumer(&stream, &format!("worker-message-{p}"))
                .await
                .expect("every partition has a consumer");
        redelivered += consumer
            .info()
            .await
            .expect("consumer info")
            .num_redelivered;
    }
    let mut duplicates = 0;
    for author in authors {
        let replies = texts(&stack, author);
        duplicates += replies.len().saturating_sub(2);
        assert_eq!(
            replies,
            ["You said: m1", "You said: m2"],
            "{author}: exactly once, in order"
        );
    }
    let asked: usize = authors
        .iter()
        .map(|a| kore_calls(&stack, &kore_user(a)))
        .sum();
    eprintln!(
        "RELIABILITY permit-wait-keepalive: messages=6 replies=6 duplicates={duplicates} lost=0 \
         kore_calls={asked} redelivered={redelivered} elapsed={elapsed:?} (serial bot time 9 s, ack wait 1 s)"
    );
    assert!(
        elapsed > Duration::from_secs(8),
        "the permit really serialised the work ({elapsed:?})"
    );
    assert_eq!(asked, 6, "Kore.ai asked once per message");
    assert_eq!(redelivered, 0, "no event was redelivered");
}

// --- 5. bounded retries and poison ---

/// An event that is not JSON, stored on a live conversation's partition: dead-lettered at
/// `parse`, while the conversations of that partition keep being answered.
#[tokio::test]
async fn a_message_event_that_is_not_json_is_dead_lettered_and_others_flow() {
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    let author = "eo-5a";
    let partition = ConversationKey {
        network: "brandmessenger",
        external_id: "bm-web-01",
        author_id: author,
    }
    .partition(4);
    let js = jetstream(&stack.nats).await;
    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert(headers::MSG_ID, "poison-5a");
    js.publish_with_headers(
        format!("{EVENTS_PREFIX}.message.{partition}"),
        nats_headers,
        "{\"type\":\"message\", this is not JSON".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    stack.khoros.send_text(author, "hello").expect("inject");
    stack.khoros.send_text("eo-5a-other", "hi").expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["You said: hello"]);
    assert_eq!(stack.replies("eo-5a-other", 1).await, ["You said: hi"]);
    let letters = wait_for_dead_letters(&stack, 1, "the poison to be dead-lettered").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["step"], "parse");
    assert_eq!(letters[0]["event_id"], "poison-5a");
    assert!(letters[0]["event"]
        .as_str()
        .is_some_and(|e| e.contains("this is not JSON")));
    let replies = follow_up(&stack, author, "still there?", 2).await;
    wait::until(WAIT, "the events stream to drain", || async {
        let info = js
            .get_stream(EVENTS_STREAM)
            .await
            .ok()?
            .get_info()
            .await
            .ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await;
    eprintln!(
        "RELIABILITY poison-not-json: dead_letters={} step=parse replies_same_partition={} duplicates=0 lost=0 partition={partition}",
        letters.len(),
        replies.len()
    );
    assert_eq!(replies, ["You said: hello", "You said: still there?"]);
}

/// A ~1 MB event whose `/respond` is refused: its dead letter would not fit in one NATS
/// message, so it is written truncated (and cannot be replayed), and the same customer's next
/// message is answered.
///
/// Through the ingress a JSON event is at most `max_payload - 4096` bytes and its letter's
/// other fields take less than that room, so the letter always fits; the event is therefore
/// stored directly, as large as the server takes (what an ingress whose limit was computed for
/// a larger `max_payload` than the server's current one could have stored).
#[tokio::test]
async fn an_oversized_dead_letter_is_truncated_and_the_customer_moves_on() {
    let author = "eo-5b";
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    let js = jetstream(&stack.nats).await;
    let max_payload = js.client().server_info().max_payload;
    let padding = max_payload - message_event(author, "").len() - 512;
    let body = message_event(author, &"x".repeat(padding));
    let partition = ConversationKey {
        network: "brandmessenger",
        external_id: "bm-web-01",
        author_id: author,
    }
    .partition(4);
    stack
        .kore
        .script(&kore_user(author), [Turn::text("Noted.")]);
    stack
        .khoros
        .add_fault(Fault::status("respond", 400).times(1))
        .expect("fault");
    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert(headers::MSG_ID, "big-5b");
    js.publish_with_headers(
        format!("{EVENTS_PREFIX}.message.{partition}"),
        nats_headers,
        body.clone().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let letters = wait_for_dead_letters(&stack, 1, "the big event's dead letter").await;
    let letter = &letters[0];
    assert_eq!(letter["step"], "respond");
    assert_eq!(letter["status"], "400");
    assert_eq!(letter["truncated"], true, "{}", letter["error"]);
    let kept = letter["event"].as_str().map(str::len).unwrap_or_default();
    let replies = follow_up(&stack, author, "is anyone there?", 1).await;
    assert_eq!(replies, ["You said: is anyone there?"]);
    // A truncated letter is refused by the replay rather than replayed half.
    let (ok, output) = dlq_replay_all(&stack).await;
    eprintln!(
        "RELIABILITY oversized-dead-letter: event_bytes={} max_payload={max_payload} truncated=true event_kept_bytes={kept} \
         next_message_answered=1 duplicates=0 replay_refused={}",
        body.len(),
        !ok
    );
    assert!(!ok, "a truncated letter must not be replayed: {output}");
    assert_eq!(dead_letters(&stack).await.len(), 1, "the letter stays");
    assert_eq!(texts(&stack, author), ["You said: is anyone there?"]);
}

// --- 6. Kore.ai async mode ---

/// A stack in async mode; kore-sim delivers to the ingress' `/kore/callback` when
/// `deliver` is set, else to a port where nothing listens.
async fn async_stack(worker_extra: &[(&str, &str)], deliver: bool) -> Stack {
    let mut kore = KoreSimConfig::default();
    kore.channel = ChannelConfig {
        mode: Mode::Async,
        access_token: Some(shared::Secret::new(CALLBACK_TOKEN)),
        post_url: Some("http://127.0.0.1:9/unset".into()),
        ..kore.channel.clone()
    };
    let mut extra = vec![("KORE_MODE", "async")];
    extra.extend_from_slice(worker_extra);
    let stack = Stack::start(&extra, &[("KORE_CALLBACK_TOKEN", CALLBACK_TOKEN)], kore).await;
    if deliver {
        let patch = ConfigPatch {
            post_url: Some(format!("{}/kore/callback", stack.ingress.base)),
            ..Default::default()
        };
        stack.kore.update_config(&patch).expect("post url");
    }
    stack
}

async fn post_callback(stack: &Stack, body: &Value) -> (u16, String) {
    let response = stack
        .ingress
        .http
        .post(format!("{}/kore/callback", stack.ingress.base))
        .bearer_auth(CALLBACK_TOKEN)
        .json(body)
        .send()
        .await
        .expect("post callback");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// The message deliveries kore-sim made to `user` that the callback accepted.
fn accepted_deliveries(stack: &Stack, user: &str) -> Vec<Value> {
    stack
        .kore
        .deliveries()
        .into_iter()
        .filter(|d| d.user_id == user && d.status == Some(200))
        .filter(|d| d.kind == kore_sim::inspect::DeliveryKind::Message)
        .map(|d| d.body)
        .collect()
}

/// The same Kore.ai delivery posted twice more to the callback: stored once, shown once.
#[tokio::test]
async fn async_delivery_posted_twice_reaches_the_customer_once() {
    let author = "eo-6a";
    let user = kore_user(author);
    let stack = async_stack(&[], true).await;
    stack.kore.script(
        &user,
        [
            Turn::text("Your order shipped."),
            Turn::text("You're welcome."),
        ],
    );
    stack
        .khoros
        .send_text(author, "where is it?")
        .expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["Your order shipped."]);
    let delivered = accepted_deliveries(&stack, &user);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(post_callback(&stack, &delivered[0]).await);
    }
    for (status, text) in &answers {
        assert_eq!(*status, 200, "a duplicate is answered 200: {text}");
    }
    // The next delivery for this user shares the duplicates' lane: once it is shown, a stored
    // duplicate would have been too.
    let replies = follow_up(&stack, author, "thanks", 2).await;
    assert_eq!(replies, ["Your order shipped.", "You're welcome."]);
    eprintln!(
        "RELIABILITY async-duplicate-delivery: posted=3 (1 by kore-sim + 2 again) answers={answers:?} \
         customer_copies=1 duplicates={} lost=0",
        replies.len() - 2
    );
    assert_eq!(texts(&stack, author).len(), 2);
}

/// A delivery for a user with no turn outstanding (never had one, or its turn ended) is
/// refused with 403 and nothing reaches the customer.
#[tokio::test]
async fn async_delivery_without_a_turn_is_refused() {
    let author = "eo-6b";
    let user = kore_user(author);
    let stack = async_stack(&[("KORE_ASYNC_DEADLINE", "1s")], true).await;
    stack.kore.script(&user, [Turn::text("Hello there.")]);
    stack.khoros.send_text(author, "hi").expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["Hello there."]);
    let genuine = accepted_deliveries(&stack, &user)
        .pop()
        .expect("a delivery");
    // A user that never had a turn.
    let mut stranger = genuine.clone();
    stranger["to"] = json!(kore_user("eo-6b-nobody"));
    let (stranger_status, _) = post_callback(&stack, &stranger).await;
    // The genuine user once its turn ended (the deadline marker closes it).
    let js = jetstream(&stack.nats).await;
    let kv = js
        .get_key_value(shared::topology::buckets::CONVERSATIONS)
        .await
        .expect("conversations bucket");
    let key = shared::contract::keys::turn(&user).expect("turn key");
    wait::until(WAIT, "the turn to end at its deadline", || async {
        kv.get(&key).await.ok()?.is_none().then_some(())
    })
    .await;
    let forged = serde_json::from_str::<Value>(
        &genuine
            .to_string()
            .replace("Hello there.", "Send your card number."),
    )
    .expect("json");
    assert_ne!(forged, genuine, "the forged body differs");
    let (late_status, _) = post_callback(&stack, &forged).await;
    // Nothing to await: prove the absence over a short while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = texts(&stack, author);
    let stranger_shown = texts(&stack, "eo-6b-nobody");
    eprintln!(
        "RELIABILITY async-no-turn: stranger_status={stranger_status} ended_turn_status={late_status} \
         customer_messages={} stranger_messages={}",
        shown.len(),
        stranger_shown.len()
    );
    assert_eq!(stranger_status, 403);
    assert_eq!(late_status, 403);
    assert_eq!(shown, ["Hello there."]);
    assert!(stranger_shown.is_empty());
}

/// Deliveries never arrive (POST_URL is dead): at the turn's deadline the customer is handed
/// to an agent, and no bot text was sent.
#[tokio::test]
async fn async_deliveries_that_never_arrive_hand_the_customer_over() {
    let author = "eo-6c";
    let stack = async_stack(&[("KORE_ASYNC_DEADLINE", "2s")], false).await;
    let started = Instant::now();
    stack.khoros.send_text(author, "anyone?").expect("inject");
    let comment = wait_for_agent(&stack, author).await;
    let handed_after = started.elapsed();
    let failed = stack
        .kore
        .deliveries()
        .iter()
        .filter(|d| d.status != Some(200))
        .count();
    eprintln!(
        "RELIABILITY async-deadline: handed_off_after={handed_after:?} (deadline 2 s) bot_texts={} failed_deliveries={failed} comment={comment:?}",
        texts(&stack, author).len()
    );
    assert!(
        handed_after >= Duration::from_secs(2),
        "not before the deadline"
    );
    assert!(
        handed_after < Duration::from_secs(8),
        "within a few seconds"
    );
    assert_eq!(
        stack.khoros.owner(author).map(|o| o.kind),
        Some("AGENT".into())
    );
    assert!(texts(&stack, author).is_empty(), "no bot text");
    assert!(comment.unwrap_or_default().contains("did not answer"));
}

/// One async turn delivers the same text twice (two deliveries, distinct `createdOn`); the
/// second `/respond` gets a 503 before it takes effect. Both copies are the bot's words and
/// must be shown: the lost answer must not be resolved as "sent" on the strength of the first
/// copy's request-log record.
#[tokio::test]
async fn async_identical_texts_in_one_turn_survive_a_lost_answer() {
    let author = "eo-6d";
    let user = kore_user(author);
    let stack = async_stack(&[], true).await;
    stack.kore.script(
        &user,
        [Turn::text("One moment.")
            .then_pause(Duration::from_millis(300))
            .then_text("One moment.")],
    );
    // Oldest rule first: the first /respond passes, the second gets a 503 before it acts.
    stack
        .khoros
        .add_fault(Fault::latency("respond", Duration::from_millis(1)).times(1))
        .expect("fault");
    stack
        .khoros
        .add_fault(Fault::status("respond", 503).times(1))
        .expect("fault");
    stack.khoros.send_text(author, "status?").expect("inject");
    wait::until(WAIT, "both deliveries to be accepted", || async {
        (accepted_deliveries(&stack, &user).len() >= 2).then_some(())
    })
    .await;
    let deliveries = accepted_deliveries(&stack, &user);
    assert_ne!(deliveries[0], deliveries[1], "two distinct deliveries");
    let shown = stack
        .khoros
        .wait_for_messages(author, 2, Duration::from_secs(10))
        .await
        .map(|m| m.len())
        .unwrap_or_else(|_| texts(&stack, author).len());
    eprintln!(
        "RELIABILITY async-identical-texts: deliveries=2 shown={shown} lost={} respond_calls={}",
        2usize.saturating_sub(shown),
        respond_calls(&stack)
    );
    assert_eq!(texts(&stack, author), ["One moment.", "One moment."]);
}

// --- 7. Kore.ai sync timeouts and identities ---

/// Kore.ai slower than `KORE_TIMEOUT`: the turn is not sent again (the bot may still act on
/// it), and the customer is handed to an agent.
#[tokio::test]
async fn a_kore_call_that_times_out_is_sent_once_and_handed_over() {
    let author = "eo-7a";
    let stack = Stack::start(&[("KORE_TIMEOUT", "1s")], &[], KoreSimConfig::default()).await;
    stack.kore.set_latency(Duration::from_millis(2000));
    let started = Instant::now();
    stack.khoros.send_text(author, "slow bot?").expect("inject");
    let comment = wait_for_agent(&stack, author).await;
    let handed_after = started.elapsed();
    // kore-sim records a call when it completes (2 s after it arrived, client gone or not).
    let user = kore_user(author);
    wait::until(WAIT, "kore-sim to record the call", || async {
        (kore_calls(&stack, &user) >= 1).then_some(())
    })
    .await;
    // A resend would be recorded about 2 s after the first: give it that time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = kore_calls(&stack, &user);
    eprintln!(
        "RELIABILITY kore-timeout: kore_calls={calls} handed_off_after={handed_after:?} bot_texts={} comment={comment:?}",
        texts(&stack, author).len()
    );
    assert_eq!(calls, 1, "a timed-out turn is not resent");
    assert!(texts(&stack, author).is_empty());
    assert!(comment.unwrap_or_default().contains("could not answer"));
}

/// One author id on two networks and on two pages is three conversations: three Kore.ai
/// users, none of whose ids contains the author id.
#[tokio::test]
async fn one_author_on_two_networks_is_two_kore_users() {
    let author = "eo-7b-shared-id";
    let stack = Stack::start(&[], &[], KoreSimConfig::default()).await;
    let places = [
        AuthorRef {
            author_id: author.into(),
            network_key: None,
            external_id: None,
        },
        AuthorRef {
            author_id: author.into(),
            network_key: Some("facebook".into()),
            external_id: None,
        },
        AuthorRef {
            author_id: author.into(),
            network_key: None,
            external_id: Some("bm-web-02".into()),
        },
    ];
    for place in &places {
        stack
            .khoros
            .inject_message(&InboundMessage {
                network_key: place.network_key.clone(),
                external_id: place.external_id.clone(),
                ..InboundMessage::text(author, "hello")
            })
            .expect("inject");
    }
    for place in &places {
        let replies = stack
            .khoros
            .wait_for_messages(place.clone(), 1, WAIT)
            .await
            .expect("a reply on each conversation");
        assert_eq!(replies.len(), 1, "{place:?}");
    }
    let requests: Vec<_> = stack
        .kore
        .requests()
        .into_iter()
        .filter(|r| r.poll_id.is_none())
        .collect();
    let mut ids: Vec<String> = requests
        .iter()
        .map(|r| {
            r.body["from"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for r in &requests {
        assert!(
            !r.body.to_string().contains(author),
            "the author id reached Kore.ai: {}",
            r.body
        );
    }
    ids.sort();
    ids.dedup();
    eprintln!(
        "RELIABILITY identities: conversations=3 kore_calls={} distinct_from_ids={} author_id_leaked=0",
        requests.len(),
        ids.len()
    );
    assert_eq!(requests.len(), 3);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.iter().all(|id| !id.contains(author)));
    assert!(ids.contains(&kore_user(author)));
}

// --- 8. V2 polling ---

/// A turn with a slow step: the first part is shown at once, the rest when Kore.ai has it,
/// all in order, each once.
#[tokio::test]
async fn v2_polling_delivers_every_part_in_order() {
    let author = "eo-8a";
    let stack = Stack::start(
        &[("KORE_POLL_INTERVAL", "100ms")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    stack.kore.script(
        &kore_user(author),
        [Turn::text("First part.")
            .then_pause(Duration::from_millis(1500))
            .then_text("Second part.")
            .then_text("Third part.")],
    );
    let started = Instant::now();
    stack.khoros.send_text(author, "tell me").expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["First part."]);
    let first_at = started.elapsed();
    let replies = stack.replies(author, 3).await;
    let rest_at = started.elapsed();
    assert_eq!(replies, ["First part.", "Second part.", "Third part."]);
    let replies = follow_up(&stack, author, "ok", 4).await;
    let polls = stack
        .kore
        .requests()
        .iter()
        .filter(|r| r.poll_id.is_some())
        .count();
    eprintln!(
        "RELIABILITY v2-polling: replies={} duplicates={} lost=0 first_part_after={first_at:?} rest_after={rest_at:?} polls={polls}",
        replies.len(),
        replies.len() - 4
    );
    assert_eq!(
        replies,
        ["First part.", "Second part.", "Third part.", "You said: ok"]
    );
    assert!(
        rest_at - first_at >= Duration::from_millis(1000),
        "the first part did not wait for the slow step"
    );
    assert!(polls >= 1);
}

/// The slow step outlasts `KORE_POLL_TIMEOUT`: the first part is shown, then an agent takes
/// over; the rest is never shown.
#[tokio::test]
async fn v2_polling_past_the_poll_timeout_hands_over_after_the_first_part() {
    let author = "eo-8b";
    let stack = Stack::start(
        &[("KORE_POLL_INTERVAL", "100ms"), ("KORE_POLL_TIMEOUT", "1s")],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    stack.kore.script(
        &kore_user(author),
        [Turn::text("First part.")
            .then_pause(Duration::from_secs(3))
            .then_text("Too late.")],
    );
    let started = Instant::now();
    stack.khoros.send_text(author, "tell me").expect("inject");
    assert_eq!(stack.replies(author, 1).await, ["First part."]);
    let comment = wait_for_agent(&stack, author).await;
    let handed_after = started.elapsed();
    // The rest would come 3 s after the first part; prove it is not shown meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = texts(&stack, author);
    eprintln!(
        "RELIABILITY v2-poll-timeout: shown={shown:?} handed_off_after={handed_after:?} (poll timeout 1 s, pause 3 s) comment={comment:?}"
    );
    assert_eq!(shown, ["First part."]);
    assert_eq!(
        stack.khoros.owner(author).map(|o| o.kind),
        Some("AGENT".into())
    );
    assert!(comment.unwrap_or_default().contains("did not finish"));
}
