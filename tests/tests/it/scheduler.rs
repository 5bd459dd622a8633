//! Scheduler tests: token rotation against the Khoros simulator and a real nats-server.
//!
//! Time is a `ManualClock` shared by the scheduler(s) and the simulator (frozen at speed 0
//! and moved together by [`Harness::advance`]), so "a week later" takes no real time. The
//! rotation loop wakes every 50 ms and the lease lives 1 s; "nothing happened" is asserted
//! after the loop has provably run several more checks, never after a sleep.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv::Store};
use khoros_sim::{Fault, KhorosSim, KhorosSimConfig, SettingsPatch, TokenState};
use scheduler::commands::{self, CommandError};
use scheduler::lease::{LeaseRecord, LEASE_KEY};
use scheduler::records::{AttemptStatus, Reason, RotationState, STATE_KEY};
use scheduler::service::Status;
use scheduler::SchedulerConfig;
use shared::auth::{Clock, ManualClock};
use shared::config::Env;
use shared::kv::{self, Versioned};
use shared::service::Listeners;
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::topology::{buckets, Topology, TopologyConfig, DEAD_LETTER_STREAM, EVENTS_STREAM};
use testkit::nats_server::NatsServer;
use testkit::wait;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Start of sim time (2023-11-14).
const T0: i64 = 1_700_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);
const DAY_MS: i64 = 86_400_000;
const APP_ID: &str = "kore-bridge";
const SEED: &str = "khoros-sim-token";
/// Generous bound for anything that should happen within a few loop ticks.
const SOON: Duration = Duration::from_secs(15);

/// Logs only when `TEST_LOG` is set.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        shared::telemetry::init_subscriber(shared::telemetry::get_subscriber(
            "info",
            std::io::stdout,
        ));
    }
});

/// One nats-server, one simulator, one clock, and the tokens bucket to look into.
struct Harness {
    nats: NatsServer,
    sim: KhorosSim,
    clock: ManualClock,
    tokens: Store,
    leases: Store,
}

/// Settings every scheduler of a test shares (the topology part must match the harness').
fn base_env(nats: &NatsServer, sim: &KhorosSim) -> Vec<(String, String)> {
    crate::helpers::scheduler_vars(&nats.url(), &sim.base_url(), APP_ID, SEED, T0 + 90 * DAY_MS)
}

fn env_with(vars: Vec<(String, String)>, extra: &[(&str, &str)]) -> Env {
    Env::from_pairs(crate::helpers::with_overrides(vars, extra))
}

impl Harness {
    async fn start() -> Self {
        LazyLock::force(&TRACING);
        let nats = NatsServer::start();
        let sim = KhorosSim::start(KhorosSimConfig {
            clock_start_ms: Some(T0),
            clock_speed: 0.0,
            ..KhorosSimConfig::default().with_token(SEED)
        })
        .await
        .expect("start khoros sim");
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        let topology = TopologyConfig::from_env(&env_with(base_env(&nats, &sim), &[])).unwrap();
        Topology::new(topology).ensure(&js).await.expect("topology");
        Self {
            tokens: js.get_key_value(buckets::TOKENS).await.unwrap(),
            leases: js.get_key_value(buckets::LEASES).await.unwrap(),
            clock: ManualClock::at(T0),
            nats,
            sim,
        }
    }

    fn config(&self, id: &str, extra: &[(&str, &str)]) -> SchedulerConfig {
        let mut extra = extra.to_vec();
        extra.push(("SCHEDULER_ID", id));
        let env = env_with(base_env(&self.nats, &self.sim), &extra);
        SchedulerConfig::from_env_with_clock(&env, Arc::new(self.clock.clone()))
            .expect("valid scheduler config")
    }

    async fn scheduler(&self, id: &str, extra: &[(&str, &str)]) -> TestScheduler {
        TestScheduler::start(self.config(id, extra)).await
    }

    /// Moves the scheduler's and the simulator's clocks together.
    fn advance(&self, by: Duration) {
        let now = self.clock.now_ms() + by.as_millis() as i64;
        self.clock.set(now);
        self.sim.set_clock_ms(now);
    }

    /// Token refreshes Khoros has answered (every minted token is one).
    fn refreshes(&self) -> usize {
        self.sim.tokens().iter().filter(|t| !t.configured).count()
    }

