//! Typed JSON records in NATS KV with compare-and-set writes: the one way the services read
//! and write their records, so every write states which revision it expects to replace.
//!
//! Deleted and purged keys read as absent. A write that expects "absent" uses `create` (which
//! also succeeds over a delete marker), one that expects a revision uses `update`; either
//! fails with [`KvError::Conflict`] when another writer got there first.

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
    #[error("{key}: unreadable value: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// NATS did not answer or refused.
    #[error("{key}: {source}")]
    Nats {
        key: String,
        #[source]
        source: async_nats::Error,
    },
}

impl KvError {
    fn nats(key: &str, source: impl Into<async_nats::Error>) -> Self {
        KvError::Nats {
            key: key.into(),
            source: source.into(),
        }
    }
}

/// The live entry under `key`: `None` when absent, deleted or purged.
async fn live_entry(store: &Store, key: &str) -> Result<Option<kv::Entry>, KvError> {
    let entry = store.entry(key).await.map_err(|e| KvError::nats(key, e))?;
    Ok(entry.filter(|e| !matches!(e.operation, Operation::Delete | Operation::Purge)))
}

/// Reads `key`; `None` when absent, deleted or purged.
pub async fn read<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Versioned<T>>, KvError> {
    let Some(entry) = live_entry(store, key).await? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&entry.value).map_err(|source| KvError::Decode {
        key: key.into(),
        source,
    })?;
    Ok(Some(Versioned {
        value,
        revision: entry.revision,
    }))
}

/// Reads `key` as the bucket's stream leader has it (`STREAM.MSG.GET`), not as any replica
/// does: on replicated buckets `Store::entry` asks every replica (`DIRECT.GET`, local one
/// first), and a replica still catching up (a node back from a network cut) answers with what
/// it had. For the reads a fence relies on (the scheduler's rotation record and token).
pub async fn read_from_leader<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Versioned<T>>, KvError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", store.prefix);
    let message = match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(KvError::nats(key, e)),
    };
    // A delete or purge marker (or a limit marker) is a header on an empty message.
    let removed = message
        .headers
        .get("KV-Operation")
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
        || message.headers.get("Nats-Marker-Reason").is_some();
    if removed {
        return Ok(None);
    }
    let value = serde_json::from_slice(&message.payload).map_err(|source| KvError::Decode {
        key: key.into(),
        source,
    })?;
    Ok(Some(Versioned {
        value,
        revision: message.sequence,
    }))
}

/// Reads `key` for a read-modify-write: the value, or the default when it is absent or
/// unreadable (an unreadable record is replaced, not fatal), and the revision a CAS write must
/// name (`None` when absent, deleted or purged).
pub async fn read_or_default<T: DeserializeOwned + Default>(
    store: &Store,
    key: &str,
) -> Result<(T, Option<u64>), KvError> {
    let Some(entry) = live_entry(store, key).await? else {
        return Ok((T::default(), None));
    };
    let value = serde_json::from_slice(&entry.value).unwrap_or_else(|e| {
        tracing::warn!(key, error = %e, "unreadable KV record replaced by a new one");
        T::default()
    });
    Ok((value, Some(entry.revision)))
}

/// The revision a CAS write on `key` must name now (`None` when absent, deleted or purged),
/// whether or not the value decodes.
pub async fn revision(store: &Store, key: &str) -> Result<Option<u64>, KvError> {
    Ok(live_entry(store, key).await?.map(|e| e.revision))
}

fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value).expect("records serialise").into()
}

/// Writes `value` if the key is still at `expected` (`None` = absent); returns the new revision.
pub async fn write<T: Serialize>(
    store: &Store,
    key: &str,
    value: &T,
    expected: Option<u64>,
) -> Result<u64, KvError> {
    write_bytes(store, key, encode(value), expected).await
}

/// [`write`] for a record stored as plain bytes rather than JSON (the partition table's owner
/// records hold a member id as is).
pub async fn write_bytes(
    store: &Store,
    key: &str,
    bytes: bytes::Bytes,
    expected: Option<u64>,
) -> Result<u64, KvError> {
    match expected {
        None => store.create(key, bytes).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => KvError::Conflict { key: key.into() },
            _ => KvError::nats(key, e),
        }),
        Some(revision) => store
            .update(key, bytes, revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict { key: key.into() },
                _ => KvError::nats(key, e),
            }),
    }
}

/// Writes `value` whatever is there: for records only one writer ever changes.
pub async fn put<T: Serialize>(store: &Store, key: &str, value: &T) -> Result<u64, KvError> {
    store
        .put(key, encode(value))
        .await
        .map_err(|e| KvError::nats(key, e))
}

/// Deletes `key` if it is still at `revision`.
pub async fn delete_at(store: &Store, key: &str, revision: u64) -> Result<(), KvError> {
    store
        .delete_expect_revision(key, Some(revision))
        .await
        .map_err(|e| match e.kind() {
            kv::DeleteErrorKind::WrongLastRevision => KvError::Conflict { key: key.into() },
            _ => KvError::nats(key, e),
        })
}

/// Applies `change` to the record (or a default one) with compare-and-set, reading again and
/// retrying when another writer got there first, at most `attempts` times.
pub async fn modify<T: DeserializeOwned + Default + Serialize>(
    store: &Store,
    key: &str,
    attempts: usize,
    mut change: impl FnMut(&mut T),
) -> Result<T, KvError> {
    for _ in 0..attempts {
        let (mut value, revision) = read_or_default::<T>(store, key).await?;
        change(&mut value);
        match write(store, key, &value, revision).await {
            Ok(_) => return Ok(value),
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(KvError::Conflict { key: key.into() })
}
