//! Conversation records (KV bucket `bridge_conversations`), kept current by every event type.
//!
//! A record says who owns the conversation as far as we know, its Care display id, whether it
//! was closed, whether the bot already tagged it, where to reply (coordinate and author, for
//! Kore.ai's asynchronous deliveries) and the Kore.ai user id it was given at first contact
//! (`crate::identity`). Records are read-modify-written with compare-and-set, because message
//! and update consumers may touch one record at once.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::event::{Author, Coordinate, Owner};
use shared::routing::ConversationKey;

use crate::error::WorkerError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    #[serde(default)]
    pub coordinate: Coordinate,
    #[serde(default)]
    pub author: Author,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// When `owner` last changed, epoch ms.
    #[serde(default)]
    pub owner_updated_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<i64>,
    /// The bot-reply tags were applied in this conversation.
    #[serde(default)]
    pub bot_tagged: bool,
    /// The user id Kore.ai knows this conversation by (a keyed hash, never the author id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kore_user: Option<String>,
}

/// A record as read, with its revision (`None`: the key never existed).
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub record: Option<ConversationRecord>,
    pub revision: Option<u64>,
}

#[derive(Clone)]
pub struct Conversations {
    kv: kv::Store,
}

impl Conversations {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    pub fn key(coordinate: &Coordinate, author: &Author) -> String {
        ConversationKey {
            network: coordinate.network_key.as_deref().unwrap_or(""),
            external_id: coordinate.external_id.as_deref().unwrap_or(""),
            author_id: &author.id,
        }
        .record_key()
    }

    pub async fn get(&self, key: &str) -> Result<Option<ConversationRecord>, WorkerError> {
        let bytes = self.kv.get(key).await.map_err(WorkerError::infra)?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// The record and the revision it was read at (for [`Self::modify_seen`]).
    pub async fn read(&self, key: &str) -> Result<Seen, WorkerError> {
        let entry = self.kv.entry(key).await.map_err(WorkerError::infra)?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => Seen {
                record: serde_json::from_slice(&e.value).ok(),
                revision: Some(e.revision),
            },
            Some(e) => Seen {
                record: None,
                revision: Some(e.revision),
            },
            None => Seen::default(),
        })
    }

    /// [`Self::modify`] starting from a record already read: one write when nobody changed it
    /// since (the usual case), the full read-modify-write loop otherwise.
    pub async fn modify_seen(
        &self,
        key: &str,
        seen: Seen,
        mut change: impl FnMut(&mut ConversationRecord),
    ) -> Result<ConversationRecord, WorkerError> {
        let mut record = seen.record.unwrap_or_default();
        change(&mut record);
        let bytes: bytes::Bytes = serde_json::to_vec(&record)
            .expect("record serialises")
            .into();
        let written = match seen.revision {
            Some(rev) => self.kv.update(key, bytes, rev).await.is_ok(),
            None => self.kv.create(key, bytes).await.is_ok(),
        };
        if written {
            Ok(record)
        } else {
            self.modify(key, change).await
        }
    }

    /// Applies `change` to the record (or a default one) with compare-and-set, retrying on races.
    pub async fn modify(
        &self,
        key: &str,
        mut change: impl FnMut(&mut ConversationRecord),
    ) -> Result<ConversationRecord, WorkerError> {
        for _ in 0..10 {
            let entry = self.kv.entry(key).await.map_err(WorkerError::infra)?;
            let (mut record, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (ConversationRecord::default(), Some(e.revision)),
                None => (ConversationRecord::default(), None),
            };
            change(&mut record);
            let bytes: bytes::Bytes = serde_json::to_vec(&record)
                .expect("record serialises")
                .into();
            let written = match revision {
                Some(rev) => self.kv.update(key, bytes, rev).await.is_ok(),
                None => self.kv.create(key, bytes).await.is_ok(),
            };
            if written {
                return Ok(record);
            }
        }
        Err(WorkerError::Infrastructure(format!(
            "conversation record {key}: too many concurrent updates"
        )))
    }

    /// Deletes a closed record after `grace`, unless the conversation reopened meanwhile.
    /// In-process only: if the worker stops first the record simply stays (it is harmless,
    /// and overwritten when the author writes again).
    pub fn remove_after(&self, key: String, closed_at_ms: i64, grace: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Ok(Some(record)) = this.get(&key).await {
                if record.closed_at_ms == Some(closed_at_ms) {
                    let _ = this.kv.delete(&key).await;
                }
            }
        });
    }
}