    /// The bearer tokens the simulator accepts right now.
    fn accepted_tokens(&self) -> Vec<String> {
        self.sim
            .tokens()
            .into_iter()
            .filter(|t| t.state == TokenState::Active)
            .map(|t| t.token)
            .collect()
    }

    async fn token(&self) -> Versioned<TokenRecord> {
        kv::read(&self.tokens, TOKEN_KEY)
            .await
            .unwrap()
            .expect("a token in KV")
    }

    async fn last_attempt(&self) -> Option<RotationState> {
        kv::read::<RotationState>(&self.tokens, STATE_KEY)
            .await
            .unwrap()
            .map(|v| v.value)
    }

    async fn lease(&self) -> Option<LeaseRecord> {
        kv::read::<LeaseRecord>(&self.leases, LEASE_KEY)
            .await
            .unwrap()
            .map(|v| v.value)
    }

    /// Waits until the stored token satisfies `check`.
    async fn wait_token(
        &self,
        what: &str,
        check: impl Fn(&Versioned<TokenRecord>) -> bool,
    ) -> Versioned<TokenRecord> {
        wait::until(SOON, what, || async {
            let token = kv::read::<TokenRecord>(&self.tokens, TOKEN_KEY)
                .await
                .ok()??;
            check(&token).then_some(token)
        })
        .await
    }

    /// Waits until the last attempt's record satisfies `check`.
    async fn wait_attempt(
        &self,
        what: &str,
        check: impl Fn(&RotationState) -> bool,
    ) -> RotationState {
        wait::until(SOON, what, || async {
            let state = self.last_attempt().await?;
            check(&state).then_some(state)
        })
        .await
    }
}

