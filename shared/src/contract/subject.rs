//! The subject grammar. Khoros events are stored on `khoros.events.<type>.<partition>`,
//! Kore.ai deliveries on `kore.replies.<partition>`, dead letters on `bridge.dlq.<step kind>`.

use super::kind::EventKind;
use super::route::kore_user_key;

/// Prefix of every event subject.
pub const EVENTS_PREFIX: &str = "khoros.events";
/// Prefix of Kore.ai asynchronous deliveries.
pub const KORE_REPLIES_PREFIX: &str = "kore.replies";
/// Prefix of dead letters.
pub const DEAD_LETTER_PREFIX: &str = "bridge.dlq";

/// A subject token for a Khoros event type: lower-case `[a-z0-9_-]`, at most 32 bytes.
/// Unknown types are stored too; odd characters must not break the subject.
pub fn type_token(event_type: &str) -> String {
    let token: String = event_type
        .chars()
        .take(32)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

/// `khoros.events.<type>.<partition>`: where the ingress stores a Khoros event.
pub fn event(event_type: &str, partition: u32) -> String {
    format!("{EVENTS_PREFIX}.{}.{partition}", type_token(event_type))
}

/// `kore.replies.<partition>` of a Kore.ai user: where deliveries for that user (and the
/// worker's deadline markers of their turns) are stored.
pub fn kore_replies(kore_user: &str, partitions: u32) -> String {
    let partition = kore_user_key(kore_user).partition(partitions);
    format!("{KORE_REPLIES_PREFIX}.{partition}")
}

/// The subject one partition's consumer filters on.
pub fn partition(kind: EventKind, partition: u32) -> String {
    match kind {
        EventKind::KoreReply => format!("{KORE_REPLIES_PREFIX}.{partition}"),
        other => format!("{EVENTS_PREFIX}.{}.{partition}", other.as_str()),
    }
}

/// `bridge.dlq.<kind>`: where a dead letter of that step kind goes.
pub fn dead_letter(kind: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}.{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_grammar() {
        assert_eq!(event("message", 3), "khoros.events.message.3");
        assert_eq!(type_token("Weird.Type *>"), "weird_type___");
        assert_eq!(type_token(""), "_");
        // The ingress stores on `event`, the owner of that partition filters on `partition`.
        assert_eq!(partition(EventKind::Message, 3), event("message", 3));
        assert_eq!(partition(EventKind::KoreReply, 9), "kore.replies.9");
        assert!(kore_replies("kb-01", 16).starts_with("kore.replies."));
        assert_eq!(dead_letter("respond"), "bridge.dlq.respond");
    }
}
