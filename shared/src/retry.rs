//! Retry policy for upstream calls: exponential backoff with full jitter (`backon`),
//! bounded in attempts and total delay, and `Retry-After` honoured when the server sends it.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
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
    /// Sum of all delays; the call gives up once the next wait would exceed it.
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
    /// (the worker's delivery state machine): ends when the policy is spent.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let mut budget = self.max_elapsed;
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .build()
            .map(full_jitter)
            .take_while(move |wait| match budget.checked_sub(*wait) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            })
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

/// What the retry loop needs to know about an error.
pub trait RetryClass {
    /// Whether another attempt could succeed.
    fn is_retryable(&self) -> bool;
    /// A server-requested wait (`Retry-After`), which replaces the backoff step.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Runs `call` until it succeeds, fails with a non-retryable error, or the policy is spent.
/// `on_retry` sees each error that will be retried (for logs and metrics).
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    call: F,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    E: RetryClass,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries)
        .with_total_delay(Some(policy.max_elapsed));
    call.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.is_retryable())
        .adjust(move |e: &E, step: Option<Duration>| {
            // `None` means the policy is spent; keep it that way.
            let step = step?;
            Some(match e.retry_after() {
                Some(wait) => wait.min(policy.max_elapsed),
                None => full_jitter(step),
            })
        })
        .notify(|e: &E, wait: Duration| on_retry(e, wait))
        .await
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
}
