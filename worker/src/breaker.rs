//! Circuit breaker in front of Kore.ai: after `failures` consecutive failed turns it opens for
//! `cooldown`, during which turns fail at once (and customers are handed to agents instead of
//! waiting); then one trial call decides whether it closes again.

use std::sync::Mutex;
use std::time::Instant;

use crate::config::BreakerConfig;
use crate::telemetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        metrics::gauge!(telemetry::BREAKER_STATE).set(0.0);
        Self {
            config,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                open_until: None,
                trial_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        let inner = self.lock();
        match inner.open_until {
            None => State::Closed,
            Some(until) if Instant::now() < until => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Whether a call may go out now. In half-open state only one trial at a time.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if inner.trial_in_flight => false,
            Some(_) => {
                inner.trial_in_flight = true;
                metrics::gauge!(telemetry::BREAKER_STATE).set(2.0);
                true
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        if inner.open_until.is_some() {
            tracing::info!("kore.ai breaker closed");
        }
        *inner = Inner {
            consecutive_failures: 0,
            open_until: None,
            trial_in_flight: false,
        };
        metrics::gauge!(telemetry::BREAKER_STATE).set(0.0);
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures += 1;
        let trial_failed = inner.trial_in_flight;
        inner.trial_in_flight = false;
        if trial_failed || inner.consecutive_failures >= self.config.failures.max(1) {
            if inner.open_until.is_none() || trial_failed {
                tracing::warn!(
                    failures = inner.consecutive_failures,
                    "kore.ai breaker open"
                );
            }
            inner.open_until = Some(Instant::now() + self.config.cooldown);
            metrics::gauge!(telemetry::BREAKER_STATE).set(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_one_trial() {
        let b = Breaker::new(BreakerConfig {
            failures: 2,
            cooldown: Duration::from_millis(30),
        });
        assert!(b.allow());
        b.record_failure();
        assert_eq!(b.state(), State::Closed);
        b.record_failure();
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one trial after the cooldown");
        assert!(!b.allow(), "only one trial at a time");
        b.record_failure();
        assert_eq!(b.state(), State::Open, "a failed trial reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow());
    }
}
