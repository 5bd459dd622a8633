//! The processed-id record of each event (KV bucket `bridge_processed`, TTL 24 h by default),
//! and the signature records that refuse a signed request replayed under a new request id.
//!
//! Progress is recorded per step: the bot's answer once Kore.ai gave it (so a crash before the
//! reply does not ask Kore.ai again), the step about to be sent (so a crash during a `/respond`
//! can be resolved against Khoros' request log instead of sending twice), the steps done, and
//! finally `done` (so a redelivered or re-sent event is a no-op).

use async_nats::jetstream::kv::{self, CreateErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::kore::BotAnswer;
use shared::routing::hex;

use crate::error::WorkerError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The bot's answer, once received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<BotAnswer>,
    /// Why the bot could not answer, when it could not (the hand-off plan derives from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_failure: Option<String>,
    /// Khoros steps completed, in plan order.
    #[serde(default)]
    pub steps_done: usize,
    /// The step being sent when the record was written (crash detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Nothing left to do for this event.
    #[serde(default)]
    pub done: bool,
}

/// Whose a signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First seen with this event (or this event seen again: a redelivery).
    ThisEvent,
    /// Already claimed by another event id: the request was replayed under a new id.
    OtherEvent,
}

/// Reads and writes progress records.
#[derive(Clone)]
pub struct ProgressStore {
    kv: kv::Store,
}

impl ProgressStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// KV keys allow a small alphabet; request ids are opaque, so they are hashed.
    fn key(event_id: &str) -> String {
        hex(&Sha256::digest(event_id.as_bytes()))
    }

    pub async fn load(&self, event_id: &str) -> Result<Progress, WorkerError> {
        let bytes = self
            .kv
            .get(Self::key(event_id))
            .await
            .map_err(WorkerError::infra)?;
        Ok(bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    /// Records `signature digest -> event id` (KV create: compare-and-set on absent), so the
    /// first event to carry a signature owns it. Kept as long as progress records.
    pub async fn claim_signature(
        &self,
        digest: &str,
        event_id: &str,
    ) -> Result<Claim, WorkerError> {
        let key = format!("sig.{digest}");
        match self.kv.create(&key, event_id.to_owned().into()).await {
            Ok(_) => Ok(Claim::ThisEvent),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let owner = self.kv.get(&key).await.map_err(WorkerError::infra)?;
                Ok(match owner {
                    Some(id) if id.as_ref() != event_id.as_bytes() => Claim::OtherEvent,
                    // Ours (a redelivery), or expired in between: nothing to refuse.
                    _ => Claim::ThisEvent,
                })
            }
            Err(e) => Err(WorkerError::infra(e)),
        }
    }

    pub async fn save(&self, event_id: &str, progress: &Progress) -> Result<(), WorkerError> {
        let bytes = serde_json::to_vec(progress).expect("progress serialises");
        self.kv
            .put(Self::key(event_id), bytes.into())
            .await
            .map(|_| ())
            .map_err(WorkerError::infra)
    }
}
