//! Outstanding Kore.ai turns in async mode (`docs/decisions.md`, "Async turns end").
//!
//! Before a customer message goes to Kore.ai in async mode the worker writes
//! `turn.<kore user id>` in the conversations bucket (the ingress accepts Kore.ai deliveries
//! only for users with such an entry) and stores a deadline marker on the user's
//! `kore.replies.<partition>`. Deliveries name the conversation through the entry. When the
//! marker falls due, a turn that got no delivery hands the customer to an agent; either way
//! the entry is removed, and later deliveries for the user are refused.

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use shared::routing::{headers, ConversationKey, KORE_REPLIES_PREFIX};

use crate::error::WorkerError;

/// One outstanding turn.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Turn {
    /// The conversation record key.
    pub conversation: String,
    /// The customer message that opened it.
    pub event_id: String,
    pub opened_at_ms: i64,
    pub deadline_ms: i64,
    /// Deliveries received so far.
    #[serde(default)]
    pub deliveries: u32,
}

/// Body of a deadline marker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadlineMarker {
    /// The Kore user, so the marker shares the user's lane.
    pub to: String,
    pub event_id: String,
}

/// The KV key of a user's turn, as the ingress looks it up (`shared::kore::turn_key`; the
/// worker's own `kb-<hex>` ids are always inside the key alphabet).
pub fn turn_key(kore_user: &str) -> String {
    shared::kore::turn_key(kore_user).unwrap_or_else(|| "turn.invalid".to_string())
}

/// The `kore.replies.<partition>` subject of a user, as the ingress computes it.
pub fn replies_subject(kore_user: &str, partitions: u32) -> String {
    let partition = ConversationKey {
        network: "kore",
        external_id: "",
        author_id: kore_user,
    }
    .partition(partitions);
    format!("{KORE_REPLIES_PREFIX}.{partition}")
}

#[derive(Clone)]
pub struct Turns {
    kv: kv::Store,
    js: jetstream::Context,
    partitions: u32,
}

impl Turns {
    pub fn new(kv: kv::Store, js: jetstream::Context, partitions: u32) -> Self {
        Self { kv, js, partitions }
    }

    /// Records the turn, then schedules its deadline (deduplicated per event, so a retried
    /// open schedules one marker).
    pub async fn open(&self, kore_user: &str, turn: &Turn) -> Result<(), WorkerError> {
        let bytes = serde_json::to_vec(turn).expect("turn serialises");
        self.kv
            .put(turn_key(kore_user), bytes.into())
            .await
            .map_err(WorkerError::infra)?;
        let marker = DeadlineMarker {
            to: kore_user.to_string(),
            event_id: turn.event_id.clone(),
        };
        let mut nats_headers = async_nats::HeaderMap::new();
        nats_headers.insert(
            headers::MSG_ID,
            format!("deadline-{}", turn.event_id).as_str(),
        );
        nats_headers.insert(
            headers::TURN_DEADLINE,
            turn.deadline_ms.to_string().as_str(),
        );
        let payload = serde_json::to_vec(&marker).expect("marker serialises");
        self.js
            .publish_with_headers(
                replies_subject(kore_user, self.partitions),
                nats_headers,
                payload.into(),
            )
            .await
            .map_err(WorkerError::infra)?
            .await
            .map_err(WorkerError::infra)?;
        Ok(())
    }

    pub async fn get(&self, kore_user: &str) -> Result<Option<(Turn, u64)>, WorkerError> {
        let entry = self
            .kv
            .entry(turn_key(kore_user))
            .await
            .map_err(WorkerError::infra)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
    }

    /// Counts a delivery (compare-and-set; a lost race only means another delivery counted).
    pub async fn delivered(&self, kore_user: &str, mut turn: Turn, revision: u64) {
        turn.deliveries += 1;
        let bytes = serde_json::to_vec(&turn).expect("turn serialises");
        let _ = self
            .kv
            .update(turn_key(kore_user), bytes.into(), revision)
            .await;
    }

    /// Removes the turn if it is still the one opened by `event_id`.
    pub async fn close(&self, kore_user: &str, event_id: &str) -> Result<(), WorkerError> {
        if let Some((turn, revision)) = self.get(kore_user).await? {
            if turn.event_id == event_id {
                let _ = self
                    .kv
                    .delete_expect_revision(turn_key(kore_user), Some(revision))
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_matches_the_ingress_partitioning() {
        let subject = replies_subject("kb-0123", 16);
        let expected = ConversationKey {
            network: "kore",
            external_id: "",
            author_id: "kb-0123",
        }
        .partition(16);
        assert_eq!(subject, format!("kore.replies.{expected}"));
        assert_eq!(turn_key("kb-0123"), "turn.kb-0123");
    }
}
