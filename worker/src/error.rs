//! `WorkerError`: why handling an event could not finish, and what the consumer does about it.

/// A failure that stops handling of one delivery.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS (KV or a publish) is unavailable: the event is retried in place for a bounded
    /// time (`INFRA_RETRY_FOR`), then dead-lettered.
    #[error("infrastructure unavailable: {0}")]
    Infrastructure(String),
    /// The event cannot ever be handled (not JSON, wrong shape): it goes to the dead letters.
    #[error("poison event: {0}")]
    Poison(String),
    /// Another processor wrote this event's progress since it was read (a stalled owner and
    /// its successor): start over from a fresh read, which usually finds the event done.
    #[error("progress written by another processor")]
    Superseded,
}

impl WorkerError {
    pub fn infra(e: impl std::fmt::Display) -> Self {
        WorkerError::Infrastructure(e.to_string())
    }
}
