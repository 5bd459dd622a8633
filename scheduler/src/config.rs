//! `SchedulerConfig`: everything the scheduler and its operator commands read from the
//! environment, checked once at start-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::auth::{Clock, SystemClock};
use shared::config::{ConfigError, Env, NatsConfig};
use shared::retry::RetryPolicy;
use shared::topology::TopologyConfig;
use shared::Secret;

use crate::schedule::SchedulePolicy;

/// Default `KHOROS_API_URL`: the US gateway of the Bot API.
pub const DEFAULT_KHOROS_API_URL: &str = "https://api.app.lithium.com";

/// Everything the scheduler needs; each field names its variable.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// `SCHEDULER_LISTEN` (default `0.0.0.0:8083`): `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// `METRICS_LISTEN` (default `0.0.0.0:9092`): the Prometheus listener (`/metrics`).
    pub metrics_listen: SocketAddr,
    /// `KHOROS_API_URL` (default `https://api.app.lithium.com`): the Bot API v3 gateway.
    pub khoros_api_url: String,
    /// `KHOROS_TIMEOUT` (default `10s`): limit of one token-refresh HTTP call.
    pub khoros_timeout: Duration,
    /// `KHOROS_APP_ID` (required): the bot whose token is rotated.
    pub app_id: String,
    /// `KHOROS_TOKEN` / `KHOROS_TOKEN_FILE`: the first token, written to KV only when the key
    /// is absent (a stored token is always newer than the one in the deployment).
    pub seed_token: Option<Secret>,
    /// `KHOROS_TOKEN_EXPIRES_AT_MS` (default `0` = unknown): expiry of the seed token.
    pub seed_expires_at_ms: i64,
    /// `TOKEN_ROTATE_EVERY` (`7d`), `TOKEN_EXPIRY_MARGIN` (`2d`), `TOKEN_RETRY_AFTER_FAILURE`
    /// (`1h`): when a rotation is due, see [`SchedulePolicy`].
    pub schedule: SchedulePolicy,
    /// `TOKEN_CHECK_INTERVAL` (default `1m`): how often the rotation loop wakes up.
    pub check_interval: Duration,
    /// `TOKEN_VERIFY_INTERVAL` (default `1m`, `0` = off): how often every replica checks the
    /// stored token with Khoros (bot health) to detect a lost token.
    pub verify_interval: Duration,
    /// `SCHEDULER_ID` (default `<hostname>-<random>`): this replica's name in the lease.
    pub scheduler_id: String,
    /// `METRICS_INTERVAL` (default `15s`, `0` = off): how often JetStream state is sampled.
    pub metrics_interval: Duration,
    /// `KHOROS_RETRY_MAX`, `_MIN_DELAY`, `_MAX_DELAY`, `_MAX_ELAPSED`: retries of a refresh
    /// that failed with 5xx, 429, a timeout or a connection error.
    pub retry: RetryPolicy,
    /// `SHUTDOWN_TIMEOUT` (default `30s`): how long a rotation in flight may finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// `NATS_URL`, `NATS_CREDS_FILE`, `NATS_NAME`.
    pub nats: NatsConfig,
    /// Stream and bucket limits, including `LEASE_TTL` (life of the lease without renewal).
    pub topology: TopologyConfig,
    /// Wall clock of the schedule, the lease and the claims (a `ManualClock` in tests).
    pub clock: Arc<dyn Clock>,
}

