//! Routing: the conversation an event belongs to, its partition, and the ids that
//! deduplicate what is stored.
//!
//! The partition is a stable hash of the conversation key, so one customer's messages always
//! land on the same subject and are handled in order, whatever the number of worker replicas.

use std::borrow::Cow;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The value of [`super::headers::SIGNATURE_DIGEST`] for a decoded signature.
pub fn signature_digest(signature: &[u8]) -> String {
    hex(&Sha256::digest(signature))
}

/// The few fields routing needs; everything else in the body is left unparsed. Strings are
/// borrowed from the body where they carry no escapes (the ingress parses every event).
#[derive(Debug, Deserialize)]
pub struct RouteFields<'a> {
    /// The event `type`; `None` when the body has none.
    #[serde(rename = "type", default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub operation: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    coordinate: Option<RouteCoordinate<'a>>,
    #[serde(default, borrow)]
    author: Option<RouteAuthor<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteCoordinate<'a> {
    #[serde(default, borrow)]
    network_key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    external_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
struct RouteAuthor<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

impl RouteFields<'_> {
    /// `(networkKey, externalId, author.id)`, empty strings for what is absent.
    pub fn conversation_key(&self) -> ConversationKey<'_> {
        let coord = self.coordinate.as_ref();
        ConversationKey {
            network: coord.and_then(|c| c.network_key.as_deref()).unwrap_or(""),
            external_id: coord.and_then(|c| c.external_id.as_deref()).unwrap_or(""),
            author_id: self
                .author
                .as_ref()
                .and_then(|a| a.id.as_deref())
                .unwrap_or(""),
        }
    }
}

/// What identifies one customer's conversation with the brand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationKey<'a> {
    pub network: &'a str,
    pub external_id: &'a str,
    pub author_id: &'a str,
}

impl ConversationKey<'_> {
    /// FNV-1a over the three parts (NUL-separated): stable across processes and releases.
    pub fn partition(&self, partitions: u32) -> u32 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let bytes = (self.network.bytes().chain([0]))
            .chain(self.external_id.bytes().chain([0]))
            .chain(self.author_id.bytes());
        let hash = bytes.fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
        (hash % u64::from(partitions.max(1))) as u32
    }
}

/// Dedup id for a request that came without `x-amzn-RequestId`: identical bodies collapse.
pub fn body_message_id(body: &[u8]) -> String {
    format!("body-{}", hex(&Sha256::digest(body)))
}

/// Dedup id of a Kore.ai async delivery (which carries no id of its own): the same body
/// posted twice within the duplicate window is stored once.
pub fn kore_delivery_message_id(body: &[u8]) -> String {
    format!("kore-{}", hex(&Sha256::digest(body)))
}

/// Dedup id of the worker's turn-deadline marker for an event (one marker per event, however
/// often the turn is opened).
pub fn deadline_message_id(event_id: &str) -> String {
    format!("{DEADLINE_ID_PREFIX}{event_id}")
}

/// What every turn-deadline marker's dedup id starts with.
pub const DEADLINE_ID_PREFIX: &str = "deadline-";

/// Dedup id of a dead letter replayed from `sequence`: it must differ from the original's,
/// which the stream may still remember.
pub fn replay_message_id(sequence: u64, event_id: &str) -> String {
    format!("replay-{sequence}-{event_id}")
}

/// The conversation key of a Kore.ai user, whose deliveries are partitioned like events.
pub fn kore_user_key(user: &str) -> ConversationKey<'_> {
    ConversationKey {
        network: "kore",
        external_id: "",
        author_id: user,
    }
}

/// Lower-case hex of some bytes (table lookup: it sits on the ingress' hot path).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_spreads() {
        let key = ConversationKey {
            network: "brandmessenger",
            external_id: "bm-web-01",
            author_id: "user-42",
        };
        // Pinned: changing the hash would reorder in-flight conversations across a deploy.
        assert_eq!(key.partition(16), key.partition(16));
        assert_eq!(key.partition(1), 0);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let author = format!("user-{i}");
            seen.insert(
                ConversationKey {
                    author_id: &author,
                    ..key
                }
                .partition(16),
            );
        }
        assert_eq!(seen.len(), 16, "200 authors should reach all 16 partitions");
        // The separator matters: ("ab","c") and ("a","bc") are different conversations.
        let a = ConversationKey {
            network: "ab",
            external_id: "c",
            author_id: "",
        };
        let b = ConversationKey {
            network: "a",
            external_id: "bc",
            author_id: "",
        };
        assert_ne!(
            super::super::keys::conversation(&a),
            super::super::keys::conversation(&b)
        );
    }

    #[test]
    fn route_fields_read_only_what_they_need() {
        let body = br#"{"type":"message","coordinate":{"networkKey":"n","externalId":"e"},"author":{"id":"a"},"x":{"deep":[1]}}"#;
        let f: RouteFields = serde_json::from_slice(body).unwrap();
        assert_eq!(
            f.conversation_key(),
            ConversationKey {
                network: "n",
                external_id: "e",
                author_id: "a"
            }
        );
        let untyped: RouteFields = serde_json::from_slice(br#"{"text":"no type"}"#).unwrap();
        assert_eq!(untyped.kind, None);
        assert_eq!(body_message_id(b"x"), body_message_id(b"x"));
        assert_ne!(body_message_id(b"x"), body_message_id(b"y"));
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }
}
