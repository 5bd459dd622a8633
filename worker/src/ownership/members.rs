//! The replicas alive right now, as this replica observes them: each member puts
//! `member.<id>` every heartbeat, and one not seen for `MEMBER_TIMEOUT` is gone. Liveness is
//! judged on this process' own clock (when it last saw the key change), so clock skew between
//! replicas does not matter; only at start-up, for keys written before this replica watched,
//! the server's timestamp of the write stands in. A member this replica has not heard from is
//! only gone once its key is confirmed unchanged (`Ownership::confirm_gone`): a watch stalls
//! while the bucket elects a leader, and a stalled watch is no proof of a dead member.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use shared::contract::EventKind;

/// What a member announces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The event types it consumes (pools may differ).
    pub types: Vec<String>,
}

#[derive(Debug)]
struct Member {
    types: Vec<EventKind>,
    last_seen: Instant,
    /// Revision of the key as last seen.
    revision: u64,
}

/// The member table.
#[derive(Debug, Default)]
pub struct Members {
    members: HashMap<String, Member>,
}

impl Members {
    /// A `member.<id>` put at `revision`, written `age` ago.
    pub fn seen(&mut self, id: &str, announcement: &Announcement, age: Duration, revision: u64) {
        let types = announcement
            .types
            .iter()
            .filter_map(|t| EventKind::parse(t))
            .collect();
        let last_seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.members.insert(
            id.to_string(),
            Member {
                types,
                last_seen,
                revision,
            },
        );
    }

    /// The revision of `id`'s key as last seen.
    pub fn revision(&self, id: &str) -> Option<u64> {
        self.members.get(id).map(|m| m.revision)
    }

    /// Counts `id` as heard from now (its liveness cannot be told yet: ask again later).
    pub fn vouch(&mut self, id: &str) {
        if let Some(m) = self.members.get_mut(id) {
            m.last_seen = Instant::now();
        }
    }

    pub fn forget(&mut self, id: &str) {
        self.members.remove(id);
    }

    pub fn is_live(&self, id: &str, timeout: Duration) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.last_seen.elapsed() < timeout)
    }

    /// Live members consuming `kind`.
    pub fn live_for(&self, kind: EventKind, timeout: Duration) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, m)| m.last_seen.elapsed() < timeout && m.types.contains(&kind))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Members not seen for `timeout`.
    pub fn gone(&self, timeout: Duration) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.last_seen.elapsed() >= timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn len_live(&self, timeout: Duration) -> usize {
        self.members
            .values()
            .filter(|m| m.last_seen.elapsed() < timeout)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_expire_and_serve_their_types() {
        let mut members = Members::default();
        let both = Announcement {
            types: vec!["message".into(), "update".into()],
        };
        let updates = Announcement {
            types: vec!["update".into()],
        };
        let timeout = Duration::from_secs(5);
        members.seen("a", &both, Duration::ZERO, 1);
        members.seen("b", &updates, Duration::ZERO, 2);
        members.seen("old", &both, Duration::from_secs(60), 3);
        assert_eq!(members.revision("old"), Some(3));
        assert_eq!(members.live_for(EventKind::Message, timeout), vec!["a"]);
        let mut update = members.live_for(EventKind::Update, timeout);
        update.sort();
        assert_eq!(update, vec!["a", "b"]);
        assert_eq!(members.gone(timeout), vec!["old".to_string()]);
        assert!(!members.is_live("old", timeout));
        members.vouch("old");
        assert!(members.is_live("old", timeout));
        members.forget("a");
        members.forget("old");
        assert!(members.live_for(EventKind::Message, timeout).is_empty());
    }
}