impl SchedulerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::from_env_with_clock(env, Arc::new(SystemClock))
    }

    /// As [`Self::from_env`], with the clock tests move by hand.
    pub fn from_env_with_clock(env: &Env, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let topology = TopologyConfig::from_env(env)?;
        let retry = RetryPolicy::from_env(env, "KHOROS", RetryPolicy::standard())?;
        let khoros_timeout = env.duration("KHOROS_TIMEOUT", Duration::from_secs(10))?;
        let schedule = SchedulePolicy {
            rotate_every: positive(env, "TOKEN_ROTATE_EVERY", Duration::from_secs(7 * 86_400))?,
            expiry_margin: env.duration("TOKEN_EXPIRY_MARGIN", Duration::from_secs(2 * 86_400))?,
            retry_after_failure: env
                .duration("TOKEN_RETRY_AFTER_FAILURE", Duration::from_secs(3600))?,
            claim_timeout: claim_timeout(&retry, khoros_timeout),
        };
        let app_id = env.required("KHOROS_APP_ID")?;
        positive(env, "LEASE_TTL", topology.lease_ttl)?;
        Ok(Self {
            listen: env.parse("SCHEDULER_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8083)))?,
            metrics_listen: env.parse("METRICS_LISTEN", SocketAddr::from(([0, 0, 0, 0], 9092)))?,
            khoros_api_url: env.string("KHOROS_API_URL", DEFAULT_KHOROS_API_URL),
            khoros_timeout,
            app_id,
            seed_token: env.secret("KHOROS_TOKEN")?,
            seed_expires_at_ms: env.parse("KHOROS_TOKEN_EXPIRES_AT_MS", 0)?,
            schedule,
            check_interval: positive(env, "TOKEN_CHECK_INTERVAL", Duration::from_secs(60))?,
            verify_interval: env.duration("TOKEN_VERIFY_INTERVAL", Duration::from_secs(60))?,
            scheduler_id: env.get("SCHEDULER_ID").unwrap_or_else(default_scheduler_id),
            metrics_interval: env.duration("METRICS_INTERVAL", Duration::from_secs(15))?,
            retry,
            shutdown_timeout: env.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(30))?,
            nats: NatsConfig::from_env(env, "scheduler")?,
            topology,
            clock,
        })
    }

    /// How often the lease is renewed: three times per `LEASE_TTL`, so one missed renewal
    /// does not lose it.
    pub fn lease_renew_every(&self) -> Duration {
        (self.topology.lease_ttl / 3).max(Duration::from_millis(10))
    }
}

/// A duration that must be above zero (a zero interval would spin).
fn positive(env: &Env, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration(name, default)?;
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            name: name.into(),
            value: "0".into(),
            reason: "must be above zero".into(),
        });
    }
    Ok(value)
}

/// The longest a rotation attempt can take: every try timing out plus every backoff, plus
/// slack for the KV writes. A claim older than this belongs to a scheduler that died.
fn claim_timeout(retry: &RetryPolicy, call_timeout: Duration) -> Duration {
    let attempts = u32::try_from(retry.max_retries.saturating_add(1)).unwrap_or(u32::MAX);
    retry.max_elapsed + call_timeout.saturating_mul(attempts) + Duration::from_secs(30)
}

/// `<hostname>-<8 hex>`: the pod name in Kubernetes, unique even for two replicas on a laptop.
fn default_scheduler_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scheduler".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&str, &str)]) -> Env {
        let mut pairs = vec![("KHOROS_APP_ID", "kore-bridge")];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = SchedulerConfig::from_env(&env(&[])).unwrap();
        assert_eq!(c.listen.port(), 8083);
        assert_eq!(c.metrics_listen.port(), 9092);
        assert_eq!(c.khoros_api_url, DEFAULT_KHOROS_API_URL);
        assert_eq!(c.schedule.rotate_every, Duration::from_secs(7 * 86_400));
        assert_eq!(c.schedule.expiry_margin, Duration::from_secs(2 * 86_400));
        assert_eq!(c.check_interval, Duration::from_secs(60));
        assert_eq!(c.metrics_interval, Duration::from_secs(15));
        assert!(c.seed_token.is_none());
        assert_eq!(c.seed_expires_at_ms, 0);
        assert!(!c.scheduler_id.is_empty());
        assert!(c.lease_renew_every() < c.topology.lease_ttl);
    }

    #[test]
    fn app_id_is_required_and_zero_intervals_are_refused() {
        let err = SchedulerConfig::from_env(&Env::from_pairs([("X", "y")])).unwrap_err();
        assert!(err.to_string().contains("KHOROS_APP_ID"), "{err}");
        let err = SchedulerConfig::from_env(&env(&[("TOKEN_CHECK_INTERVAL", "0s")])).unwrap_err();
        assert!(err.to_string().contains("TOKEN_CHECK_INTERVAL"), "{err}");
    }

    #[test]
    fn the_seed_token_is_a_secret() {
        let c = SchedulerConfig::from_env(&env(&[("KHOROS_TOKEN", "tok-123")])).unwrap();
        assert_eq!(c.seed_token.as_ref().unwrap().expose(), "tok-123");
        assert!(!format!("{c:?}").contains("tok-123"));
    }

    #[test]
    fn a_claim_outlives_every_retry_of_the_refresh() {
        // The retry budget bounds Retry-After too, so this sum is the refresh's worst case.
        let c = SchedulerConfig::from_env(&env(&[("KHOROS_RETRY_MAX_ELAPSED", "5m")])).unwrap();
        let attempts = u32::try_from(c.retry.max_retries + 1).unwrap();
        let worst = c.retry.max_elapsed + c.khoros_timeout * attempts;
        assert!(c.schedule.claim_timeout > worst, "{c:?}");
    }

    #[test]
    fn ids_from_two_replicas_differ() {
        assert_ne!(default_scheduler_id(), default_scheduler_id());
    }
}
