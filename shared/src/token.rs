//! The Bot API v3 token as stored in KV: written by the scheduler, watched by the workers.

use serde::{Deserialize, Serialize};

use crate::Secret;

/// Key of the current token in the `bridge_tokens` bucket.
pub const TOKEN_KEY: &str = "khoros.bot-api";

/// What the scheduler stores after a rotation (or the seed at first start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The bearer token. Stored in NATS because every worker needs it; never logged.
    pub token: String,
    /// When Khoros says the token expires, epoch ms (0 = unknown, e.g. a seeded token).
    pub expires_at_ms: i64,
    /// When this token was obtained (rotation or seed), epoch ms; the schedule derives from it.
    pub rotated_at_ms: i64,
    /// `seed` (from config) or `rotation`.
    pub source: String,
}

impl TokenRecord {
    pub fn secret(&self) -> Secret {
        Secret::new(self.token.clone())
    }
}
