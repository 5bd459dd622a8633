//! Delivery health (`docs/vendors/khoros-bot-api-v3.md`, "Bot health") and suspension
//! (`docs/vendors/khoros-webhooks.md`, "Suspension"), both on the sim clock.
//!
//! Every delivery attempt (each retry counts) lands in a rolling 2-minute window. More than
//! 10 consecutive failures within 2 minutes suspend deliveries; a probe every 2 minutes of
//! sim time ends the suspension when it succeeds.

use std::collections::VecDeque;

use serde::Serialize;

/// The rolling window of `docs/vendors/khoros-bot-api-v3.md`, "Bot health", and of the suspension
/// rule.
pub const WINDOW_MS: i64 = 2 * 60 * 1000;
/// Suspend when the consecutive failures within the window exceed this.
pub const SUSPEND_AFTER_FAILURES: usize = 10;
/// A suspended sender probes the bot this often.
pub const PROBE_EVERY_MS: i64 = 2 * 60 * 1000;
/// `DOWN` needs at least this many attempts, all failed.
const DOWN_MIN_ATTEMPTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Down,
}

/// One element of the `data` array of `docs/vendors/khoros-bot-api-v3.md`, "Bot health".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub status: HealthStatus,
    pub failure_count: usize,
    pub success_count: usize,
}

/// What `GET /sim/health` shows: the report plus the sender's suspension state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    #[serde(flatten)]
    pub report: HealthReport,
    pub suspended: bool,
    pub consecutive_failures: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_since_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_at_millis: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
struct Suspension {
    since_ms: i64,
    next_probe_ms: i64,
}

#[derive(Debug, Default)]
pub struct Health {
    /// (sim time, success) of every attempt in the last window.
    attempts: VecDeque<(i64, bool)>,
    /// Sim times of the current run of failures (cleared by a success).
    streak: VecDeque<i64>,
    suspension: Option<Suspension>,
}

impl Health {
    /// Records one delivery attempt; returns true if it just suspended the sender.
    pub fn record(&mut self, now_ms: i64, ok: bool) -> bool {
        self.attempts.push_back((now_ms, ok));
        self.prune(now_ms);
        if ok {
            self.streak.clear();
            return false;
        }
        self.streak.push_back(now_ms);
        if self.suspension.is_none() && self.streak.len() > SUSPEND_AFTER_FAILURES {
            self.suspension = Some(Suspension {
                since_ms: now_ms,
                next_probe_ms: now_ms + PROBE_EVERY_MS,
            });
            return true;
        }
        false
    }

    pub fn is_suspended(&self) -> bool {
        self.suspension.is_some()
    }

    /// True (once per period) when a suspended sender should probe; schedules the next one.
    pub fn take_probe(&mut self, now_ms: i64) -> bool {
        match &mut self.suspension {
            Some(s) if now_ms >= s.next_probe_ms => {
                s.next_probe_ms = now_ms + PROBE_EVERY_MS;
                true
            }
            _ => false,
        }
    }

    /// A probe's outcome: success ends the suspension.
    pub fn probe_result(&mut self, now_ms: i64, ok: bool) {
        self.record(now_ms, ok);
        if ok {
            self.suspension = None;
        }
    }

    pub fn report(&mut self, now_ms: i64) -> HealthReport {
        self.prune(now_ms);
        let success_count = self.attempts.iter().filter(|(_, ok)| *ok).count();
        let failure_count = self.attempts.len() - success_count;
        let status = if failure_count == 0 {
            HealthStatus::Healthy
        } else if success_count == 0 && failure_count >= DOWN_MIN_ATTEMPTS {
            HealthStatus::Down
        } else {
            HealthStatus::Degraded
        };
        HealthReport {
            status,
            failure_count,
            success_count,
        }
    }

    pub fn view(&mut self, now_ms: i64) -> HealthView {
        let report = self.report(now_ms);
        HealthView {
            report,
            suspended: self.suspension.is_some(),
            consecutive_failures: self.streak.len(),
            suspended_since_millis: self.suspension.map(|s| s.since_ms),
            next_probe_at_millis: self.suspension.map(|s| s.next_probe_ms),
        }
    }

    fn prune(&mut self, now_ms: i64) {
        let cutoff = now_ms - WINDOW_MS;
        while self.attempts.front().is_some_and(|(t, _)| *t < cutoff) {
            self.attempts.pop_front();
        }
        while self.streak.front().is_some_and(|t| *t < cutoff) {
            self.streak.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_window() {
        let mut h = Health::default();
        assert_eq!(h.report(0).status, HealthStatus::Healthy);
        h.record(0, true);
        h.record(1, false);
        assert_eq!(h.report(2).status, HealthStatus::Degraded);
        for t in 0..10 {
            h.record(10 + t, false);
        }
        // The success falls out of the window; only failures remain.
        assert_eq!(h.report(WINDOW_MS + 1).status, HealthStatus::Down);
        assert_eq!(h.report(3 * WINDOW_MS).status, HealthStatus::Healthy);
    }

    #[test]
    fn eleven_failures_suspend_and_a_probe_resumes() {
        let mut h = Health::default();
        for t in 0..10 {
            assert!(!h.record(t, false));
        }
        assert!(h.record(10, false));
        assert!(h.is_suspended());
        assert!(!h.take_probe(PROBE_EVERY_MS - 1));
        assert!(h.take_probe(PROBE_EVERY_MS + 10));
        assert!(!h.take_probe(PROBE_EVERY_MS + 11));
        h.probe_result(PROBE_EVERY_MS + 12, true);
        assert!(!h.is_suspended());
    }

    #[test]
    fn old_failures_do_not_count_towards_suspension() {
        let mut h = Health::default();
        for t in 0..10 {
            h.record(t, false);
        }
        assert!(!h.record(WINDOW_MS + 100, false));
        assert!(!h.is_suspended());
    }
}
