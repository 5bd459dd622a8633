//! Kore's channel runtime limit (60 requests per minute per bot + user;
//! `docs/vendors/kore-webhook-channel.md`, "Errors, limits and timeouts"), as a
//! rolling window. Off unless configured: benchmarks drive far more than that.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Width of the rolling window.
const WINDOW: Duration = Duration::from_secs(60);

/// Arrival times per bot+user key within the last window.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    /// Counts a request for `key` at `now`; `false` when `limit` is already reached.
    pub fn allow(&mut self, key: &str, limit: u32, now: Instant) -> bool {
        let window = self.windows.entry(key.to_string()).or_default();
        while window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    pub fn clear(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_key_over_a_rolling_minute() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert!(limiter.allow("bot/u1", 2, t0));
        assert!(limiter.allow("bot/u1", 2, t0));
        assert!(!limiter.allow("bot/u1", 2, t0 + Duration::from_secs(59)));
        assert!(limiter.allow("bot/u2", 2, t0));
        assert!(limiter.allow("bot/u1", 2, t0 + Duration::from_secs(60)));
    }
}
