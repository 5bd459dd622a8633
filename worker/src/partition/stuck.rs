//! The age of the oldest event this replica holds unfinished (pulled, waiting or running):
//! `worker_oldest_event_age_seconds`, the gauge that shows an event stuck in retries or a
//! conversation blocked behind one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Events held, by the time they were stored (epoch ms).
#[derive(Debug, Default)]
pub struct Stuck {
    held: Mutex<BTreeMap<(i64, u64), ()>>,
}

/// Identifies one held event: (stored at ms, a unique number).
pub type HeldId = (i64, u64);

impl Stuck {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<HeldId, ()>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hold(&self, id: HeldId) {
        self.lock().insert(id, ());
    }

    pub fn release(&self, id: HeldId) {
        self.lock().remove(&id);
    }

    /// Age of the oldest held event at `now_ms`, zero when nothing is held.
    pub fn oldest_age(&self, now_ms: i64) -> Duration {
        self.lock()
            .keys()
            .next()
            .map(|(stored, _)| Duration::from_millis((now_ms - stored).max(0) as u64))
            .unwrap_or_default()
    }

    /// Publishes the gauge every second until `stop`.
    pub async fn report(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let now = shared::auth::Clock::now_ms(&shared::auth::SystemClock);
                    metrics::gauge!(telemetry::OLDEST_EVENT_AGE).set(self.oldest_age(now).as_secs_f64());
                    metrics::gauge!(telemetry::HELD).set(self.lock().len() as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_held_event_sets_the_age() {
        let stuck = Stuck::default();
        assert_eq!(stuck.oldest_age(10_000), Duration::ZERO);
        stuck.hold((4_000, 1));
        stuck.hold((1_000, 2));
        assert_eq!(stuck.oldest_age(10_000), Duration::from_secs(9));
        stuck.release((1_000, 2));
        assert_eq!(stuck.oldest_age(10_000), Duration::from_secs(6));
    }
}
