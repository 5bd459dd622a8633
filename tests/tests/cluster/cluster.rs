//! The pipeline on a three-node JetStream cluster (`testkit::nats_cluster`) with
//! `JS_REPLICAS=3`, as production runs it: nodes are SIGKILLed, restarted and cut off while
//! conversations stream in. Each test prints a `CLUSTER` line with its figures (run with
//! `--nocapture`).
//!
//! Only NATS nodes fail here; the ingress, the workers and the schedulers run in this process
//! (as in the other end-to-end tests) and are never restarted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use khoros_sim::{Fault, KhorosSim, KhorosSimConfig, TokenState};
use kore_sim::{KoreSim, KoreSimConfig};
use scheduler::records::AttemptStatus;
use shared::auth::{Clock, ManualClock};
use shared::config::Env;
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::topology::{buckets, Topology, TopologyConfig, EVENTS_STREAM};
use testkit::nats_cluster::{NatsCluster, NODES};
use testkit::wait;

use crate::helpers::{
    khoros_for, message_event, scheduler_vars, with_overrides, worker_vars_at, TestIngress,
    TestWorker, TEST_TOKEN,
};
use crate::stack::TestScheduler;

/// Bound on the cluster settling (a restarted node catching up, a leader elected).
const SETTLE: Duration = Duration::from_secs(60);

/// One three-node cluster at a time: two of them (six servers, each test's services) on a
/// two-core machine stretch elections past what the tests measure.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_secs(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A scheduler `App` on `vars`, run in a task, with the given clock.
async fn start_scheduler(
    vars: Vec<(String, String)>,
    clock: Arc<dyn Clock>,
) -> (TestScheduler, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let config = scheduler::SchedulerConfig::from_env_with_clock(&Env::from_pairs(vars), clock)
        .expect("valid scheduler config");
    let (scheduler, task) = TestScheduler::start(config).await;
    crate::helpers::wait_ready(&scheduler.base, "scheduler /readyz to answer 200").await;
    (scheduler, task)
}

/// One webhook request of the load: when it was sent, what the ingress answered, when.
#[derive(Clone, Debug)]
struct Sent {
    conversation: usize,
    index: usize,
    sent_at: Instant,
    done_at: Instant,
    /// 0: no answer (timeout or connection error).
    status: u16,
    request_id: String,
    /// Why there was no answer.
    error: Option<String>,
}

fn author(conversation: usize) -> String {
    format!("cl-{conversation}")
}

fn text(conversation: usize, index: usize) -> String {
    format!("c{conversation}-m{index}")
}

/// A steady stream of messages: `conversations` customers, each writing one message every
/// `conversations / rate` seconds and waiting for the ingress' answer before the next (as
/// Khoros delivers one conversation's events in order). Runs until `stop`.
fn start_load(
    ingress: Arc<TestIngress>,
    rate: f64,
    conversations: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sent>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let period = Duration::from_secs_f64(conversations as f64 / rate);
    let http = reqwest::Client::builder()
        // Khoros' delivery timeout (about 10 s, docs/vendors/khoros-webhooks.md).
        .timeout(Duration::from_secs(10))
        // Shorter than the ingress' keep-alive (`HEADER_READ_TIMEOUT`, 10 s), as a client's
        // should be: a connection reused just as the server closes it is reset.
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(conversations)
        .build()
        .expect("http client");
    let started = tokio::time::Instant::now();
    let tasks = (0..conversations)
        .map(|c| {
            let (ingress, stop, log, http) =
                (ingress.clone(), stop.clone(), log.clone(), http.clone());
            tokio::spawn(async move {
                let offset = period.mul_f64(c as f64 / conversations as f64);
                let mut next = started + offset;
                let mut index = 0;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    let body = message_event(&author(c), &text(c, index));
                    let request_id = uuid::Uuid::new_v4().to_string();
                    let sent_at = Instant::now();
                    let (status, error) = match ingress
                        .signer
                        .request(&http, body.as_bytes(), Some(&request_id))
                        .send()
                        .await
                    {
                        Ok(r) => (r.status().as_u16(), None),
                        Err(e) => (0, Some(format!("{e:?}"))),
                    };
                    log.lock().unwrap().push(Sent {
                        conversation: c,
                        index,
                        sent_at,
                        done_at: Instant::now(),
                        status,
                        request_id,
                        error,
                    });
                    index += 1;
                    next = (next + period).max(tokio::time::Instant::now());
                }
            })
        })
        .collect();
    (log, tasks)
}

