//! Retry policy for upstream calls: exponential backoff with full jitter (`backon`),
//! bounded in attempts and in total wait, and `Retry-After` honoured when the server sends it.
//! Every wait, a `Retry-After` included, is charged to one budget (`max_elapsed`): a wait
//! larger than what is left ends the retries, so callers can rely on the bound (the
//! scheduler's claim timeout does).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

use crate::config::{ConfigError, Env};

/// How hard to retry one upstream call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff step (before jitter).
    pub min_delay: Duration,
    /// Largest single backoff step (before jitter).
    pub max_delay: Duration,
    /// Sum of all waits (`Retry-After` included); a wait that would exceed it ends the retries.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    /// Reads `<PREFIX>_RETRY_MAX`, `_RETRY_MIN_DELAY`, `_RETRY_MAX_DELAY`, `_RETRY_MAX_ELAPSED`.
    pub fn from_env(env: &Env, prefix: &str, default: RetryPolicy) -> Result<Self, ConfigError> {
        Ok(Self {
            max_retries: env.parse(&format!("{prefix}_RETRY_MAX"), default.max_retries)?,
            min_delay: env.duration(&format!("{prefix}_RETRY_MIN_DELAY"), default.min_delay)?,
            max_delay: env.duration(&format!("{prefix}_RETRY_MAX_DELAY"), default.max_delay)?,
            max_elapsed: env
                .duration(&format!("{prefix}_RETRY_MAX_ELAPSED"), default.max_elapsed)?,
        })
    }

    /// The waits of this policy, jittered, for loops that decide per attempt what to do
    /// (the worker's delivery state machine): ends when the policy is spent. Use
    /// [`Delays::next_honouring`] to wait a server's `Retry-After` within the same budget.
    pub fn delays(&self) -> Delays {
        Delays {
            steps: ExponentialBuilder::default()
                .with_min_delay(self.min_delay)
                .with_max_delay(self.max_delay)
                .with_max_times(self.max_retries)
                .build(),
            left: Some(self.max_elapsed),
        }
    }

    pub const fn standard() -> Self {
        Self {
            max_retries: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// The remaining waits of one policy; `None` once the count or the time budget is spent.
#[derive(Debug)]
pub struct Delays {
    steps: ExponentialBackoff,
    /// `None` once a wait did not fit: the policy stays spent.
    left: Option<Duration>,
}

impl Delays {
    /// The next wait: `retry_after` when the server asked for one, else the jittered step.
    pub fn next_honouring(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let left = self.left?;
        let Some(step) = self.steps.next() else {
            self.left = None;
            return None;
        };
        let wait = retry_after.unwrap_or_else(|| full_jitter(step));
        self.left = left.checked_sub(wait);
        self.left.map(|_| wait)
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_honouring(None)
    }
}

/// What the retry loop needs to know about an error.
pub trait RetryClass {
    /// Whether another attempt could succeed.
    fn is_retryable(&self) -> bool;
    /// A server-requested wait (`Retry-After`), which replaces the backoff step.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Runs `call` until it succeeds, fails with a non-retryable error, or the policy is spent
/// (count, or total wait including `Retry-After`). `on_retry` sees each error that will be
/// retried and the wait before the retry (for logs and metrics).
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    mut call: F,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    E: RetryClass,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.is_retryable() {
            return Err(error);
        }
        let Some(wait) = delays.next_honouring(error.retry_after()) else {
            return Err(error);
        };
        on_retry(&error, wait);
        tokio::time::sleep(wait).await;
    }
}

/// Uniform in `[0, step]` ("full jitter"): spreads retries of many workers apart.
fn full_jitter(step: Duration) -> Duration {
    let millis = step.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Flaky(bool, Option<Duration>);
    impl RetryClass for Flaky {
        fn is_retryable(&self) -> bool {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_elapsed: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn retries_retryable_until_success() {
        let calls = AtomicUsize::new(0);
        let result = retry(
            fast(),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Flaky(true, None))
                } else {
                    Ok(7)
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors_and_stops_at_max() {
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = retry(
            fast(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Flaky(false, None))
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = retry(
            fast(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Flaky(true, None))
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "first attempt plus max_retries"
        );
    }

    #[test]
    fn delays_are_bounded_in_count_and_total() {
        let waits: Vec<_> = fast().delays().collect();
        assert!(waits.len() <= 3);
        assert!(waits.iter().sum::<Duration>() <= Duration::from_secs(1));
        let none = RetryPolicy {
            max_retries: 0,
            ..fast()
        };
        assert_eq!(none.delays().count(), 0);
    }

    #[tokio::test]
    async fn retry_after_replaces_the_backoff_step() {
        let mut waits = Vec::new();
        let calls = AtomicUsize::new(0);
        let _ = retry(
            fast(),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Flaky(true, Some(Duration::from_millis(30))))
                } else {
                    Ok(())
                }
            },
            |_, wait| waits.push(wait),
        )
        .await;
        assert_eq!(waits, vec![Duration::from_millis(30)]);
    }

    #[tokio::test]
    async fn retry_after_is_charged_to_the_total_budget() {
        // 3 × 400 ms of Retry-After would be 1.2 s > the 1 s budget: the third ends it.
        let mut waits = Vec::new();
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = retry(
            fast(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Flaky(true, Some(Duration::from_millis(400))))
            },
            |_, wait| waits.push(wait),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(waits, vec![Duration::from_millis(400); 2]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_retry_after_beyond_the_budget_ends_the_retries() {
        let mut delays = fast().delays();
        assert_eq!(delays.next_honouring(Some(Duration::from_secs(2))), None);
        assert_eq!(delays.next(), None, "a spent policy stays spent");
        let mut delays = fast().delays();
        assert_eq!(
            delays.next_honouring(Some(Duration::from_millis(900))),
            Some(Duration::from_millis(900))
        );
        assert_eq!(
            delays.next_honouring(Some(Duration::from_millis(200))),
            None
        );
    }
}
