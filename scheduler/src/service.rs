//! The long-running scheduler: wait for the topology, seed the first token, keep the lease,
//! and wake every `TOKEN_CHECK_INTERVAL` to rotate (leader) or just refresh the token gauges
//! (every replica).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv::Store};
use shared::topology::{buckets, Readiness, Resource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::lease::{self, Leadership, Lease};
use crate::rotation::{CheckOutcome, Rotator};
use crate::schedule::Decision;
use crate::verify;
use shared::khoros::KhorosApi;

/// The buckets the scheduler uses; `/readyz` covers exactly these.
pub const NEEDS: [Resource; 2] = [
    Resource::Bucket(buckets::TOKENS),
    Resource::Bucket(buckets::LEASES),
];

/// The buckets the scheduler works on.
#[derive(Clone)]
pub struct Stores {
    /// `bridge_tokens`: the token and the record of the last rotation attempt.
    pub tokens: Store,
    /// `bridge_leases`: the rotation lease.
    pub leases: Store,
}

impl Stores {
    /// Opens the buckets (created by [`Topology::ensure_all`] with their limits).
    pub async fn open(js: &jetstream::Context) -> Result<Self, OpenError> {
        let open = |bucket: &'static str| async move {
            js.get_key_value(bucket)
                .await
                .map_err(|source| OpenError { bucket, source })
        };
        Ok(Self {
            tokens: open(buckets::TOKENS).await?,
            leases: open(buckets::LEASES).await?,
        })
    }
}

/// A bucket that could not be opened (it does not exist yet, or NATS did not answer).
#[derive(Debug, thiserror::Error)]
#[error("bucket {bucket}: {source}")]
pub struct OpenError {
    pub bucket: &'static str,
    #[source]
    pub source: jetstream::context::KeyValueError,
}

/// What the service shows the health routes and tests.
#[derive(Clone, Debug)]
pub struct Status {
    ready: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    leadership: Leadership,
}

impl Status {
    pub(crate) fn new(leadership: Leadership) -> Self {
        Self {
            ready: Arc::default(),
            checks: Arc::default(),
            leadership,
        }
    }

    /// The topology is ensured and the buckets are open.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// This replica holds the rotation lease.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// Loop iterations completed so far (tests await progress with it instead of sleeping).
    pub fn checks_completed(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }
}

/// Runs until `shutdown`; a rotation in flight is finished, then the lease is released.
/// `readiness` is the topology keeper's: the buckets are opened once it has ensured them.
pub async fn run(
    config: SchedulerConfig,
    js: jetstream::Context,
    readiness: Readiness,
    status: Status,
    leadership: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
) {
    let Some(stores) = open_when_ready(&js, &readiness, &shutdown).await else {
        return;
    };
    let rotator = Rotator::new(
        stores.tokens.clone(),
        KhorosApi::new(&config.khoros_api_url, config.khoros_timeout),
        config.app_id.clone(),
        config.retry,
        config.schedule,
        config.scheduler_id.clone(),
        config.clock.clone(),
    );
    if !seed_when_possible(&config, &rotator, &shutdown).await {
        return;
    }
    // Exported from the start, so dashboards and alert rules see 0 rather than nothing.
    metrics::gauge!(crate::telemetry::TOKEN_LOST).set(0.0);
    metrics::gauge!(crate::telemetry::TOKEN_UNSTORED).set(0.0);
    status.ready.store(true, Ordering::SeqCst);
    tracing::info!(scheduler_id = %config.scheduler_id, "scheduler ready");

    let lease = Lease::new(
        stores.leases,
        config.scheduler_id.clone(),
        config.topology.lease_ttl,
        config.clock.clone(),
    );
    let lease_stop = CancellationToken::new();
    let lease_task = tokio::spawn(lease::keep(
        lease,
        config.lease_renew_every(),
        leadership,
        lease_stop.clone(),
    ));
    // Aborts the lease task if this future is dropped (a crash in tests), so the lease is
    // then left to expire rather than renewed by an orphan.
    let _abort_lease = AbortOnDrop(lease_task.abort_handle());

    let mut tick = tokio::time::interval(config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_decision = None;
    let api = KhorosApi::new(&config.khoros_api_url, config.khoros_timeout);
    let mut verified: Option<(Instant, verify::Verdict)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if status.is_leader() {
            match rotator.check(false).await {
                Ok(CheckOutcome::Idle(decision)) => {
                    log_decision(&decision, last_decision.as_ref());
                    last_decision = Some(decision);
                }
                Ok(CheckOutcome::Attempted(_)) => last_decision = None,
                Err(error) => tracing::warn!(%error, "reading the token record failed"),
            }
        } else if let Err(error) = rotator.observe().await {
            tracing::warn!(%error, "reading the token record failed");
        }
        let due = verified
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= config.verify_interval);
        if !config.verify_interval.is_zero() && due {
            if let Some(verdict) = verify_stored(&rotator, &api, &config).await {
                verify::record(&verdict, verified.as_ref().map(|(_, v)| v));
                verified = Some((Instant::now(), verdict));
            }
        }
        status.checks.fetch_add(1, Ordering::SeqCst);
    }
    lease_stop.cancel();
    let _ = lease_task.await;
}

/// Checks the token in KV with Khoros; `None` when KV holds none or cannot be read.
async fn verify_stored(
    rotator: &Rotator,
    api: &KhorosApi,
    config: &SchedulerConfig,
) -> Option<verify::Verdict> {
    let token = rotator.snapshot().await.ok()?.token?;
    Some(verify::check(api, &config.app_id, &token.value, config.clock.now_ms()).await)
}

/// Opens the buckets once the topology keeper has ensured them (it retries until NATS
/// answers), retrying the open with backoff; `None` if shut down first.
async fn open_when_ready(
    js: &jetstream::Context,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Option<Stores> {
    tokio::select! {
        _ = shutdown.cancelled() => return None,
        _ = readiness.ensured() => {}
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match Stores::open(js).await {
            Ok(stores) => return Some(stores),
            Err(error) => tracing::warn!(%error, retry_in = ?delay, "opening the buckets failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Seeds `KHOROS_TOKEN` if KV has no token; `false` if shut down first.
async fn seed_when_possible(
    config: &SchedulerConfig,
    rotator: &Rotator,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        match rotator
            .seed_if_absent(config.seed_token.as_ref(), config.seed_expires_at_ms)
            .await
        {
            Ok(_) => return true,
            Err(error) => tracing::warn!(%error, "seeding the token failed, retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Logs a quiet decision once, when it changes kind (not every minute).
fn log_decision(decision: &Decision, previous: Option<&Decision>) {
    if previous.is_some_and(|p| std::mem::discriminant(p) == std::mem::discriminant(decision)) {
        return;
    }
    match decision {
        Decision::NoToken => tracing::error!(
            "no Bot API token in KV and none configured: set KHOROS_TOKEN or KHOROS_TOKEN_FILE"
        ),
        Decision::Wait { due_at_ms } => tracing::info!(due_at_ms, "next token rotation scheduled"),
        Decision::InProgress { holder } => {
            tracing::info!(holder = %holder, "another scheduler is rotating the token")
        }
        Decision::BackingOff { until_ms, last } => tracing::warn!(
            until_ms,
            last_result = last.label(),
            "last rotation failed; waiting before the next attempt"
        ),
        Decision::StaleToken { revision } => tracing::warn!(
            revision,
            "the token read is older than the recorded rotation; reading again at the next check"
        ),
        Decision::Rotate(_) => {}
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
