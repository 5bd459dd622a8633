//! `WorkerError`: why handling an event could not finish, and what the consumer does about it.

use shared::kv::KvError;

/// A failure that stops handling of one delivery.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS (KV or a publish) is unavailable: the event is retried in place for a bounded
    /// time (`INFRA_RETRY_FOR`), then dead-lettered.
    #[error("infrastructure unavailable: {0}")]
    Infrastructure(#[source] async_nats::Error),
    /// The event cannot ever be handled: it goes to the dead letters.
    #[error("poison event: {0}")]
    Poison(#[from] Poison),
    /// Another processor wrote this event's progress since it was read (a stalled owner and
    /// its successor): start over from a fresh read, which usually finds the event done.
    #[error("progress written by another processor")]
    Superseded,
    /// The partition's owner record no longer names this replica: it must not pull again.
    #[error("the partition's owner record no longer names this replica")]
    NotOwner,
}

/// What makes an event impossible to handle.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("dead letter {sequence} is unreadable: {source}")]
    UnreadableLetter {
        sequence: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("dead letter {sequence} holds a truncated event and cannot be replayed")]
    TruncatedLetter { sequence: u64 },
}

impl WorkerError {
    /// NATS failed: any NATS client error, or a description of what went wrong.
    pub fn infra(e: impl Into<async_nats::Error>) -> Self {
        WorkerError::Infrastructure(e.into())
    }
}

impl From<KvError> for WorkerError {
    fn from(e: KvError) -> Self {
        WorkerError::Infrastructure(Box::new(e))
    }
}
