//! `POST /kore/callback`: Kore.ai's asynchronous deliveries
//! (`docs/vendors/kore-webhook-channel.md`), authenticated with the channel's access token and stored on `kore.replies.<partition>` for the workers.
//!
//! The partition is a hash of the delivery's `to` (the Kore user id), so one user's replies
//! are handled in order. A delivery without `to` is still stored (on partition 0): the worker
//! dead-letters it, so it is visible instead of lost.

use async_nats::HeaderMap as NatsHeaders;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use shared::auth::{constant_time_eq, AuthFailure};
use shared::routing::{headers, ConversationKey, KORE_REPLIES_PREFIX};
use shared::Secret;

use crate::error::IngressError;
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

/// Stores one delivery; the body is kept byte for byte.
pub async fn store(
    publisher: &Publisher,
    partitions: u32,
    body: Bytes,
    received_at_ms: i64,
) -> Result<Stored, IngressError> {
    let recipient: Recipient = serde_json::from_slice(&body)
        .map_err(|e| IngressError::BadRequest(format!("body is not a JSON object: {e}")))?;
    let partition = match &recipient.to {
        Some(to) => ConversationKey {
            network: "kore",
            external_id: "",
            author_id: to,
        }
        .partition(partitions),
        None => {
            tracing::error!("kore.ai delivery without `to`; stored for the dead letters");
            0
        }
    };
    let mut nats_headers = NatsHeaders::new();
    nats_headers.insert(headers::RECEIVED_AT, received_at_ms.to_string().as_str());
    publisher
        .publish(
            format!("{KORE_REPLIES_PREFIX}.{partition}"),
            nats_headers,
            body,
        )
        .await
}
