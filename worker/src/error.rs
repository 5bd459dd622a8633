//! `WorkerError`: why handling an event could not finish, and what the consumer does about it.

/// A failure that stops handling of one delivery.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS (KV or a publish) is unavailable: the event is retried in place, order kept.
    #[error("infrastructure unavailable: {0}")]
    Infrastructure(String),
    /// The event cannot ever be handled (not JSON, wrong shape): it goes to the dead letters.
    #[error("poison event: {0}")]
    Poison(String),
}

impl WorkerError {
    pub fn infra(e: impl std::fmt::Display) -> Self {
        WorkerError::Infrastructure(e.to_string())
    }
}
