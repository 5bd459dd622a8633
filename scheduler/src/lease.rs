//! The rotation lease: which replica may rotate, kept in the `bridge_leases` bucket.
//!
//! The value names the holder and when the lease runs out. It is taken with `create` when
//! absent, renewed or taken over with `update` on the revision read, so two replicas never
//! both win the same step. A holder that stops renewing loses the lease once `expires_at_ms`
//! has passed (as seen by the other replica's clock) or once the bucket's `max_age` (=
//! `LEASE_TTL`) removes the value, whichever comes first. A replica that stops cleanly
//! releases the lease so the other takes over at its next renewal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use serde::{Deserialize, Serialize};
use shared::auth::Clock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::telemetry;
use shared::kv::{self, KvError, Versioned};

/// Key of the rotation lease in the leases bucket.
pub const LEASE_KEY: &str = "scheduler.rotation";

/// The stored lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// `SCHEDULER_ID` of the holder.
    pub holder: String,
    /// When the holder first took it (kept across renewals), epoch ms.
    pub acquired_at_ms: i64,
    /// When it runs out without renewal, epoch ms (0 = released).
    pub expires_at_ms: i64,
}

impl LeaseRecord {
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// What a replica does about the lease as it stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder let it run out: take it over.
    TakeOver { from: String },
    /// Someone else holds it.
    Wait { holder: String, expires_at_ms: i64 },
}

/// The step for replica `me` at `now_ms`.
pub fn step(current: Option<&LeaseRecord>, me: &str, now_ms: i64) -> Step {
    match current {
        None => Step::Create,
        Some(lease) if lease.holder == me => Step::Renew,
        Some(lease) if !lease.is_live(now_ms) => Step::TakeOver {
            from: lease.holder.clone(),
        },
        Some(lease) => Step::Wait {
            holder: lease.holder.clone(),
            expires_at_ms: lease.expires_at_ms,
        },
    }
}

/// One replica's handle on the lease.
#[derive(Clone)]
pub struct Lease {
    /// The `bridge_leases` bucket.
    store: Store,
    holder: String,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl Lease {
    pub fn new(store: Store, holder: String, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            holder,
            ttl,
            clock,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Reads the lease as stored (for `token-status`).
    pub async fn current(store: &Store) -> Result<Option<Versioned<LeaseRecord>>, KvError> {
        kv::read(store, LEASE_KEY).await
    }

    /// Takes, renews or takes over the lease when possible; `true` while this replica holds it.
    pub async fn try_acquire(&self) -> Result<bool, KvError> {
        let current = Self::current(&self.store).await?;
        let now = self.clock.now_ms();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let step = step(current.as_ref().map(|c| &c.value), &self.holder, now);
        let acquired_at_ms = match &step {
            Step::Renew => current.as_ref().map_or(now, |c| c.value.acquired_at_ms),
            Step::Wait { .. } => return Ok(false),
            Step::Create | Step::TakeOver { .. } => now,
        };
        let record = LeaseRecord {
            holder: self.holder.clone(),
            acquired_at_ms,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        match kv::write(&self.store, LEASE_KEY, &record, current.map(|c| c.revision)).await {
            Ok(_) => {
                if let Step::TakeOver { from } = &step {
                    tracing::info!(from = %from, "took over the rotation lease of a silent holder");
                }
                Ok(true)
            }
            Err(KvError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (if still ours) so the other replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), KvError> {
        let Some(current) = Self::current(&self.store).await? else {
            return Ok(());
        };
        if current.value.holder != self.holder {
            return Ok(());
        }
        let released = LeaseRecord {
            expires_at_ms: 0,
            ..current.value
        };
        match kv::write(&self.store, LEASE_KEY, &released, Some(current.revision)).await {
            Ok(_) | Err(KvError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether this replica may rotate now: it holds the lease and renewed it within `LEASE_TTL`
/// (measured on the local monotonic clock, so a stalled renewal stops rotation by itself).
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<Option<Instant>>);

impl Leadership {
    /// A sender for [`keep`] and the receiver side.
    pub fn channel() -> (watch::Sender<Option<Instant>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self(rx))
    }

    pub fn is_leader(&self) -> bool {
        self.0.borrow().is_some_and(|until| Instant::now() < until)
    }
}

/// Renews the lease every `renew_every` until `shutdown`, then releases it.
pub async fn keep(
    lease: Lease,
    renew_every: Duration,
    leadership: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let now_held = match lease.try_acquire().await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "lease renewal failed; not rotating until it works");
                false
            }
        };
        leadership.send_replace(now_held.then(|| started + lease.ttl));
        if now_held != held {
            if now_held {
                tracing::info!(holder = lease.holder(), "rotation lease acquired");
            } else {
                tracing::info!(holder = lease.holder(), "rotation lease lost");
            }
            held = now_held;
        }
        record_gauges(lease.holder(), now_held);
    }
    leadership.send_replace(None);
    record_gauges(lease.holder(), false);
    if held {
        match lease.release().await {
            Ok(()) => tracing::info!(holder = lease.holder(), "rotation lease released"),
            Err(error) => tracing::warn!(%error, "could not release the rotation lease"),
        }
    }
}

fn record_gauges(holder: &str, held: bool) {
    let value = if held { 1.0 } else { 0.0 };
    metrics::gauge!(telemetry::LEASE_HOLDER, "holder" => holder.to_string()).set(value);
    metrics::gauge!(telemetry::IS_LEADER).set(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::auth::ManualClock;

    fn lease(holder: &str, expires_at_ms: i64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            acquired_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn an_absent_lease_is_created_and_ours_is_renewed() {
        let clock = ManualClock::at(1_000);
        assert_eq!(step(None, "a", clock.now_ms()), Step::Create);
        // Ours is renewed even when it ran out (nobody took it meanwhile).
        clock.set(50_000);
        assert_eq!(
            step(Some(&lease("a", 31_000)), "a", clock.now_ms()),
            Step::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected_until_it_expires() {
        let clock = ManualClock::at(1_000);
        let theirs = lease("b", 31_000);
        assert_eq!(
            step(Some(&theirs), "a", clock.now_ms()),
            Step::Wait {
                holder: "b".into(),
                expires_at_ms: 31_000
            }
        );
        clock.set(30_999);
        assert!(matches!(
            step(Some(&theirs), "a", clock.now_ms()),
            Step::Wait { .. }
        ));
        clock.set(31_000);
        assert_eq!(
            step(Some(&theirs), "a", clock.now_ms()),
            Step::TakeOver { from: "b".into() }
        );
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        assert_eq!(
            step(Some(&lease("b", 0)), "a", 1),
            Step::TakeOver { from: "b".into() }
        );
    }

    #[test]
    fn leadership_needs_a_recent_renewal() {
        let (tx, leadership) = Leadership::channel();
        assert!(!leadership.is_leader());
        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert!(leadership.is_leader());
        tx.send_replace(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!leadership.is_leader());
    }
}
