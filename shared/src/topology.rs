//! NATS connection and the JetStream topology every service relies on.
//!
//! [`Topology::ensure`] is idempotent: it creates what is missing and updates limits that
//! changed, so every service can call it at start-up in any order. Each service declares the
//! [`Resource`]s it needs and runs a [`keeper`](Topology::keep) that checks them all the time:
//! one deleted at runtime is recreated within a check interval, and readiness says so
//! meanwhile (see `docs/decisions.md`, "A topology that heals").

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::ConnectOptions;

use crate::config::{ConfigError, Env, NatsConfig};
use crate::contract::subject::{DEAD_LETTER_PREFIX, EVENTS_PREFIX, KORE_REPLIES_PREFIX};

/// Stream holding every accepted Khoros event.
pub const EVENTS_STREAM: &str = "KHOROS_EVENTS";
/// Stream holding Kore.ai asynchronous deliveries.
pub const KORE_REPLIES_STREAM: &str = "KORE_REPLIES";
/// Stream holding what finally failed, with the reason.
pub const DEAD_LETTER_STREAM: &str = "DEAD_LETTERS";

/// KV bucket names.
pub mod buckets {
    /// The current Bot API v3 token, written by the scheduler and watched by workers.
    pub const TOKENS: &str = "bridge_tokens";
    /// Per-conversation state: owner, display id, closed.
    pub const CONVERSATIONS: &str = "bridge_conversations";
    /// Progress of each processed event, for exactly-once replies.
    pub const PROCESSED: &str = "bridge_processed";
    /// Scheduler lease.
    pub const LEASES: &str = "bridge_leases";
    /// Worker membership heartbeats and partition owner records.
    pub const PARTITIONS: &str = "bridge_partitions";
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
    /// `PROCESSED_TTL`: how long processed-event records (and the signature records that
    /// refuse replays) are kept.
    pub processed_ttl: Duration,
    /// `HMAC_MAX_SKEW`: allowed clock skew of signed webhook requests.
    pub max_skew: Duration,
    /// `LEASE_TTL`: life of the scheduler lease without renewal.
    pub lease_ttl: Duration,
    /// `TOPOLOGY_CHECK_INTERVAL`: how often each service checks that what it needs exists.
    pub check_interval: Duration,
}

impl TopologyConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let partitions: u32 = env.parse("PARTITIONS", 256)?;
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
            check_interval: env.duration("TOPOLOGY_CHECK_INTERVAL", Duration::from_secs(1))?,
        })
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
    options.connect(cfg.servers().as_slice()).await
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

/// A stream or bucket a service relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// [`EVENTS_STREAM`].
    Events,
    /// [`KORE_REPLIES_STREAM`].
    KoreReplies,
    /// [`DEAD_LETTER_STREAM`].
    DeadLetters,
    /// A KV bucket, by name (see [`buckets`]).
    Bucket(&'static str),
}

impl Resource {
    /// Every stream and bucket of the bridge.
    pub const ALL: [Resource; 8] = [
        Resource::Events,
        Resource::KoreReplies,
        Resource::DeadLetters,
        Resource::Bucket(buckets::TOKENS),
        Resource::Bucket(buckets::CONVERSATIONS),
        Resource::Bucket(buckets::PROCESSED),
        Resource::Bucket(buckets::LEASES),
        Resource::Bucket(buckets::PARTITIONS),
    ];

    /// The JetStream stream behind it (`KV_<bucket>` for a bucket).
    pub fn stream_name(self) -> String {
        match self {
            Resource::Events => EVENTS_STREAM.into(),
            Resource::KoreReplies => KORE_REPLIES_STREAM.into(),
            Resource::DeadLetters => DEAD_LETTER_STREAM.into(),
            Resource::Bucket(name) => format!("KV_{name}"),
        }
    }

