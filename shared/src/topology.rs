//! NATS connection and the JetStream topology every service relies on.
//!
//! [`Topology::ensure`] is idempotent: it creates what is missing and updates limits that
//! changed, so every service can call it at start-up in any order.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::ConnectOptions;

use crate::config::{ConfigError, Env, NatsConfig};
use crate::routing::{DEAD_LETTER_PREFIX, EVENTS_PREFIX, KORE_REPLIES_PREFIX};

/// Stream holding every accepted Khoros event.
pub const EVENTS_STREAM: &str = "KHOROS_EVENTS";
/// Stream holding Kore.ai asynchronous deliveries.
pub const KORE_REPLIES_STREAM: &str = "KORE_REPLIES";
/// Stream holding what finally failed, with the reason.
pub const DEAD_LETTER_STREAM: &str = "DEAD_LETTERS";

/// KV bucket names.
pub mod buckets {
    /// Accepted HMAC signatures and their request id, for the replay check (TTL = skew window).
    pub const SIGNATURES: &str = "bridge_signatures";
    /// The current Bot API v3 token, written by the scheduler and watched by workers.
    pub const TOKENS: &str = "bridge_tokens";
    /// Per-conversation state: owner, display id, closed.
    pub const CONVERSATIONS: &str = "bridge_conversations";
    /// Progress of each processed event, for exactly-once replies.
    pub const PROCESSED: &str = "bridge_processed";
    /// Scheduler lease.
    pub const LEASES: &str = "bridge_leases";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

impl std::str::FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "file" => Ok(Storage::File),
            "memory" => Ok(Storage::Memory),
            _ => Err("expected file or memory".into()),
        }
    }
}

impl From<Storage> for stream::StorageType {
    fn from(s: Storage) -> Self {
        match s {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }
}

/// Sizes and limits of the streams and buckets (read by every service).
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    /// `JS_REPLICAS`: replicas of every stream and bucket (3 in a production cluster).
    pub replicas: usize,
    /// `JS_STORAGE`: `file` (default) or `memory`.
    pub storage: Storage,
    /// `EVENTS_MAX_AGE`: how long an event stays in the stream.
    pub events_max_age: Duration,
    /// `EVENTS_MAX_BYTES`: size cap of the events stream (-1 = unlimited).
    pub events_max_bytes: i64,
    /// `DEDUP_WINDOW`: JetStream duplicate window keyed by `x-amzn-RequestId`.
    pub dedup_window: Duration,
    /// `PARTITIONS`: number of conversation partitions per event type.
    pub partitions: u32,
    /// `DLQ_MAX_AGE`: how long dead letters are kept.
    pub dead_letter_max_age: Duration,
    /// `PROCESSED_TTL`: how long processed-event records are kept.
    pub processed_ttl: Duration,
    /// `HMAC_MAX_SKEW`: allowed clock skew; also the life of replay-guard records.
    pub max_skew: Duration,
    /// `LEASE_TTL`: life of the scheduler lease without renewal.
    pub lease_ttl: Duration,
}

impl TopologyConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let partitions: u32 = env.parse("PARTITIONS", 16)?;
        if partitions == 0 || partitions > 1024 {
            return Err(ConfigError::Invalid {
                name: "PARTITIONS".into(),
                value: partitions.to_string(),
                reason: "must be between 1 and 1024".into(),
            });
        }
        Ok(Self {
            replicas: env.parse("JS_REPLICAS", 1)?,
            storage: env.parse("JS_STORAGE", Storage::File)?,
            events_max_age: env.duration("EVENTS_MAX_AGE", Duration::from_secs(7 * 86_400))?,
            events_max_bytes: env.parse("EVENTS_MAX_BYTES", -1)?,
            dedup_window: env.duration("DEDUP_WINDOW", Duration::from_secs(600))?,
            partitions,
            dead_letter_max_age: env.duration("DLQ_MAX_AGE", Duration::from_secs(30 * 86_400))?,
            processed_ttl: env.duration("PROCESSED_TTL", Duration::from_secs(86_400))?,
            max_skew: env.duration("HMAC_MAX_SKEW", Duration::from_secs(60))?,
            lease_ttl: env.duration("LEASE_TTL", Duration::from_secs(30))?,
        })
    }

    /// A signature stays usable for `max_skew` either side of its timestamp, so its record
    /// must outlive twice the skew (plus slack for clock differences between replicas).
    pub fn signature_ttl(&self) -> Duration {
        self.max_skew * 2 + Duration::from_secs(5)
    }
}

