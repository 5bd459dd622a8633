//! Worker configuration, read from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use shared::config::{ConfigError, Env, NatsConfig};
use shared::contract::EventKind;
use shared::kore::{KoreConfig, KoreMode, KoreVersion};
use shared::retry::RetryPolicy;
use shared::topology::TopologyConfig;
use shared::Secret;

/// Circuit breaker in front of Kore.ai.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// `BREAKER_FAILURES`: consecutive failed turns that open the breaker.
    pub failures: u32,
    /// `BREAKER_COOLDOWN`: how long it stays open before one trial call.
    pub cooldown: Duration,
}

/// Everything the worker needs; see the README's configuration table.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `WORKER_LISTEN`: `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// `METRICS_LISTEN`: Prometheus listener.
    pub metrics_listen: SocketAddr,
    /// `WORKER_EVENT_TYPES`: which consumers this process runs (pools scale independently).
    pub event_types: Vec<EventKind>,
    /// `WORKER_CONCURRENCY`: events handled at once by this process (bounds upstream load).
    pub concurrency: usize,
    /// `PARTITION_MAX_IN_FLIGHT`: events one owned partition holds unacknowledged (running or
    /// waiting behind their conversation or for a permit).
    pub partition_max_in_flight: i64,
    /// `INFRA_RETRY_FOR`: how long an event is retried in place while NATS misbehaves before
    /// it is dead-lettered and its conversation moves on.
    pub infra_retry_for: Duration,
    /// `WORKER_ID`: member id in the partition table (default: host name plus a random suffix).
    pub member_id: String,
    /// `MEMBER_TIMEOUT`: a replica not heard from for this long loses its partitions.
    pub member_timeout: Duration,
    /// `KORE_USER_ID_KEY` / `_FILE`: keys the hash that makes Kore.ai user ids.
    pub kore_user_id_key: Secret,
    /// `KORE_POLL_INTERVAL`: pause between V2 polls of a slow turn.
    pub kore_poll_interval: Duration,
    /// `KORE_POLL_TIMEOUT`: how long a V2 turn is polled before the customer is handed off.
    pub kore_poll_timeout: Duration,
    /// `KORE_ASYNC_DEADLINE`: how long an async turn may stay unanswered before hand-off.
    pub kore_async_deadline: Duration,
    /// `ACK_WAIT`: redelivery delay of an unacknowledged message (kept alive while working).
    pub ack_wait: Duration,
    /// `MAX_DELIVER`: deliveries before an event goes to the dead-letter stream.
    pub max_deliver: i64,
    /// `KHOROS_APP_ID`: our bot's appId; only conversations owned by BOT(appId) are answered.
    pub app_id: String,
    /// `KHOROS_API_URL`: the regional Bot API v3 gateway.
    pub khoros_url: String,
    /// `KHOROS_TIMEOUT`: per Bot API call.
    pub khoros_timeout: Duration,
    /// `KHOROS_RETRY_*`.
    pub khoros_retry: RetryPolicy,
    /// `KORE_*`.
    pub kore: KoreConfig,
    /// `KORE_RETRY_*`.
    pub kore_retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// `HANDOFF_TASK_NAMES`: completed Kore tasks that mean "hand to an agent".
    pub handoff_task_names: Vec<String>,
    /// `TAG_BOT_REPLY`: Care tag ids applied at the bot's first reply in a conversation.
    pub bot_reply_tags: Vec<i64>,
    /// `TAG_HANDOFF`: Care tag ids applied at every hand-off.
    pub handoff_tags: Vec<i64>,
    /// `CONVERSATION_CLOSED_GRACE`: how long a CLOSED conversation's record is kept.
    pub closed_grace: Duration,
    /// `SHUTDOWN_TIMEOUT`: in-flight work gets this long after SIGTERM, then is nak'ed.
    pub shutdown_timeout: Duration,
    pub nats: NatsConfig,
    pub topology: TopologyConfig,
}

