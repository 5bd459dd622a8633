//! Refuses a signed request replayed under a new request id (DESIGN decision 2).
//!
//! `x-amzn-RequestId` is not covered by the HMAC, so a captured request could be replayed
//! inside the skew window with another id and pass JetStream's dedup. Each accepted signature
//! is recorded in a KV bucket (shared by all ingress replicas, TTL a little over twice the
//! skew) with the request id it came with; the same signature with another id is refused.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use sha2::{Digest, Sha256};
use shared::routing::hex;

use crate::error::IngressError;

#[derive(Clone)]
pub struct ReplayGuard {
    signatures: kv::Store,
}

/// Outcome of recording a signature.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time this signature is used.
    New,
    /// Same signature, same request id: a harmless duplicate delivery.
    SameRequest,
    /// Same signature, another request id: a replay.
    OtherRequest,
}

impl ReplayGuard {
    pub fn new(signatures: kv::Store) -> Self {
        Self { signatures }
    }

    /// Atomically records `signature -> message_id` (KV create is compare-and-set on "absent").
    pub async fn record(&self, signature: &str, message_id: &str) -> Result<Seen, IngressError> {
        let key = hex(&Sha256::digest(signature.as_bytes()));
        match self
            .signatures
            .create(&key, message_id.to_owned().into())
            .await
        {
            Ok(_) => Ok(Seen::New),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let stored =
                    self.signatures.get(&key).await.map_err(|e| {
                        IngressError::Unavailable(format!("replay guard read: {e}"))
                    })?;
                match stored {
                    Some(id) if id.as_ref() == message_id.as_bytes() => Ok(Seen::SameRequest),
                    Some(_) => Ok(Seen::OtherRequest),
                    // Expired between create and get: the signature is older than the window,
                    // which the timestamp check already refused; treat as new.
                    None => Ok(Seen::New),
                }
            }
            Err(e) => Err(IngressError::Unavailable(format!(
                "replay guard write: {e}"
            ))),
        }
    }
}