/// Connects with unlimited reconnects: a service outlives a NATS restart.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = ConnectOptions::new()
        .name(&cfg.name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    if let Some(path) = &cfg.creds_file {
        options = options.credentials_file(path).await?;
    }
    options.connect(&cfg.url).await
}

/// Flushes what the client still buffers, at shutdown. Bounded: with NATS gone the client
/// would wait for a reconnect forever and the process would never exit.
pub async fn flush_at_shutdown(client: &async_nats::Client) {
    match tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "nats flush at shutdown failed"),
        Err(_) => tracing::warn!("nats flush at shutdown timed out (NATS unreachable)"),
    }
}

/// The streams and buckets of the bridge.
pub struct Topology {
    pub config: TopologyConfig,
}

impl Topology {
    pub fn new(config: TopologyConfig) -> Self {
        Self { config }
    }

    fn stream(&self, name: &str, subjects: &str, max_age: Duration) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            storage: self.config.storage.into(),
            num_replicas: self.config.replicas,
            max_age,
            duplicate_window: self.config.dedup_window,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    pub fn events_stream(&self) -> stream::Config {
        stream::Config {
            max_bytes: self.config.events_max_bytes,
            ..self.stream(
                EVENTS_STREAM,
                &format!("{EVENTS_PREFIX}.>"),
                self.config.events_max_age,
            )
        }
    }

    /// The backing stream of a KV bucket, shaped as async-nats' own `create_key_value` does.
    /// We build it ourselves because that call first queries account info, whose reply from
    /// nats-server 2.9 (Debian's) async-nats cannot parse; the stream itself works on 2.9+.
    fn bucket(&self, name: &str, history: i64, max_age: Duration) -> stream::Config {
        stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: history,
            max_age,
            storage: self.config.storage.into(),
            num_replicas: self.config.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    /// Creates or updates every stream and bucket.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), TopologyError> {
        let c = &self.config;
        let streams = [
            self.events_stream(),
            self.stream(
                KORE_REPLIES_STREAM,
                &format!("{KORE_REPLIES_PREFIX}.>"),
                c.events_max_age,
            ),
            self.stream(
                DEAD_LETTER_STREAM,
                &format!("{DEAD_LETTER_PREFIX}.>"),
                c.dead_letter_max_age,
            ),
        ];
        for config in streams {
            let name = config.name.clone();
            js.create_or_update_stream(config)
                .await
                .map_err(|e| TopologyError(format!("stream {name}: {e}")))?;
        }
        let buckets = [
            self.bucket(buckets::SIGNATURES, 1, c.signature_ttl()),
            self.bucket(buckets::TOKENS, 5, Duration::ZERO),
            self.bucket(buckets::CONVERSATIONS, 1, Duration::ZERO),
            self.bucket(buckets::PROCESSED, 1, c.processed_ttl),
            self.bucket(buckets::LEASES, 1, c.lease_ttl),
        ];
        for config in buckets {
            let name = config.name.clone();
            js.create_or_update_stream(config)
                .await
                .map_err(|e| TopologyError(format!("bucket {name}: {e}")))?;
        }
        Ok(())
    }
}

/// A stream or bucket could not be created or updated.
#[derive(Debug, thiserror::Error)]
#[error("jetstream topology: {0}")]
pub struct TopologyError(pub String);
