//! `POST /kore/callback`: Kore.ai's asynchronous deliveries
//! (`docs/vendors/kore-webhook-channel.md`, "Deliveries"), authenticated with the channel's
//! access token and stored on `kore.replies.<partition>` for the workers.
//!
//! - Only for a Kore user with a bot turn outstanding: the worker marks each async turn in
//!   `bridge_conversations` under [`shared::contract::keys::turn`]. A delivery without `to`, with a
//!   `to` that cannot be a key, or without such a mark is refused (403) and not stored: the
//!   token alone would let anyone who holds it write into any conversation.
//! - Stored with `Nats-Msg-Id` = `kore-<sha256 of the body>`, so a delivery posted twice within
//!   the duplicate window is stored once (identical V1 deliveries, which carry no timestamp,
//!   collapse too).
//! - The partition is a hash of `to`, so one user's replies are handled in order.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use shared::auth::{constant_time_eq, AuthFailure};
use shared::contract::route::kore_delivery_message_id;
use shared::contract::{keys, subject, Envelope};
use shared::topology::{buckets, Readiness};
use shared::Secret;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::error::{BadRequest, IngressError, Unavailable};
use crate::publish::{Publisher, Stored};

/// How Kore.ai presents the access token configured on the channel.
#[derive(Clone, Debug)]
pub struct CallbackAuth {
    /// `KORE_CALLBACK_TOKEN` / `_FILE`.
    pub token: Secret,
    /// `KORE_CALLBACK_HEADER`: `authorization` (then `Bearer <token>`) or a custom header
    /// carrying the raw token.
    pub header: String,
}

impl CallbackAuth {
    pub fn verify(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let value = headers
            .get(self.header.as_str())
            .ok_or(AuthFailure::MissingHeader)?
            .as_bytes();
        let presented = if self.header.eq_ignore_ascii_case("authorization") {
            if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
                return Err(AuthFailure::Malformed);
            }
            value[7..].trim_ascii()
        } else {
            value.trim_ascii()
        };
        if constant_time_eq(presented, self.token.expose().as_bytes()) {
            Ok(())
        } else {
            Err(AuthFailure::BadCredentials)
        }
    }
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(default)]
    to: Option<String>,
}

/// The `bridge_conversations` bucket, where the worker marks outstanding turns. Each event
/// loop has its own (on its own NATS connection).
#[derive(Clone)]
pub struct Turns {
    js: jetstream::Context,
    readiness: Readiness,
    store: Arc<OnceCell<kv::Store>>,
}

impl Turns {
    pub fn new(js: jetstream::Context, readiness: Readiness) -> Self {
        Self {
            js,
            readiness,
            store: Arc::default(),
        }
    }

    /// Opens the bucket once the topology keeper has ensured it, so the first delivery finds
    /// it open. A delivery that comes earlier opens it itself (or gets 503).
    pub async fn open_when_ensured(self, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.readiness.ensured() => {
                if let Err(e) = self.store().await {
                    tracing::warn!(error = %e, "turn bucket not open yet");
                }
            }
        }
    }

    async fn store(&self) -> Result<&kv::Store, IngressError> {
        self.store
            .get_or_try_init(|| self.js.get_key_value(buckets::CONVERSATIONS))
            .await
            .map_err(|e| Unavailable::TurnBucket(e.into()).into())
    }

    /// Whether the worker marked a turn outstanding for `to`.
    async fn outstanding(&self, to: Option<&str>) -> Result<bool, IngressError> {
        let Some(key) = to.and_then(keys::turn) else {
            return Ok(false);
        };
        let entry = self.store().await?.get(key).await.map_err(|e| {
            self.readiness.nudge();
            IngressError::from(Unavailable::TurnBucket(e.into()))
        })?;
        Ok(entry.is_some())
    }
}

/// Stores one delivery, byte for byte, when its user has a bot turn outstanding.
pub async fn store(
    publisher: &Publisher,
    turns: &Turns,
    partitions: u32,
    body: Bytes,
    received_at_ms: i64,
) -> Result<Stored, IngressError> {
    let recipient: Recipient = serde_json::from_slice(&body).map_err(BadRequest::NotAnObject)?;
    let to = recipient.to.as_deref();
    if !turns.outstanding(to).await? {
        return Err(IngressError::NoTurn);
    }
    let envelope = Envelope {
        message_id: Some(kore_delivery_message_id(&body)),
        received_at_ms: Some(received_at_ms),
        ..Envelope::default()
    };
    publisher
        .publish(
            subject::kore_replies(to.unwrap_or_default(), partitions),
            &envelope,
            body,
        )
        .await
}
