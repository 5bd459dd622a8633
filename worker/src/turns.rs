//! Outstanding Kore.ai turns in async mode (`docs/decisions.md`, "Kore.ai answers in
//! full, and async turns end").
//!
//! Before a customer message goes to Kore.ai in async mode the worker writes
//! `turn.<kore user id>` in the conversations bucket (the ingress accepts Kore.ai deliveries
//! only for users with such an entry) and stores a deadline marker on the user's
//! `kore.replies.<partition>`. Deliveries name the conversation through the entry. When the
//! marker falls due, a turn that got no delivery hands the customer to an agent; either way
//! the entry is removed, and later deliveries for the user are refused.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use shared::contract::route::deadline_message_id;
use shared::contract::{keys, subject, Envelope};
use shared::kv::{self, KvError};

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

/// The KV key of a user's turn, as the ingress looks it up (the worker's own `kb-<hex>` ids
/// are always inside the key alphabet).
fn turn_key(kore_user: &str) -> String {
    keys::turn(kore_user).unwrap_or_else(|| "turn.invalid".to_string())
}

#[derive(Clone)]
pub struct Turns {
    kv: jetstream::kv::Store,
    js: jetstream::Context,
    partitions: u32,
}

impl Turns {
    pub fn new(kv: jetstream::kv::Store, js: jetstream::Context, partitions: u32) -> Self {
        Self { kv, js, partitions }
    }

    /// Records the turn, then schedules its deadline (deduplicated per event, so a retried
    /// open schedules one marker).
    pub async fn open(&self, kore_user: &str, turn: &Turn) -> Result<(), WorkerError> {
        kv::put(&self.kv, &turn_key(kore_user), turn).await?;
        let marker = DeadlineMarker {
            to: kore_user.to_string(),
            event_id: turn.event_id.clone(),
        };
        let envelope = Envelope {
            message_id: Some(deadline_message_id(&turn.event_id)),
            turn_deadline_ms: Some(turn.deadline_ms),
            ..Envelope::default()
        };
        let payload = serde_json::to_vec(&marker).expect("marker serialises");
        envelope
            .publish(
                &self.js,
                subject::kore_replies(kore_user, self.partitions),
                payload.into(),
            )
            .await
            .map_err(WorkerError::Infrastructure)?;
        Ok(())
    }

    pub async fn get(&self, kore_user: &str) -> Result<Option<(Turn, u64)>, WorkerError> {
        match kv::read::<Turn>(&self.kv, &turn_key(kore_user)).await {
            Ok(found) => Ok(found.map(|v| (v.value, v.revision))),
            // An unreadable turn is no turn: its deliveries are refused, its marker ends it.
            Err(KvError::Decode { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a delivery (compare-and-set; a lost race only means another delivery counted).
    pub async fn delivered(&self, kore_user: &str, mut turn: Turn, revision: u64) {
        turn.deliveries += 1;
        let _ = kv::write(&self.kv, &turn_key(kore_user), &turn, Some(revision)).await;
    }

    /// Removes the turn if it is still the one opened by `event_id`.
    pub async fn close(&self, kore_user: &str, event_id: &str) -> Result<(), WorkerError> {
        if let Some((turn, revision)) = self.get(kore_user).await? {
            if turn.event_id == event_id {
                let _ = kv::delete_at(&self.kv, &turn_key(kore_user), revision).await;
            }
        }
        Ok(())
    }
}
