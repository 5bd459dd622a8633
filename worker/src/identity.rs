//! The user id Kore.ai sees (JWT `sub`, `userIdentity`, `from.id`): a keyed hash of the whole
//! conversation key, never the raw author id (`docs/decisions.md`, "Kore.ai sees no customer
//! identifiers").
//!
//! HMAC-SHA256 with `KORE_USER_ID_KEY` over network, externalId and author id: one author on
//! two networks or pages is two Kore users (two bot sessions), a phone number never leaves
//! the bridge, and nobody without the key can compute the id of a customer. The id is stored
//! in the conversation record at first contact and reused from there, so rotating the key
//! changes only conversations that start afterwards.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::contract::route::hex;
use shared::contract::ConversationKey;
use shared::Secret;

/// Prefix of every derived id, so support staff can tell them from Khoros ids.
const PREFIX: &str = "kb-";

/// Derives Kore user ids.
#[derive(Clone)]
pub struct KoreIdentity {
    key: Secret,
}

impl KoreIdentity {
    pub fn new(key: Secret) -> Self {
        Self { key }
    }

    /// `kb-` + 32 hex digits (128 bits of the MAC): fits Kore's and KV's key alphabets.
    pub fn user_id(&self, conversation: &ConversationKey<'_>) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        for part in [
            conversation.network,
            conversation.external_id,
            conversation.author_id,
        ] {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        format!("{PREFIX}{}", hex(&digest[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(network: &'a str, external_id: &'a str, author_id: &'a str) -> ConversationKey<'a> {
        ConversationKey {
            network,
            external_id,
            author_id,
        }
    }

    #[test]
    fn ids_are_keyed_per_conversation_and_hide_the_author() {
        let ids = KoreIdentity::new(Secret::new("k1"));
        let a = ids.user_id(&key("whatsapp", "page-1", "+15551234567"));
        assert!(a.starts_with("kb-") && a.len() == 35, "{a}");
        assert!(!a.contains("5551234567"));
        assert_eq!(a, ids.user_id(&key("whatsapp", "page-1", "+15551234567")));
        assert_ne!(a, ids.user_id(&key("twitter", "page-1", "+15551234567")));
        assert_ne!(a, ids.user_id(&key("whatsapp", "page-2", "+15551234567")));
        assert_ne!(
            ids.user_id(&key("ab", "c", "x")),
            ids.user_id(&key("a", "bc", "x"))
        );
        let other = KoreIdentity::new(Secret::new("k2"));
        assert_ne!(a, other.user_id(&key("whatsapp", "page-1", "+15551234567")));
    }
}
