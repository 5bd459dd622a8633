//! Typed JSON records in NATS KV with compare-and-set writes: the only way the scheduler
//! touches the buckets, so every write states which revision it expects to replace.
//!
//! Deleted and purged keys read as absent. A write that expects "absent" uses `create`,
//! one that expects a revision uses `update`; either fails with [`KvError::Conflict`] when
//! another writer got there first.

use async_nats::jetstream::kv::{self, Operation, Store, UpdateErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value read from KV together with the revision a CAS write must name.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// A KV read or write that failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Another writer changed the key since it was read.
    #[error("{key}: changed by another writer")]
    Conflict { key: String },
    /// The stored value is not the JSON we expect.
    #[error("{key}: unreadable value: {reason}")]
    Decode { key: String, reason: String },
    /// NATS did not answer or refused.
    #[error("{key}: {reason}")]
    Nats { key: String, reason: String },
}

/// Reads `key`; `None` when absent, deleted or purged.
pub async fn read<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Versioned<T>>, KvError> {
    let entry = store.entry(key).await.map_err(|e| KvError::Nats {
        key: key.into(),
        reason: e.to_string(),
    })?;
    let Some(entry) = entry else { return Ok(None) };
    if matches!(entry.operation, Operation::Delete | Operation::Purge) {
        return Ok(None);
    }
    let value = serde_json::from_slice(&entry.value).map_err(|e| KvError::Decode {
        key: key.into(),
        reason: e.to_string(),
    })?;
    Ok(Some(Versioned {
        value,
        revision: entry.revision,
    }))
}

/// The revision a CAS write on `key` must name now (`None` when absent, deleted or purged),
/// whether or not the value decodes.
pub async fn revision(store: &Store, key: &str) -> Result<Option<u64>, KvError> {
    let entry = store.entry(key).await.map_err(|e| KvError::Nats {
        key: key.into(),
        reason: e.to_string(),
    })?;
    Ok(entry
        .filter(|e| !matches!(e.operation, Operation::Delete | Operation::Purge))
        .map(|e| e.revision))
}

/// Writes `value` if the key is still at `expected` (`None` = absent); returns the new revision.
pub async fn write<T: Serialize>(
    store: &Store,
    key: &str,
    value: &T,
    expected: Option<u64>,
) -> Result<u64, KvError> {
    let bytes = bytes::Bytes::from(serde_json::to_vec(value).expect("records serialise"));
    match expected {
        None => store.create(key, bytes).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => KvError::Conflict { key: key.into() },
            _ => KvError::Nats {
                key: key.into(),
                reason: e.to_string(),
            },
        }),
        Some(revision) => store
            .update(key, bytes, revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict { key: key.into() },
                _ => KvError::Nats {
                    key: key.into(),
                    reason: e.to_string(),
                },
            }),
    }
}