/// Windows of refusals: maximal runs of non-202 answers in send order, each from its first
/// refusal's answer to its last's, as (start, end, count): how long the ingress kept refusing.
fn refusal_windows(sent: &[Sent]) -> Vec<(Instant, Instant, usize)> {
    let mut sorted: Vec<&Sent> = sent.iter().collect();
    sorted.sort_by_key(|s| s.sent_at);
    let mut windows = Vec::new();
    let mut current: Option<(Instant, Instant, usize)> = None;
    for s in sorted {
        if s.status == 202 {
            if let Some(w) = current.take() {
                windows.push(w);
            }
        } else {
            current = Some(match current {
                Some((start, end, n)) => (start.min(s.done_at), end.max(s.done_at), n + 1),
                None => (s.done_at, s.done_at, 1),
            });
        }
    }
    windows.extend(current);
    windows
}

/// Loss, duplicates and order of the replies at khoros-sim against what was sent.
#[derive(Debug, Default)]
struct Audit {
    accepted: usize,
    answered: usize,
    lost: usize,
    duplicates: usize,
    out_of_order: usize,
    /// Replies to events the ingress answered 503 to (stored after all; Khoros would retry).
    refused_but_answered: usize,
    /// Per conversation with a reply out of order: the replies and what was accepted.
    out_of_order_detail: Vec<String>,
}

fn audit(khoros: &KhorosSim, sent: &[Sent], conversations: usize) -> Audit {
    let mut by_conversation: HashMap<usize, Vec<&Sent>> = HashMap::new();
    for s in sent {
        by_conversation.entry(s.conversation).or_default().push(s);
    }
    let mut a = Audit::default();
    for c in 0..conversations {
        let replies: Vec<usize> = khoros
            .messages(author(c).as_str())
            .iter()
            .filter_map(|m| {
                let t = m["text"].as_str()?.strip_prefix("You said: ")?;
                t.strip_prefix(&format!("c{c}-m"))?.parse().ok()
            })
            .collect();
        let mut last = None;
        for &i in &replies {
            if last.is_some_and(|l| i <= l) {
                if replies.iter().filter(|&&r| r == i).count() == 1 {
                    a.out_of_order += 1;
                    let accepted: Vec<(usize, &str)> = sent
                        .iter()
                        .filter(|s| s.conversation == c && s.status == 202)
                        .map(|s| (s.index, &s.request_id[..8]))
                        .collect();
                    a.out_of_order_detail.push(format!(
                        "c{c}: replies {replies:?}; accepted (index, request id) {accepted:?}"
                    ));
                }
            } else {
                last = Some(i);
            }
        }
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for &i in &replies {
            *counts.entry(i).or_default() += 1;
        }
        for s in by_conversation.get(&c).into_iter().flatten() {
            let n = counts.get(&s.index).copied().unwrap_or(0);
            a.duplicates += n.saturating_sub(1);
            if s.status == 202 {
                a.accepted += 1;
                if n == 0 {
                    a.lost += 1;
                } else {
                    a.answered += 1;
                }
            } else if n > 0 {
                a.refused_but_answered += 1;
            }
        }
    }
    a
}

/// What one fault did.
#[derive(Debug)]
struct FaultFigures {
    what: String,
    /// When the node was killed, from the start of the load.
    at: Duration,
    node: String,
    /// SIGKILL until `JetStream` names a new leader of the stream concerned.
    election: Duration,
    /// Restart until every replica is current again.
    rejoin: Duration,
    refused: usize,
    longest_window: Duration,
    /// The longest an accepted event waited for its 202 (the ingress holds a webhook while
    /// the stream elects a leader, `STORE_DEADLINE`).
    longest_hold: Duration,
}

