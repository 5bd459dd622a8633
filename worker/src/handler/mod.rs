//! What each event type does. [`Handlers::handle`] dispatches one delivery and says how the
//! consumer must settle it.

pub mod kore_reply;
pub mod message;
pub mod update;

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use serde_json::Value;
use shared::auth::{Clock, SystemClock};
use shared::contract::{Envelope, EventKind};
use shared::kore::KoreClient;

use crate::breaker::Breaker;
use crate::config::WorkerConfig;
use crate::conversation::Conversations;
use crate::dead_letter::{self, DeadLetter};
use crate::delivery::Delivery;
use crate::error::WorkerError;
use crate::identity::KoreIdentity;
use crate::progress::{Claim, ProgressStore, Tracked};
use crate::reply::{PlanContext, Step};
use crate::turns::Turns;

/// One delivered event: where JetStream holds it, and what its writer put in its headers.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub kind: EventKind,
    pub subject: String,
    pub stream_sequence: u64,
    pub delivered: i64,
    /// The event's id: `Bridge-Event-Id` of a replayed dead letter, else the dedup id
    /// (`Nats-Msg-Id`), else `<type>-seq-<n>`. Progress is keyed by it.
    pub event_id: String,
    /// The headers: request id, signature digest, receive time, turn deadline.
    pub headers: Envelope,
    /// When JetStream stored it, epoch ms.
    pub stored_at_ms: i64,
    pub payload: Bytes,
}

/// How the consumer settles a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Handled (or deliberately ignored): acknowledge.
    Ack,
    /// Written to the dead letters: terminate, never redeliver.
    Term,
}

/// Everything a handler uses.
pub struct Handlers {
    pub config: WorkerConfig,
    pub js: jetstream::Context,
    pub progress: ProgressStore,
    pub conversations: Conversations,
    pub turns: Turns,
    pub delivery: Delivery,
    pub kore: KoreClient,
    pub identity: KoreIdentity,
    pub breaker: Breaker,
}

impl Handlers {
    /// Handles one delivery; `outcome` labels `worker_events_total`.
    pub async fn handle(
        self: &Arc<Self>,
        env: &Delivered,
    ) -> Result<(Settle, &'static str), WorkerError> {
        if self.config.max_deliver > 1
            && env.delivered >= self.config.max_deliver
            && env.headers.turn_deadline_ms.is_none()
        {
            // The last allowed delivery: every earlier one crashed or timed out. JetStream would
            // silently stop redelivering after this one, so park the event where people look.
            self.dead_letter(
                env,
                "max_deliveries",
                "-",
                "delivered too many times without finishing",
                "",
                env.delivered as u64,
            )
            .await?;
            return Ok((Settle::Term, "dead_lettered"));
        }
        if let Some(digest) = &env.headers.signature_digest {
            if self.progress.claim_signature(digest, &env.event_id).await? == Claim::OtherEvent {
                // The same signed request came before under another request id: a replay
                // (the request id is not covered by the signature). It must not act twice.
                tracing::warn!("signed request replayed under another request id; dropped");
                return Ok((Settle::Ack, "replayed"));
            }
        }
        match env.kind {
            EventKind::Message => message::handle(self, env).await,
            EventKind::Update | EventKind::Control => update::handle(self, env).await,
            EventKind::KoreReply => kore_reply::handle(self, env).await,
        }
    }

    pub fn now_ms(&self) -> i64 {
        SystemClock.now_ms()
    }

    /// The payload as `T`; when it is not one, the delivery is dead-lettered (step `parse`)
    /// and `None` comes back, so the caller terminates it.
    pub async fn parse_or_dead_letter<T: serde::de::DeserializeOwned>(
        &self,
        env: &Delivered,
        what: &str,
    ) -> Result<Option<T>, WorkerError> {
        match serde_json::from_slice(&env.payload) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                let error = format!("not {what}: {e}");
                self.dead_letter(env, "parse", "-", &error, "", env.delivered as u64)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Publishes a dead letter for this delivery.
    pub async fn dead_letter(
        &self,
        env: &Delivered,
        step: &str,
        status: &str,
        error: &str,
        body_excerpt: &str,
        attempts: u64,
    ) -> Result<(), WorkerError> {
        let event = serde_json::from_slice::<Value>(&env.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&env.payload).into_owned()));
        let letter = DeadLetter {
            subject: env.subject.clone(),
            event_id: env.event_id.clone(),
            step: step.to_string(),
            status: status.to_string(),
            error: error.to_string(),
            body_excerpt: body_excerpt.to_string(),
            attempts,
            failed_at_ms: self.now_ms(),
            event,
            truncated: false,
        };
        dead_letter::publish(&self.js, env.kind.as_str(), &letter).await
    }

    /// The plan context for one conversation, with this worker's tags and hand-off tasks.
    pub fn plan_context<'a>(
        &'a self,
        coordinate: &'a shared::event::Coordinate,
        author: &'a shared::event::Author,
        first_reply: bool,
    ) -> PlanContext<'a> {
        PlanContext {
            coordinate,
            author,
            bot_reply_tags: &self.config.bot_reply_tags,
            handoff_tags: &self.config.handoff_tags,
            handoff_task_names: &self.config.handoff_task_names,
            first_reply,
        }
    }

    /// [`Self::deliver`] of a reply, then remembers that the bot replied (and tagged).
    pub async fn deliver_reply(
        &self,
        env: &Delivered,
        tracked: &mut Tracked,
        steps: &[Step],
        conversation_key: &str,
        first_reply: bool,
    ) -> Result<Settle, WorkerError> {
        let settle = self.deliver(env, tracked, steps, conversation_key).await?;
        if settle == Settle::Ack
            && first_reply
            && !self.config.bot_reply_tags.is_empty()
            && steps.iter().any(|s| matches!(s, Step::Respond(_)))
        {
            self.conversations
                .modify(conversation_key, |r| r.bot_tagged = true)
                .await?;
        }
        Ok(settle)
    }
}
