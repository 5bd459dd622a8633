//! The progress record of each event (KV bucket `bridge_processed`, TTL 24 h by default), and
//! the signature records that refuse a signed request replayed under a new request id.
//!
//! Progress is recorded per step: the bot's answer once Kore.ai gave it (so a crash before the
//! reply does not ask Kore.ai again), an open poll id (so polling resumes), the step being sent
//! and when (so a crash during a `/respond` is resolved against Khoros' request log instead of
//! sending twice), the steps done, and finally `done` (so a redelivered or replayed event is a
//! no-op). Every write is a compare-and-set on the revision read: two processors of one event
//! (a stalled owner and its successor) cannot both claim a step.

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use serde::{Deserialize, Serialize};
use shared::contract::keys;
use shared::kore::BotAnswer;
use shared::kv::{self, KvError};

use crate::error::WorkerError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The bot's answer so far (polled parts are appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<BotAnswer>,
    /// Why the bot could not answer, when it could not (the hand-off plan derives from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_failure: Option<String>,
    /// A V2 poll still to collect: the rest of the bot's turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollState>,
    /// Why the answer stops short (polling gave up): the customer is handed to an agent after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    /// Khoros steps completed, in plan order.
    #[serde(default)]
    pub steps_done: usize,
    /// The step being sent when the record was written (its outcome is unknown until resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// When that step's latest attempt started, epoch ms.
    #[serde(default)]
    pub attempt_at_ms: i64,
    /// When each completed step finished, epoch ms, in plan order (resolving a lost answer
    /// must not count this event's own identical, earlier parts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_at_ms: Vec<i64>,
    /// Nothing left to do for this event.
    #[serde(default)]
    pub done: bool,
}

/// An open V2 poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PollState {
    pub poll_id: String,
    /// When the turn was sent, epoch ms: polling is bounded from here.
    pub started_at_ms: i64,
}

/// A progress record and the revision it was read at.
#[derive(Clone, Debug, Default)]
pub struct Tracked {
    pub progress: Progress,
    revision: Option<u64>,
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
    kv: Store,
}

impl ProgressStore {
    pub fn new(kv: Store) -> Self {
        Self { kv }
    }

    fn key(event_id: &str) -> String {
        keys::progress(event_id)
    }

    pub async fn load(&self, event_id: &str) -> Result<Tracked, WorkerError> {
        let (progress, revision) = kv::read_or_default(&self.kv, &Self::key(event_id)).await?;
        Ok(Tracked { progress, revision })
    }

    /// Writes `tracked` if nobody wrote the record since it was read; else
    /// [`WorkerError::Superseded`] (the caller starts over from a fresh read).
    pub async fn save(&self, event_id: &str, tracked: &mut Tracked) -> Result<(), WorkerError> {
        let key = Self::key(event_id);
        let written = kv::write(&self.kv, &key, &tracked.progress, tracked.revision)
            .await
            .map_err(|e| match e {
                KvError::Conflict { .. } => WorkerError::Superseded,
                other => other.into(),
            })?;
        tracked.revision = Some(written);
        Ok(())
    }

    /// Records `signature digest -> event id` (KV create: compare-and-set on absent), so the
    /// first event to carry a signature owns it. Kept as long as progress records.
    pub async fn claim_signature(
        &self,
        digest: &str,
        event_id: &str,
    ) -> Result<Claim, WorkerError> {
        let key = keys::signature_claim(digest);
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
}