impl WorkerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kore_mode = match env
            .string("KORE_MODE", "sync")
            .to_ascii_lowercase()
            .as_str()
        {
            "sync" => KoreMode::Sync,
            "async" => KoreMode::Async,
            other => return Err(invalid("KORE_MODE", other, "expected sync or async")),
        };
        let default_types = if kore_mode == KoreMode::Async {
            "message,update,control,kore_reply"
        } else {
            "message,update,control"
        };
        let event_types = env
            .string("WORKER_EVENT_TYPES", default_types)
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                EventKind::parse(s).ok_or_else(|| {
                    invalid(
                        "WORKER_EVENT_TYPES",
                        s,
                        "expected message, update, control or kore_reply",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if event_types.is_empty() {
            return Err(invalid("WORKER_EVENT_TYPES", "", "at least one event type"));
        }
        let kore = KoreConfig {
            base_url: env.string("KORE_URL", "https://bots.kore.ai"),
            bot_id: env.required("KORE_BOT_ID")?,
            hook_instance: env.get("KORE_HOOK_INSTANCE"),
            client_id: env.required("KORE_CLIENT_ID")?,
            client_secret: env.required_secret("KORE_CLIENT_SECRET")?,
            algorithm: match env
                .string("KORE_JWT_ALG", "HS256")
                .to_ascii_uppercase()
                .as_str()
            {
                "HS256" => Algorithm::HS256,
                "HS512" => Algorithm::HS512,
                other => return Err(invalid("KORE_JWT_ALG", other, "expected HS256 or HS512")),
            },
            version: match env
                .string("KORE_API_VERSION", "v2")
                .to_ascii_lowercase()
                .as_str()
            {
                "v1" | "1" => KoreVersion::V1,
                "v2" | "2" => KoreVersion::V2,
                other => return Err(invalid("KORE_API_VERSION", other, "expected v1 or v2")),
            },
            mode: kore_mode,
            timeout: env.duration("KORE_TIMEOUT", Duration::from_secs(16))?,
        };
        Ok(Self {
            listen: env.parse("WORKER_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8084)))?,
            metrics_listen: env.parse("METRICS_LISTEN", SocketAddr::from(([0, 0, 0, 0], 9091)))?,
            event_types,
            concurrency: env.parse("WORKER_CONCURRENCY", 64)?.max(1),
            partition_max_in_flight: env.parse("PARTITION_MAX_IN_FLIGHT", 64_i64)?.max(1),
            infra_retry_for: env.duration("INFRA_RETRY_FOR", Duration::from_secs(60))?,
            member_id: env.get("WORKER_ID").unwrap_or_else(default_member_id),
            member_timeout: env.duration("MEMBER_TIMEOUT", Duration::from_secs(6))?,
            kore_user_id_key: match env.secret("KORE_USER_ID_KEY")? {
                Some(key) => key,
                None => derived_user_id_key(&kore.client_secret),
            },
            kore_poll_interval: env.duration("KORE_POLL_INTERVAL", Duration::from_millis(500))?,
            kore_poll_timeout: env.duration("KORE_POLL_TIMEOUT", Duration::from_secs(60))?,
            kore_async_deadline: env.duration("KORE_ASYNC_DEADLINE", Duration::from_secs(60))?,
            ack_wait: env.duration("ACK_WAIT", Duration::from_secs(30))?,
            max_deliver: env.parse("MAX_DELIVER", 10)?,
            app_id: env.required("KHOROS_APP_ID")?,
            khoros_url: env.string("KHOROS_API_URL", "https://api.app.lithium.com"),
            khoros_timeout: env.duration("KHOROS_TIMEOUT", Duration::from_secs(10))?,
            khoros_retry: RetryPolicy::from_env(env, "KHOROS", RetryPolicy::standard())?,
            kore,
            kore_retry: RetryPolicy::from_env(
                env,
                "KORE",
                RetryPolicy {
                    max_retries: 3,
                    min_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(2),
                    max_elapsed: Duration::from_secs(10),
                },
            )?,
            breaker: BreakerConfig {
                failures: env.parse("BREAKER_FAILURES", 5)?,
                cooldown: env.duration("BREAKER_COOLDOWN", Duration::from_secs(30))?,
            },
            handoff_task_names: list(env, "HANDOFF_TASK_NAMES"),
            bot_reply_tags: tag_ids(env, "TAG_BOT_REPLY")?,
            handoff_tags: tag_ids(env, "TAG_HANDOFF")?,
            closed_grace: env.duration("CONVERSATION_CLOSED_GRACE", Duration::from_secs(600))?,
            shutdown_timeout: env.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(20))?,
            nats: NatsConfig::from_env(env, "worker")?,
            topology: TopologyConfig::from_env(env)?,
        })
    }
}

/// Host name (the pod name) plus a random suffix: a restarted pod is a new member, so it never
/// mistakes its predecessor's partitions for running ones.
fn default_member_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_else(|_| "worker".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(48)
        .collect();
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Without `KORE_USER_ID_KEY` the key is derived from the Kore.ai client secret (stable while
/// the secret is); set it explicitly so rotating the secret leaves new user ids unchanged.
fn derived_user_id_key(client_secret: &Secret) -> Secret {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"khoros-kore-bridge user id key\0");
    h.update(client_secret.expose().as_bytes());
    Secret::new(shared::contract::route::hex(&h.finalize()))
}

fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn list(env: &Env, name: &str) -> Vec<String> {
    env.get(name)
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn tag_ids(env: &Env, name: &str) -> Result<Vec<i64>, ConfigError> {
    list(env, name)
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(name, s, "expected comma-separated integer tag ids"))
        })
        .collect()
}