/// The node to kill for `what`: the leader of `stream`, or (for `None`) a node leading
/// neither the events stream nor the conversations and partitions buckets, else any
/// non-leader of the events stream.
async fn pick(cluster: &NatsCluster, stream: Option<&str>) -> usize {
    if let Some(stream) = stream {
        return cluster
            .wait_leader_of(stream, SETTLE)
            .await
            .expect("a leader");
    }
    let mut leaders = Vec::new();
    for s in [
        EVENTS_STREAM.to_string(),
        format!("KV_{}", buckets::PARTITIONS),
        format!("KV_{}", buckets::CONVERSATIONS),
    ] {
        leaders.push(cluster.wait_leader_of(&s, SETTLE).await.expect("a leader"));
    }
    (0..NODES)
        .find(|n| !leaders.contains(n))
        .unwrap_or_else(|| (0..NODES).find(|&n| n != leaders[0]).expect("a follower"))
}

/// Under a steady stream of messages with a 200 ms bot, the node leading `KHOROS_EVENTS` is
/// SIGKILLed and restarted, then the node leading the partitions bucket, then a follower.
/// Every event the ingress answered 202 is answered once, in order; the ingress holds webhooks
/// while a leader is being elected (`STORE_DEADLINE`) and refuses (503, never anything else)
/// for at most 5 s in a row, only what an election outlasts (nothing before the first fault);
/// the workers' consumers and the scheduler's lease recover with no service restarted, and a
/// rotation afterwards works.
///
/// Default: 60 messages/s for a short run; `BRIDGE_CLUSTER_RATE=200` and
/// `BRIDGE_CLUSTER_SECONDS` (steady load between faults, default 3) for the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_the_loss_of_any_node() {
    let _one = ONE_CLUSTER.lock().await;
    let rate = env_secs("BRIDGE_CLUSTER_RATE", 60.0);
    let steady = Duration::from_secs_f64(env_secs("BRIDGE_CLUSTER_SECONDS", 3.0));
    let conversations = (rate as usize).max(1);
    let mut cluster = NatsCluster::start().await;
    let url = cluster.client_url();
    let topology = [("JS_REPLICAS", "3"), ("PARTITIONS", "16")];
    let mut ingress_vars = topology.to_vec();
    // The production defaults: attempts of 2 s, retried through an election for 8 s.
    ingress_vars.extend([("PUBLISH_TIMEOUT", "2s"), ("STORE_DEADLINE", "8s")]);
    let ingress = TestIngress::start_at(&url, &ingress_vars).await;
    let khoros = khoros_for(&ingress).await;
    let kore = KoreSim::start(KoreSimConfig::default())
        .await
        .expect("start kore-sim");
    kore.set_latency(Duration::from_millis(200));
    let scheduler_vars = with_overrides(
        vec![
            ("NATS_URL".into(), url.clone()),
            ("KHOROS_API_URL".into(), khoros.base_url()),
            ("KHOROS_APP_ID".into(), "kore-bridge".into()),
            ("KHOROS_TOKEN".into(), TEST_TOKEN.into()),
            ("SHUTDOWN_TIMEOUT".into(), "2s".into()),
            ("LEASE_TTL".into(), "5s".into()),
        ],
        &topology,
    );
    let (scheduler, _scheduler_task) =
        start_scheduler(scheduler_vars, Arc::new(shared::auth::SystemClock)).await;
    let mut worker_extra = topology.to_vec();
    worker_extra.extend([("ACK_WAIT", "5s"), ("MEMBER_TIMEOUT", "3s")]);
    let worker_env = Env::from_pairs(worker_vars_at(
        &url,
        &khoros.base_url(),
        &kore.base_url(),
        &worker_extra,
    ));
    let workers = vec![
        TestWorker::start(&worker_env).await,
        TestWorker::start(&worker_env).await,
    ];
    wait::until(SETTLE, "the scheduler to hold the lease", || async {
        scheduler.status.is_leader().then_some(())
    })
    .await;
    cluster.wait_healthy(SETTLE).await.expect("healthy cluster");

    let ingress = Arc::new(ingress);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (log, load) = start_load(ingress.clone(), rate, conversations, stop.clone());
    tokio::time::sleep(steady).await; // steady load before the first fault

    let mut faults = Vec::new();
    let kv_stream = format!("KV_{}", buckets::PARTITIONS);
    for (what, stream) in [
        ("events leader", Some(EVENTS_STREAM)),
        ("KV leader", Some(kv_stream.as_str())),
        ("follower", None),
    ] {
        let victim = pick(&cluster, stream).await;
        let watched = stream.unwrap_or(EVENTS_STREAM);
        let from = Instant::now();
        cluster.kill(victim);
        let new_leader = cluster
            .wait_leader_of(watched, SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let election = from.elapsed();
        assert!(
            stream.is_none() || new_leader != victim,
            "a new leader of {watched}"
        );
        tokio::time::sleep(steady).await; // the load goes on with a node down
        let restarted = Instant::now();
        cluster.restart(victim);
        cluster
            .wait_healthy(SETTLE)
            .await
            .unwrap_or_else(|e| panic!("after restarting {}: {e}", cluster.name(victim)));
        let rejoin = restarted.elapsed();
        tokio::time::sleep(steady).await; // and on with the node back
        let sent = log.lock().unwrap().clone();
        // Answered after the kill: one in flight at the kill is held through the election too.
        let in_fault: Vec<Sent> = sent.into_iter().filter(|s| s.done_at >= from).collect();
        let windows = refusal_windows(&in_fault);
        faults.push(FaultFigures {
            what: what.into(),
            at: from - started,
            node: cluster.name(victim).into(),
            election,
            rejoin,
            refused: in_fault.iter().filter(|s| s.status != 202).count(),
            longest_hold: in_fault
                .iter()
                .filter(|s| s.status == 202)
                .map(|s| s.done_at - s.sent_at)
                .max()
                .unwrap_or_default(),
            longest_window: windows
                .iter()
                .map(|(s, e, _)| *e - *s)
                .max()
                .unwrap_or_default(),
        });
    }

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let load_s = started.elapsed();
    let sent = log.lock().unwrap().clone();
    let statuses: Vec<u16> = sent.iter().map(|s| s.status).collect();
    // 0: no answer within the client's 10 s (an overloaded machine); Khoros retries those too.
    let timeouts = statuses.iter().filter(|&&s| s == 0).count();
    let other: Vec<u16> = statuses
        .iter()
        .copied()
        .filter(|s| !matches!(s, 0 | 202 | 503))
        .collect();
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    // On a healthy cluster, before the first fault, nothing is elected: nothing may be refused.
    let first_fault = faults
        .first()
        .map(|f: &FaultFigures| f.at)
        .unwrap_or(load_s);
    let refused_before_faults = sent
        .iter()
        .filter(|s| s.status == 503 && s.done_at - started < first_fault)
        .count();

    // Every accepted event answered; then the replies stop changing (late duplicates show).
    let drain_from = Instant::now();
    let total_replies = || {
        (0..conversations)
            .map(|c| khoros.messages(author(c).as_str()).len())
            .sum::<usize>()
    };
    // Bounded; on timeout the figures and the unanswered events are printed, then it fails.
    let drained = tokio::time::timeout(Duration::from_secs(90), async {
        while audit(&khoros, &sent, conversations).lost > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .is_ok();
    let drain = drain_from.elapsed();
    if !drained {
        let a = audit(&khoros, &sent, conversations);
        eprintln!(
            "CLUSTER failover (NOT DRAINED after {drain:?}): rate={rate}/s sent={} {a:?} faults={faults:?}",
            sent.len()
        );
        let replies: Vec<Vec<serde_json::Value>> = (0..conversations)
            .map(|c| khoros.messages(author(c).as_str()))
            .collect();
        let unanswered = sent.iter().filter(|s| {
            let text = format!("You said: {}", text(s.conversation, s.index));
            s.status == 202
                && !replies[s.conversation]
                    .iter()
                    .any(|m| m["text"].as_str() == Some(text.as_str()))
        });
        for s in unanswered.take(40) {
            eprintln!(
                "CLUSTER unanswered c{}-m{} request id {} sent {:.2}s into the load, answered 202 after {:.2}s",
                s.conversation,
                s.index,
                s.request_id,
                (s.sent_at - started).as_secs_f64(),
                (s.done_at - s.sent_at).as_secs_f64()
            );
        }
        panic!("accepted events unanswered 90 s after the load: {a:?}");
    }
    let last = Mutex::new((total_replies(), Instant::now()));
    wait::until(Duration::from_secs(30), "the replies to settle", || async {
        let now = total_replies();
        let mut last = last.lock().unwrap();
        if now != last.0 {
            *last = (now, Instant::now());
        }
        (last.1.elapsed() >= Duration::from_secs(2)).then_some(())
    })
    .await;
    let a = audit(&khoros, &sent, conversations);

    // Recovery without restarts: the lease is held, a rotation goes through, and new events
    // (on every partition) are answered with the rotated token.
    let recovery_from = Instant::now();
    wait::until(SETTLE, "the scheduler to hold the lease again", || async {
        scheduler.status.is_leader().then_some(())
    })
    .await;
    let report = scheduler::commands::rotate_now(&scheduler.config)
        .await
        .expect("rotate-now after the faults");
    assert_eq!(report.status, AttemptStatus::Success, "{report:?}");
    let probes: Vec<String> = (0..32).map(|i| format!("cl-probe-{i}")).collect();
    for p in &probes {
        let (status, body) = ingress.send(&message_event(p, "after"), None).await;
        assert_eq!(status, 202, "{body}");
    }
    wait::until(
        Duration::from_secs(30),
        "events after the faults to be answered",
        || async {
            probes
                .iter()
                .all(|p| khoros.messages(p.as_str()).len() == 1)
                .then_some(())
        },
    )
    .await;
    let recovery = recovery_from.elapsed();
    let rotated = khoros
        .tokens()
        .iter()
        .filter(|t| !t.configured && t.state == TokenState::Active)
        .count();

    let longest = faults
        .iter()
        .map(|f| f.longest_window)
        .max()
        .unwrap_or_default();
    let per_fault: Vec<String> = faults
        .iter()
        .map(|f| {
            format!(
                "[{} {} at {:.1}s: election={:.2}s refused={} longest_503_window={:.2}s longest_202_wait={:.2}s rejoin={:.2}s]",
                f.what,
                f.node,
                f.at.as_secs_f64(),
                f.election.as_secs_f64(),
                f.refused,
                f.longest_window.as_secs_f64(),
                f.longest_hold.as_secs_f64(),
                f.rejoin.as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "CLUSTER failover: rate={rate}/s bot=200ms conversations={conversations} sent={} accepted={accepted} \
         answered={} lost={} duplicates={} out_of_order={} refused_but_answered={} client_timeouts={timeouts} \
         refused_before_faults={refused_before_faults} \
         longest_503_window={:.2}s {} drain={:.2}s recovery(lease+rotate-now+32 new events)={:.2}s \
         rotated_tokens={rotated} load={:.1}s",
        sent.len(),
        a.answered,
        a.lost,
        a.duplicates,
        a.out_of_order,
        a.refused_but_answered,
        longest.as_secs_f64(),
        per_fault.join(" "),
        drain.as_secs_f64(),
        recovery.as_secs_f64(),
        load_s.as_secs_f64(),
    );
    assert!(
        other.is_empty(),
        "the ingress answers 202 or 503, nothing else: {other:?}"
    );
    for s in sent.iter().filter(|s| s.status == 0) {
        eprintln!(
            "CLUSTER no answer: c{}-m{} sent {:.2}s into the load, after {:.2}s: {}",
            s.conversation,
            s.index,
            (s.sent_at - started).as_secs_f64(),
            (s.done_at - s.sent_at).as_secs_f64(),
            s.error.as_deref().unwrap_or("-")
        );
    }
    for detail in &a.out_of_order_detail {
        eprintln!("CLUSTER out of order {detail}");
    }
    assert_eq!((a.lost, a.duplicates, a.out_of_order), (0, 0, 0), "{a:?}");
    assert_eq!(
        refused_before_faults, 0,
        "503s on a healthy cluster, before any node was killed"
    );
    assert!(
        longest <= Duration::from_secs(5),
        "ingress refused for {longest:?} in a row (target: at most 5 s)"
    );
    assert!(rotated >= 1, "the rotation after the faults minted a token");
    for w in workers {
        w.stop().await;
    }
    scheduler.shutdown.cancel();
}

/// Start of sim time (2023-11-14) for the cut test.
const T0: i64 = 1_700_000_000_000;
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const WEEK_MS: i64 = 7 * 86_400_000;

/// A network cut of the node the lease holder talks to (SIGSTOP: its sockets stay open and
/// nothing answers) does not split the token lease: the other scheduler takes the lease once
/// it runs out and rotates, the cut one stops rotating, and after the cut heals every rotation
/// period still costs exactly one refresh call at khoros-sim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_does_not_split_the_token_lease() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = NatsCluster::start().await;
    let sim = KhorosSim::start(KhorosSimConfig {
        clock_start_ms: Some(T0),
        clock_speed: 0.0,
        ..KhorosSimConfig::default().with_token("khoros-sim-token")
    })
    .await
    .expect("start khoros-sim");
    // Every refresh call takes 200 ms (a wider window for two to overlap) and is counted.
    let calls = sim
        .add_fault(Fault::latency("tokens", Duration::from_millis(200)))
        .expect("latency fault");
    let clock = ManualClock::at(T0);
    let base = |node: usize| -> Vec<(String, String)> {
        let mut vars = scheduler_vars(
            &cluster.node_url(node),
            &sim.base_url(),
            "kore-bridge",
            "khoros-sim-token",
            T0 + 90 * 86_400_000,
        );
        vars.extend([
            ("JS_REPLICAS".to_string(), "3".to_string()),
            ("SCHEDULER_ID".to_string(), format!("s{node}")),
        ]);
        vars
    };
    Topology::new(TopologyConfig::from_env(&Env::from_pairs(base(0))).unwrap())
        .ensure(&cluster.jetstream().await.expect("a client"))
        .await
        .expect("R3 topology");
    // The first scheduler talks only to the node leading the leases bucket (so the cut takes
    // the lease's leader away too), the second only to another node, the observer only to
    // the third: the cut one is never asked.
    let cut = cluster
        .wait_leader_of(&format!("KV_{}", buckets::LEASES), SETTLE)
        .await
        .expect("a leader of the leases bucket");
    let nodes = [cut, (cut + 1) % NODES];
    let observer = async_nats::jetstream::new(
        async_nats::connect(cluster.node_url((cut + 2) % NODES))
            .await
            .expect("connect"),
    );
    let tokens = observer
        .get_key_value(buckets::TOKENS)
        .await
        .expect("tokens bucket");
    let mut schedulers = vec![start_scheduler(base(nodes[0]), Arc::new(clock.clone())).await];
    wait::until(SETTLE, "the first scheduler to hold the lease", || async {
        schedulers[0].0.status.is_leader().then_some(())
    })
    .await;
    schedulers.push(start_scheduler(base(nodes[1]), Arc::new(clock.clone())).await);
    let holder = 0;
    let other = 1 - holder;
    let refreshes = || sim.tokens().iter().filter(|t| !t.configured).count();
    let applied = || {
        sim.faults()
            .iter()
            .find(|f| f.id == calls)
            .map_or(0, |f| f.applied as usize)
    };
    let rotated_to = |period: i64| {
        let tokens = tokens.clone();
        async move {
            let entry = tokens.get(TOKEN_KEY).await.ok()??;
            let record: TokenRecord = serde_json::from_slice(&entry).ok()?;
            (record.rotated_at_ms == T0 + period * WEEK_MS).then_some(record)
        }
    };
    let advance = |by: Duration| {
        let now = clock.now_ms() + by.as_millis() as i64;
        clock.set(now);
        sim.set_clock_ms(now);
    };
    let run_checks = |i: usize, n: u64| {
        let status = schedulers[i].0.status.clone();
        async move {
            let target = status.checks_completed() + n;
            wait::until(SETTLE, "the rotation loop to run more checks", || async {
                (status.checks_completed() >= target).then_some(())
            })
            .await;
        }
    };

    // Period 1, everything connected.
    advance(WEEK);
    wait::until(SETTLE, "the first rotation", || rotated_to(1)).await;

    // The cut: the holder's node stops answering.
    let cut_at = Instant::now();
    cluster.pause(cut);
    wait::until(
        SETTLE,
        "the cut holder to stop counting itself leader",
        || async { (!schedulers[holder].0.status.is_leader()).then_some(()) },
    )
    .await;
    let holder_gave_up = cut_at.elapsed();
    wait::until(SETTLE, "the other scheduler to take the lease", || async {
        schedulers[other].0.status.is_leader().then_some(())
    })
    .await;
    let takeover = cut_at.elapsed();
    // Period 2 during the cut: rotated by the other one.
    advance(WEEK);
    // The tokens bucket may have to elect a leader first, after the lease bucket did: on a
    // loaded two-core machine both elections together have taken over a minute.
    wait::until(2 * SETTLE, "the rotation during the cut", || rotated_to(2)).await;
    run_checks(other, 10).await;
    // The cut lasts 5 s at least (five lease lives), the time for its peers to elect other
    // leaders, whatever the rotation took.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed())).await;
    run_checks(other, 10).await;
    let cut_for = cut_at.elapsed();
    let during_cut = refreshes();

    // The cut heals.
    cluster.resume(cut);
    cluster.wait_healthy(SETTLE).await.expect("healthy again");
    run_checks(holder, 10).await;
    run_checks(other, 10).await;
    // Period 3 after the cut.
    advance(WEEK);
    wait::until(SETTLE, "the rotation after the cut", || rotated_to(3)).await;
    run_checks(holder, 10).await;
    run_checks(other, 10).await;
    let stored = rotated_to(3).await.expect("the last rotation").token;
    let accepted: Vec<String> = sim
        .tokens()
        .into_iter()
        .filter(|t| t.state == TokenState::Active)
        .map(|t| t.token)
        .collect();
    eprintln!(
        "CLUSTER cut: node {} (leases-bucket leader, lease holder s{}'s) SIGSTOPped for {:.2}s; holder gave up after {:.2}s, \
         s{} took the lease after {:.2}s; refresh calls: {} in 3 periods ({} by the end of the cut), \
         tokens minted {}, Khoros accepts the stored token only: {}",
        cluster.name(cut),
        nodes[holder],
        cut_for.as_secs_f64(),
        holder_gave_up.as_secs_f64(),
        nodes[other],
        takeover.as_secs_f64(),
        applied(),
        during_cut,
        refreshes(),
        accepted == vec![stored.clone()],
    );
    assert_eq!(during_cut, 2, "one refresh per period during the cut");
    assert_eq!(refreshes(), 3, "one refresh per period");
    assert_eq!(applied(), 3, "one refresh call per period, none refused");
    assert_eq!(accepted, vec![stored]);
    for (s, task) in schedulers {
        s.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