/// A scheduler `App` on port 0, run in a task.
struct TestScheduler {
    id: String,
    base: String,
    status: Status,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestScheduler {
    async fn start(config: SchedulerConfig) -> Self {
        let id = config.scheduler_id.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = scheduler::App::build_with(
            config,
            Listeners {
                main: listener,
                metrics: None,
            },
        )
        .await
        .expect("build scheduler");
        let base = format!("http://127.0.0.1:{}", app.port());
        let status = app.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let scheduler = Self {
            id,
            base,
            status,
            shutdown,
            task: Some(task),
        };
        let url = format!("{}/readyz", scheduler.base);
        wait::until(SOON, "scheduler /readyz to answer 200", || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        scheduler
    }

    /// Waits until the rotation loop has run `n` more checks.
    async fn run_checks(&self, n: u64) {
        let target = self.status.checks_completed() + n;
        wait::until(SOON, "the rotation loop to run more checks", || async {
            (self.status.checks_completed() >= target).then_some(())
        })
        .await;
    }

    async fn wait_leader(&self) {
        let what = format!("{} to hold the lease", self.id);
        wait::until(SOON, &what, || async {
            self.status.is_leader().then_some(())
        })
        .await;
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Stops cleanly: a rotation in flight finishes, the lease is released.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }

    /// Stops as a crash would: every task aborted, the lease left to expire.
    async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TestScheduler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of a counter or gauge line `name{labels} value` whose labels include `labels`.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The seed goes to KV once, is rotated exactly when it is a week old (not before), and the
/// new token is the one Khoros now accepts, with Khoros' expiry.
#[tokio::test]
async fn rotates_weekly_from_the_stored_rotation_time() {
    let h = Harness::start().await;
    let s = h.scheduler("a", &[]).await;
    let seed = h.token().await;
    assert_eq!(seed.value.source, "seed");
    assert_eq!(seed.value.token, SEED);
    assert_eq!(seed.value.rotated_at_ms, T0);
    assert_eq!(seed.value.expires_at_ms, T0 + 90 * DAY_MS);

    s.wait_leader().await;
    h.advance(7 * DAY - Duration::from_millis(1));
    s.run_checks(5).await;
    assert_eq!(h.refreshes(), 0, "no rotation before the week is over");
    assert_eq!(h.token().await.revision, seed.revision);

    h.advance(Duration::from_millis(1));
    let rotated = h
        .wait_token("the weekly rotation", |t| t.value.source == "rotation")
        .await;
    assert_eq!(h.refreshes(), 1);
    assert_eq!(rotated.value.rotated_at_ms, T0 + 7 * DAY_MS);
    assert_eq!(rotated.value.expires_at_ms, T0 + 97 * DAY_MS);
    assert_eq!(h.accepted_tokens(), vec![rotated.value.token.clone()]);
    let attempt = h.last_attempt().await.unwrap();
    assert_eq!(attempt.status, AttemptStatus::Success);
    assert_eq!(attempt.reason, Reason::Scheduled);
    assert_eq!(attempt.holder, "a");

    // The next week counts from the rotation, not from the seed.
    h.advance(6 * DAY);
    s.run_checks(5).await;
    assert_eq!(h.refreshes(), 1);
    h.advance(DAY);
    h.wait_token("the second weekly rotation", |t| {
        t.value.rotated_at_ms == T0 + 14 * DAY_MS
    })
    .await;
    assert_eq!(h.refreshes(), 2);
    s.stop().await;
}

/// A token that expires within `TOKEN_EXPIRY_MARGIN` is rotated early, long before its week.
#[tokio::test]
async fn rotates_early_when_expiry_is_near() {
    let h = Harness::start().await;
    let expires = (T0 + 3 * DAY_MS).to_string();
    let s = h
        .scheduler(
            "a",
            &[
                ("KHOROS_TOKEN_EXPIRES_AT_MS", &expires),
                ("TOKEN_EXPIRY_MARGIN", "2d"),
            ],
        )
        .await;
    s.wait_leader().await;
    h.advance(DAY - Duration::from_secs(1));
    s.run_checks(5).await;
    assert_eq!(h.refreshes(), 0, "still outside the margin");

    h.advance(Duration::from_secs(1));
    let rotated = h
        .wait_token("the early rotation", |t| t.value.source == "rotation")
        .await;
    assert_eq!(rotated.value.rotated_at_ms, T0 + DAY_MS);
    assert_eq!(h.last_attempt().await.unwrap().reason, Reason::ExpiringSoon);
    assert_eq!(h.refreshes(), 1);
    s.stop().await;
}

/// 503s from Khoros are retried with backoff within one attempt, which then succeeds.
#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let h = Harness::start().await;
    let s = h.scheduler("a", &[]).await;
    s.wait_leader().await;
    h.sim
        .add_fault(Fault::status("tokens", 503).times(2))
        .unwrap();
    h.advance(7 * DAY);
    let attempt = h
        .wait_attempt("a finished rotation", |a| {
            a.status != AttemptStatus::InProgress
        })
        .await;
    assert_eq!(attempt.status, AttemptStatus::Success, "{attempt:?}");
    assert_eq!(attempt.retries, 2);
    assert_eq!(h.refreshes(), 1);
    assert_eq!(h.token().await.value.source, "rotation");
    s.stop().await;
}

/// A 4xx is not retried: one call, the current token stays, the failure shows in the attempt
/// record and in `scheduler_rotations_total{result="client_error"}`, and the next try waits
/// for `TOKEN_RETRY_AFTER_FAILURE`.
#[tokio::test]
async fn client_errors_are_not_retried_and_keep_the_token() {
    let h = Harness::start().await;
    let s = h
        .scheduler("a", &[("TOKEN_RETRY_AFTER_FAILURE", "1h")])
        .await;
    s.wait_leader().await;
    let before = metric_value(
        &s.metrics().await,
        "scheduler_rotations_total",
        &[("result", "client_error")],
    )
    .unwrap_or(0.0);
    let fault = h.sim.add_fault(Fault::status("tokens", 400)).unwrap();
    h.advance(7 * DAY);
    let attempt = h
        .wait_attempt("a failed rotation", |a| {
            a.status != AttemptStatus::InProgress
        })
        .await;
    assert_eq!(attempt.status, AttemptStatus::ClientError, "{attempt:?}");
    assert_eq!(attempt.retries, 0);
    assert!(attempt.error.as_deref().unwrap_or("").contains("400"));
    let token = h.token().await;
    assert_eq!(token.value.token, SEED, "the current token is kept");
    let after = metric_value(
        &s.metrics().await,
        "scheduler_rotations_total",
        &[("result", "client_error")],
    )
    .expect("client errors are counted");
    assert!(after >= before + 1.0, "{before} -> {after}");

    // Not retried by the next checks either.
    s.run_checks(10).await;
    let applied = |h: &Harness| {
        h.sim
            .faults()
            .iter()
            .find(|f| f.id == fault)
            .map(|f| f.applied)
    };
    assert_eq!(applied(&h), Some(1), "exactly one refresh call");

    // Once the failure backoff is over (and the cause fixed), it rotates.
    h.sim.clear_faults();
    h.advance(Duration::from_secs(3600));
    h.wait_token("rotation after the backoff", |t| {
        t.value.source == "rotation"
    })
    .await;
    assert_eq!(h.refreshes(), 1);
    s.stop().await;
}

/// The schedule survives restarts: a scheduler started 3 days after a rotation does not
/// rotate; one started when the rotation is overdue rotates at once.
#[tokio::test]
async fn a_restarted_scheduler_neither_rotates_at_once_nor_forgets() {
    let h = Harness::start().await;
    let first = h.scheduler("first", &[]).await;
    first.wait_leader().await;
    h.advance(7 * DAY);
    let rotated = h
        .wait_token("the first rotation", |t| t.value.source == "rotation")
        .await;
    first.stop().await;

    h.advance(3 * DAY);
    let second = h.scheduler("second", &[]).await;
    second.wait_leader().await;
    second.run_checks(10).await;
    assert_eq!(
        h.refreshes(),
        1,
        "a restart does not rotate a 3-day-old token"
    );
    assert_eq!(h.token().await.revision, rotated.revision);
    // The configured seed does not overwrite the newer stored token either.
    assert_ne!(h.token().await.value.token, SEED);
    second.stop().await;

    // Down while the rotation fell due: the next start catches up at once.
    h.advance(5 * DAY);
    let third = h.scheduler("third", &[]).await;
    let caught_up = h
        .wait_token("the overdue rotation", |t| t.revision != rotated.revision)
        .await;
    assert_eq!(caught_up.value.rotated_at_ms, T0 + 15 * DAY_MS);
    assert_eq!(h.refreshes(), 2);
    third.stop().await;
}

/// Two replicas over many periods: one refresh per period, never two, and the stored token
/// is always the one Khoros accepts. Concurrent `rotate-now`s racing the service are fenced
/// too: every successful report is one refresh, the others report a conflict or a busy claim.
#[tokio::test]
async fn two_schedulers_never_rotate_in_the_same_period() {
    let h = Harness::start().await;
    let a = h.scheduler("a", &[]).await;
    let b = h.scheduler("b", &[]).await;
    a.wait_leader().await;
    for period in 1..=4 {
        h.advance(7 * DAY);
        let rotated_at = T0 + 7 * DAY_MS * period;
        h.wait_token("this period's rotation", |t| {
            t.value.rotated_at_ms == rotated_at
        })
        .await;
        a.run_checks(3).await;
        b.run_checks(3).await;
        assert_eq!(h.refreshes(), period as usize, "one refresh per period");
        assert_eq!(h.accepted_tokens(), vec![h.token().await.value.token]);
    }

    let config = h.config("operator", &[]);
    let before = h.refreshes();
    let reports = futures::future::join_all((0..4).map(|_| commands::rotate_now(&config))).await;
    let mut successes = 0;
    for report in reports {
        match report {
            Ok(r) if r.status == AttemptStatus::Success => successes += 1,
            Ok(r) => assert_eq!(r.status, AttemptStatus::Conflict, "{r:?}"),
            Err(CommandError::Busy { .. }) => {}
            Err(e) => panic!("unexpected rotate-now error: {e}"),
        }
    }
    assert!(successes >= 1);
    assert_eq!(h.refreshes(), before + successes, "one refresh per success");
    assert_eq!(h.accepted_tokens(), vec![h.token().await.value.token]);
    a.stop().await;
    b.stop().await;
}

/// When the lease holder dies without releasing, the other replica takes the lease once it
/// runs out and does the next rotation.
#[tokio::test]
async fn killing_the_lease_holder_hands_rotation_to_the_other() {
    let h = Harness::start().await;
    let a = h.scheduler("a", &[]).await;
    a.wait_leader().await;
    let b = h.scheduler("b", &[]).await;
    b.run_checks(10).await;
    assert!(!b.status.is_leader(), "one leader at a time");
    assert_eq!(h.lease().await.unwrap().holder, "a");

    a.kill().await;
    b.wait_leader().await;
    assert_eq!(h.lease().await.unwrap().holder, "b");
    h.advance(7 * DAY);
    h.wait_token("a rotation by the survivor", |t| {
        t.value.source == "rotation"
    })
    .await;
    assert_eq!(h.last_attempt().await.unwrap().holder, "b");
    assert_eq!(h.refreshes(), 1);
    b.stop().await;
}

/// A holder that stops cleanly releases the lease at once (expires_at 0).
#[tokio::test]
async fn a_stopped_holder_releases_the_lease() {
    let h = Harness::start().await;
    // A long TTL, so the bucket's max_age cannot remove the released value before we read it.
    let a = h.scheduler("a", &[("LEASE_TTL", "30s")]).await;
    a.wait_leader().await;
    a.stop().await;
    let lease = h
        .lease()
        .await
        .expect("the released lease is still readable");
    assert_eq!(lease.holder, "a");
    assert_eq!(lease.expires_at_ms, 0);
}

/// `rotate-now` rotates whatever the schedule says and reports Khoros' refusals;
/// `token-status` shows expiry, age, the last attempt and the lease, never the token.
#[tokio::test]
async fn operator_commands_rotate_now_and_token_status() {
    let h = Harness::start().await;
    let config = h.config("operator", &[]);

    // Seeds from config on first use, then rotates at once.
    let report = commands::rotate_now(&config).await.expect("rotate-now");
    assert_eq!(report.status, AttemptStatus::Success, "{report:?}");
    assert_eq!(report.reason, Reason::Forced);
    assert_eq!(report.expires_at_ms, Some(T0 + 90 * DAY_MS));
    assert_eq!(h.refreshes(), 1);

    h.sim
        .add_fault(Fault::status("tokens", 401).times(1))
        .unwrap();
    let refused = commands::rotate_now(&config).await.expect("rotate-now");
    assert_eq!(refused.status, AttemptStatus::ClientError);
    assert_eq!(h.refreshes(), 1);

    h.advance(DAY);
    let status = commands::token_status(&config).await.expect("token-status");
    let json = serde_json::to_value(&status).unwrap();
    let token = h.token().await.value.token;
    assert!(
        !json.to_string().contains(&token),
        "the token is never printed"
    );
    assert_eq!(json["token"]["source"], "rotation");
    assert_eq!(json["token"]["age_seconds"], 86_400);
    assert_eq!(json["token"]["expires_at_ms"], T0 + 90 * DAY_MS);
    assert_eq!(json["token"]["expires_at"], "2024-02-12T22:13:20.000Z");
    assert_eq!(json["last_rotation"]["status"], "client_error");
    assert_eq!(json["last_rotation"]["last_success_at_ms"], T0);
    assert!(json["lease"].is_null(), "no service ran, so no lease");
    assert_eq!(json["check"]["state"], "accepted");
    assert!(json["lost"].is_null());
}

/// Stream depth, per-consumer lag with its event type, and dead letters reach `/metrics`.
#[tokio::test]
async fn jetstream_metrics_report_lag_per_consumer_and_dead_letters() {
    let h = Harness::start().await;
    let js = jetstream::new(async_nats::connect(h.nats.url()).await.unwrap());
    let events = js.get_stream(EVENTS_STREAM).await.unwrap();
    events
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("worker-message-3".into()),
            filter_subject: "khoros.events.message.3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        js.publish("khoros.events.message.3", format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for i in 0..2 {
        js.publish("bridge.dlq.message", format!("d{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let s = h
        .scheduler("metrics", &[("METRICS_INTERVAL", "100ms")])
        .await;
    wait::until(SOON, "jetstream gauges in /metrics", || async {
        let text = s.metrics().await;
        let pending = metric_value(
            &text,
            "jetstream_consumer_pending",
            &[
                ("stream", EVENTS_STREAM),
                ("consumer", "worker-message-3"),
                ("event_type", "message"),
            ],
        )?;
        let messages = metric_value(
            &text,
            "jetstream_stream_messages",
            &[("stream", EVENTS_STREAM)],
        )?;
        let dead = metric_value(&text, "dead_letter_messages", &[])?;
        let dlq = metric_value(
            &text,
            "jetstream_stream_messages",
            &[("stream", DEAD_LETTER_STREAM)],
        )?;
        (pending == 3.0 && messages == 3.0 && dead == 2.0 && dlq == 2.0).then_some(())
    })
    .await;
    let text = s.metrics().await;
    for name in [
        "jetstream_consumer_ack_pending",
        "jetstream_consumer_redelivered",
        "jetstream_stream_bytes",
        "scheduler_is_leader",
        "scheduler_token_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    s.stop().await;
}

/// A 2xx grant whose expiry field was renamed is still a new token: it is stored (with the
/// documented 90 days) and used at once, with no failure and no back-off. One without a
/// readable token is not a failure either: the old token is in its grace and the next check
/// refreshes again, without backing off.
#[tokio::test]
async fn a_grant_of_an_unexpected_shape_is_stored_not_discarded() {
    let h = Harness::start().await;
    let s = h
        .scheduler("a", &[("TOKEN_RETRY_AFTER_FAILURE", "1h")])
        .await;
    s.wait_leader().await;
    let renames = |pairs: &[(&str, &str)]| SettingsPatch {
        grant_renames: Some(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        ),
        ..SettingsPatch::default()
    };
    h.sim
        .update_settings(renames(&[("expiresAtMillis", "expiresOn")]))
        .unwrap();
    h.advance(7 * DAY);
    let rotated = h
        .wait_token("the rotated token", |t| t.value.source == "rotation")
        .await;
    assert_eq!(h.refreshes(), 1);
    assert_eq!(
        rotated.value.expires_at_ms,
        T0 + 97 * DAY_MS,
        "90 days assumed"
    );
    assert_eq!(h.accepted_tokens(), vec![rotated.value.token.clone()]);
    let attempt = h.last_attempt().await.unwrap();
    assert_eq!(attempt.status, AttemptStatus::Success, "{attempt:?}");

    // No token field at all: retried at the next checks, not an hour later.
    h.sim
        .update_settings(renames(&[("token", "accessToken")]))
        .unwrap();
    h.advance(7 * DAY);
    let unreadable = h
        .wait_attempt("an unreadable grant", |a| {
            a.status == AttemptStatus::GrantUnreadable
        })
        .await;
    let error = unreadable.error.unwrap_or_default();
    for token in h.sim.tokens() {
        assert!(
            !error.contains(&token.token),
            "a token in the error: {error}"
        );
    }
    h.sim.update_settings(renames(&[])).unwrap();
    let fixed = h
        .wait_token("a rotation after the unreadable grant", |t| {
            t.revision > rotated.revision
        })
        .await;
    assert_eq!(h.accepted_tokens(), vec![fixed.value.token.clone()]);
    assert_eq!(
        h.last_attempt().await.unwrap().status,
        AttemptStatus::Success
    );
    s.stop().await;
}

/// NATS goes away between Khoros' answer and the KV write: the scheduler holds the new token
/// and stores it once NATS is back; the stored token is the one Khoros accepts, also after
/// the old token's grace.
#[tokio::test]
async fn a_new_token_survives_kv_being_unavailable() {
    let mut h = Harness::start().await;
    let s = h.scheduler("a", &[]).await;
    s.wait_leader().await;
    let slow = h
        .sim
        .add_fault(Fault::latency("tokens", Duration::from_millis(1500)).times(1))
        .unwrap();
    h.advance(7 * DAY);
    wait::until(SOON, "the refresh call to be in flight", || async {
        let applied = h
            .sim
            .faults()
            .iter()
            .find(|f| f.id == slow)
            .map(|f| f.applied);
        (applied != Some(0)).then_some(())
    })
    .await;
    h.nats.stop();
    // Khoros answers while NATS is down; the write is retried meanwhile.
    wait::until(SOON, "Khoros to issue the new token", || async {
        (h.refreshes() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.nats.restart();
    let stored = h
        .wait_token("the new token once NATS is back", |t| {
            t.value.source == "rotation"
        })
        .await;
    assert_eq!(h.refreshes(), 1);
    assert_eq!(h.accepted_tokens(), vec![stored.value.token.clone()]);
    h.advance(Duration::from_secs(11 * 60));
    let api = shared::khoros::KhorosApi::new(&h.sim.base_url(), Duration::from_secs(5));
    api.health(&shared::Secret::new(stored.value.token.clone()), APP_ID)
        .await
        .expect("the stored token works after the old one's grace");
    assert_eq!(
        h.wait_attempt("the attempt record", |a| a.status
            != AttemptStatus::InProgress)
            .await
            .status,
        AttemptStatus::Success
    );
    s.stop().await;
}

/// A token refreshed behind the scheduler's back dies when the grace ends: the scheduler
/// notices within a few checks (`scheduler_token_lost` = 1) and `token-status` names the
/// cause and the recovery.
#[tokio::test]
async fn a_lost_token_is_detected_and_explained() {
    let h = Harness::start().await;
    let s = h.scheduler("a", &[("TOKEN_VERIFY_INTERVAL", "50ms")]).await;
    s.wait_leader().await;
    let api = shared::khoros::KhorosApi::new(&h.sim.base_url(), Duration::from_secs(5));
    let shared::khoros::Refreshed::Grant(elsewhere) = api
        .refresh_token(&shared::Secret::new(SEED), APP_ID)
        .await
        .expect("refresh behind the scheduler's back")
    else {
        panic!("no token in the grant");
    };
    // Inside the grace the stored (old) token still works.
    s.run_checks(5).await;
    let status = commands::token_status(&h.config("operator", &[]))
        .await
        .unwrap();
    assert!(!status.is_lost(), "{status:?}");

    h.advance(Duration::from_secs(11 * 60));
    wait::until(SOON, "scheduler_token_lost to be 1", || async {
        let text = s.metrics().await;
        (metric_value(&text, "scheduler_token_lost", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let status = commands::token_status(&h.config("operator", &[]))
        .await
        .unwrap();
    assert!(status.is_lost());
    let json = serde_json::to_string(&status).unwrap();
    assert!(json.contains("\"state\":\"lost\""), "{json}");
    assert!(json.contains("Create the first token"), "{json}");
    assert!(
        json.contains("refreshed or revoked outside the bridge"),
        "{json}"
    );
    assert!(!json.contains(SEED) && !json.contains(elsewhere.token.expose()));
    s.stop().await;
}

/// Two schedulers and a Khoros that asks for `Retry-After: 60` on the refresh: the wait does
/// not fit the retry budget (which the claim timeout covers), so the attempt ends at once
/// and the other scheduler never refreshes the same token meanwhile.
#[tokio::test]
async fn a_slow_khoros_never_gets_the_same_token_refreshed_twice() {
    let h = Harness::start().await;
    let a = h.scheduler("a", &[]).await;
    let b = h.scheduler("b", &[]).await;
    wait::until(SOON, "one of them to lead", || async {
        (a.status.is_leader() || b.status.is_leader()).then_some(())
    })
    .await;
    let busy = h
        .sim
        .add_fault(Fault::status("tokens", 429).retry_after(60))
        .unwrap();
    h.advance(7 * DAY);
    let attempt = h
        .wait_attempt("the throttled attempt", |a| {
            a.status != AttemptStatus::InProgress
        })
        .await;
    assert_eq!(attempt.status, AttemptStatus::ServerError, "{attempt:?}");
    assert_eq!(
        attempt.retries, 0,
        "a 60 s Retry-After does not fit a 2 s budget"
    );
    a.run_checks(10).await;
    b.run_checks(10).await;
    let calls = h
        .sim
        .faults()
        .iter()
        .find(|f| f.id == busy)
        .map(|f| f.applied);
    assert_eq!(
        calls,
        Some(1),
        "one refresh call for this token, by one scheduler"
    );

    // Khoros recovers; after the failure back-off exactly one rotation happens.
    h.sim.clear_faults();
    h.advance(Duration::from_secs(3600));
    h.wait_token("the rotation after the back-off", |t| {
        t.value.source == "rotation"
    })
    .await;
    a.run_checks(10).await;
    b.run_checks(10).await;
    assert_eq!(h.refreshes(), 1);
    a.stop().await;
    b.stop().await;
}