    /// The name operators know it by (stream name, or bucket name).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Events => EVENTS_STREAM,
            Resource::KoreReplies => KORE_REPLIES_STREAM,
            Resource::DeadLetters => DEAD_LETTER_STREAM,
            Resource::Bucket(name) => name,
        }
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

    /// A stream of work: a message leaves it when a worker acknowledges it (work queue), so the
    /// size cap bounds the backlog; at the cap new messages are refused (the ingress answers
    /// 503 and Khoros retries) instead of old, unprocessed ones being dropped.
    fn work_stream(&self, name: &str, subjects: &str, max_bytes: i64) -> stream::Config {
        stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_bytes,
            ..self.stream(name, subjects, self.config.events_max_age)
        }
    }

    pub fn events_stream(&self) -> stream::Config {
        self.work_stream(
            EVENTS_STREAM,
            &format!("{EVENTS_PREFIX}.>"),
            self.config.events_max_bytes,
        )
    }

    fn bucket(&self, name: &str, history: i64, max_age: Duration) -> kv::Config {
        kv::Config {
            bucket: name.into(),
            history,
            max_age,
            storage: self.config.storage.into(),
            num_replicas: self.config.replicas,
            ..Default::default()
        }
    }

    fn stream_config(&self, resource: Resource) -> Option<stream::Config> {
        let c = &self.config;
        match resource {
            Resource::Events => Some(self.events_stream()),
            Resource::KoreReplies => {
                Some(self.work_stream(KORE_REPLIES_STREAM, &format!("{KORE_REPLIES_PREFIX}.>"), -1))
            }
            Resource::DeadLetters => Some(self.stream(
                DEAD_LETTER_STREAM,
                &format!("{DEAD_LETTER_PREFIX}.>"),
                c.dead_letter_max_age,
            )),
            Resource::Bucket(_) => None,
        }
    }

    fn bucket_config(&self, name: &'static str) -> kv::Config {
        let c = &self.config;
        match name {
            buckets::TOKENS => self.bucket(name, 5, Duration::ZERO),
            buckets::PROCESSED => self.bucket(name, 1, c.processed_ttl),
            buckets::LEASES => self.bucket(name, 1, c.lease_ttl),
            _ => self.bucket(name, 1, Duration::ZERO),
        }
    }

    /// Creates or updates one stream or bucket.
    pub async fn ensure_one(
        &self,
        js: &jetstream::Context,
        resource: Resource,
    ) -> Result<(), TopologyError> {
        match resource {
            Resource::Bucket(name) => js
                .create_or_update_key_value(self.bucket_config(name))
                .await
                .map(drop)
                .map_err(|source| TopologyError::Bucket { name, source }),
            stream => {
                let config = self.stream_config(stream).expect("a stream resource");
                js.create_or_update_stream(config)
                    .await
                    .map(drop)
                    .map_err(|source| TopologyError::Stream {
                        name: stream.name(),
                        source,
                    })
            }
        }
    }

    /// Creates or updates the given streams and buckets.
    pub async fn ensure_all(
        &self,
        js: &jetstream::Context,
        resources: &[Resource],
    ) -> Result<(), TopologyError> {
        for &resource in resources {
            self.ensure_one(js, resource).await?;
        }
        Ok(())
    }

    /// Creates or updates every stream and bucket of the bridge.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), TopologyError> {
        self.ensure_all(js, &Resource::ALL).await
    }

    /// Starts the keeper of `resources`: ensures them (retrying until NATS answers), then
    /// checks every `TOPOLOGY_CHECK_INTERVAL`, or at once when [`Readiness::nudge`] is called,
    /// and recreates whatever is missing. Stops with `shutdown`.
    pub fn keep(
        self,
        js: jetstream::Context,
        resources: &[Resource],
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Readiness, tokio::task::JoinHandle<()>) {
        let readiness = Readiness::new(resources);
        let task = self.keep_for(js, readiness.clone(), shutdown);
        (readiness, task)
    }

    /// [`Self::keep`] for a [`Readiness`] made earlier (a service that builds its routes
    /// before it starts its tasks).
    pub fn keep_for(
        self,
        js: jetstream::Context,
        readiness: Readiness,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(keeper::run(self, js, readiness, shutdown))
    }
}

/// A stream or bucket could not be created, updated or looked up.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("stream {name}: {source}")]
    Stream {
        name: &'static str,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
    #[error("looking up {name}: {source}")]
    Lookup {
        name: &'static str,
        #[source]
        source: jetstream::context::GetStreamError,
    },
}

mod keeper;
pub use keeper::{readyz, Readiness, ReadyReport, RECREATED};
