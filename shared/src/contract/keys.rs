//! KV keys derived from ids. KV keys allow a small alphabet (`[-/_=.a-zA-Z0-9]`), and
//! request ids, author ids and signatures are opaque or personal, so most are hashed here,
//! in one place, by the services that write and read them.

use sha2::{Digest, Sha256};

use super::route::{hex, ConversationKey};

/// The `bridge_conversations` key of a conversation record: hex SHA-256 of its key, so author
/// ids (PII) stay out of keys.
pub fn conversation(key: &ConversationKey<'_>) -> String {
    let mut h = Sha256::new();
    for part in [key.network, key.external_id, key.author_id] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

/// The `bridge_progress` key of an event's progress record.
pub fn progress(event_id: &str) -> String {
    hex(&Sha256::digest(event_id.as_bytes()))
}

/// The `bridge_progress` key that records which event first carried a signature.
pub fn signature_claim(signature_digest: &str) -> String {
    format!("sig.{signature_digest}")
}

/// The `bridge_conversations` key that marks a bot turn outstanding for a Kore.ai user in
/// async mode (written by the worker, checked by the ingress before it stores a delivery).
/// `None` when the id cannot be a KV key token: no turn can be outstanding for it.
pub fn turn(kore_user: &str) -> Option<String> {
    crate::kore::is_safe_id(kore_user).then(|| format!("turn.{kore_user}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_kv_alphabet() {
        let ok = |k: &str| {
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        assert!(ok(&progress("any id: with spaces/é")));
        assert_eq!(progress("a"), progress("a"));
        assert_ne!(progress("a"), progress("b"));
        assert!(ok(&signature_claim("00ff")));
        assert_eq!(turn("kb-0123").as_deref(), Some("turn.kb-0123"));
        for bad in ["", "u.x", "u*", "a b"] {
            assert_eq!(turn(bad), None, "{bad:?}");
        }
    }
}
