//! Conversation records (KV bucket `bridge_conversations`), kept current by every event type.
//!
//! A record says who owns the conversation as far as we know, its Care display id, whether it
//! was closed, whether the bot already tagged it, where to reply (coordinate and author, for
//! Kore.ai's asynchronous deliveries) and the Kore.ai user id it was given at first contact
//! (`crate::identity`). Records are read-modify-written with compare-and-set, because message
//! and update consumers may touch one record at once.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::contract::{keys, ConversationKey};
use shared::event::{Author, Coordinate, Owner};
use shared::kv::{self, KvError};
use tokio_util::sync::CancellationToken;

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

/// A record as read, with its revision (`None`: no live record under the key).
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub record: Option<ConversationRecord>,
    pub revision: Option<u64>,
}

#[derive(Clone)]
pub struct Conversations {
    kv: Store,
    /// Ends the delayed removals when the worker stops.
    stop: CancellationToken,
}

impl Conversations {
    pub fn new(kv: Store, stop: CancellationToken) -> Self {
        Self { kv, stop }
    }

    pub fn key(coordinate: &Coordinate, author: &Author) -> String {
        let key = ConversationKey {
            network: coordinate.network_key.as_deref().unwrap_or(""),
            external_id: coordinate.external_id.as_deref().unwrap_or(""),
            author_id: &author.id,
        };
        keys::conversation(&key)
    }

    /// The record, if there is a readable one.
    pub async fn get(&self, key: &str) -> Result<Option<ConversationRecord>, WorkerError> {
        Ok(self.read(key).await?.record)
    }

    /// The record and the revision it was read at (for [`Self::modify_seen`]); an unreadable
    /// record reads as none, and is replaced by the next write.
    pub async fn read(&self, key: &str) -> Result<Seen, WorkerError> {
        match kv::read::<ConversationRecord>(&self.kv, key).await {
            Ok(found) => Ok(Seen {
                revision: found.as_ref().map(|v| v.revision),
                record: found.map(|v| v.value),
            }),
            Err(KvError::Decode { .. }) => Ok(Seen {
                record: None,
                revision: kv::revision(&self.kv, key).await?,
            }),
            Err(e) => Err(e.into()),
        }
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
        match kv::write(&self.kv, key, &record, seen.revision).await {
            Ok(_) => Ok(record),
            Err(_) => self.modify(key, change).await,
        }
    }

    /// Applies `change` to the record (or a default one) with compare-and-set, retrying on races.
    pub async fn modify(
        &self,
        key: &str,
        change: impl FnMut(&mut ConversationRecord),
    ) -> Result<ConversationRecord, WorkerError> {
        Ok(kv::modify(&self.kv, key, 10, change).await?)
    }

    /// Deletes a closed record after `grace`, unless the conversation reopened meanwhile.
    /// In-process only: if the worker stops first the record simply stays (it is harmless,
    /// and overwritten when the author writes again).
    pub fn remove_after(&self, key: String, closed_at_ms: i64, grace: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = this.stop.cancelled() => return,
            }
            if let Ok(Some(record)) = this.get(&key).await {
                if record.closed_at_ms == Some(closed_at_ms) {
                    let _ = this.kv.delete(&key).await;
                }
            }
        });
    }
}
