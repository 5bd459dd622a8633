//! The kinds of work the services exchange. Each kind is a worker pool (`WORKER_EVENT_TYPES`)
//! with its own subjects and consumers.

use crate::topology::{EVENTS_STREAM, KORE_REPLIES_STREAM};

/// What every worker consumer's name starts with (`worker-<kind>-<partition>`).
pub const CONSUMER_PREFIX: &str = "worker-";

/// Separates a consumer's base name from its instance (kind names never contain it).
pub const INSTANCE_SEPARATOR: &str = "--";

/// The base name of a consumer: `worker-message-3--a1b2` -> `worker-message-3`.
pub fn consumer_base(name: &str) -> &str {
    name.split_once(INSTANCE_SEPARATOR)
        .map_or(name, |(base, _)| base)
}

/// What a worker consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `khoros.events.message.*`: customer messages.
    Message,
    /// `khoros.events.update.*`: CREATED, CLOSED, AGENT_RESPONSE.
    Update,
    /// `khoros.events.control.*`: ownership changes.
    Control,
    /// `kore.replies.*`: Kore.ai asynchronous deliveries.
    KoreReply,
}

impl EventKind {
    /// Every kind, in the order pools are listed.
    pub const ALL: [EventKind; 4] = [
        EventKind::Message,
        EventKind::Update,
        EventKind::Control,
        EventKind::KoreReply,
    ];

    /// The name in `WORKER_EVENT_TYPES`, metrics labels and consumer names.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Update => "update",
            EventKind::Control => "control",
            EventKind::KoreReply => "kore_reply",
        }
    }

    /// The kind named `name` (case and surrounding blanks ignored).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(name))
    }

    /// The kind of a Khoros event by its `type`; `None` for types no pool consumes (they are
    /// stored all the same, under their own subject token).
    pub fn of_khoros_type(event_type: &str) -> Option<Self> {
        match event_type {
            "message" => Some(EventKind::Message),
            "update" => Some(EventKind::Update),
            "control" => Some(EventKind::Control),
            _ => None,
        }
    }

    /// The stream that holds this kind's subjects.
    pub fn stream(self) -> &'static str {
        match self {
            EventKind::KoreReply => KORE_REPLIES_STREAM,
            _ => EVENTS_STREAM,
        }
    }

    /// `worker-<kind>-<partition>`: the base name of one partition's consumer.
    pub fn consumer_name(self, partition: u32) -> String {
        format!("{CONSUMER_PREFIX}{}-{partition}", self.as_str())
    }

    /// `worker-<kind>-<partition>--<instance>`: the consumer one owner created and alone
    /// pulls. A new owner deletes it and creates its own under another instance, so a former
    /// owner still pulling by name finds nothing instead of sharing the new owner's events.
    pub fn consumer_instance(self, partition: u32, instance: &str) -> String {
        format!(
            "{}{INSTANCE_SEPARATOR}{instance}",
            self.consumer_name(partition)
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse(" Message "), Some(EventKind::Message));
        assert_eq!(EventKind::parse("messages"), None);
        assert_eq!(EventKind::of_khoros_type("update"), Some(EventKind::Update));
        assert_eq!(EventKind::of_khoros_type("kore_reply"), None);
        assert_eq!(EventKind::Control.consumer_name(7), "worker-control-7");
        let instance = EventKind::KoreReply.consumer_instance(3, "00ff");
        assert_eq!(instance, "worker-kore_reply-3--00ff");
        assert_eq!(consumer_base(&instance), "worker-kore_reply-3");
        assert_eq!(consumer_base("worker-update-1"), "worker-update-1");
    }
}
