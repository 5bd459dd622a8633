//! V2 sync polling (`docs/vendors/kore-webhook-channel.md`, "V2 polling"): a turn with a pause
//! answers with the messages before it and
//! a `pollId`; the rest is handed out, exactly once, by `GET .../poll/{pollId}` after the
//! pause has elapsed (possibly with a new `pollId` if another pause follows).

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value};

use super::render;
use super::script::{Step, Turn};

/// Messages waiting behind a slow node.
#[derive(Debug)]
struct Pending {
    user: String,
    ready_at: Instant,
    steps: Vec<Step>,
    task: Map<String, Value>,
}

/// What a poll finds.
#[derive(Debug, PartialEq)]
pub enum PollOutcome {
    /// Unknown or already collected: 400 "No data found".
    Unknown,
    /// The slow node is still running.
    InProgress,
    /// Messages up to the next pause; `next` is the follow-up `pollId` if there is one,
    /// `task` the task-end fields (only on the last chunk).
    Ready {
        user: String,
        steps: Vec<Step>,
        next: Option<String>,
        task: Map<String, Value>,
    },
}

/// Open poll ids.
#[derive(Debug, Default)]
pub struct PollStore {
    pending: HashMap<String, Pending>,
}

impl PollStore {
    /// Parks `steps` (the part after a pause) until `ready_at`; returns the new `pollId`.
    pub fn park(
        &mut self,
        user: &str,
        ready_at: Instant,
        steps: Vec<Step>,
        task: Map<String, Value>,
    ) -> String {
        let id = render::poll_id();
        self.pending.insert(
            id.clone(),
            Pending {
                user: user.into(),
                ready_at,
                steps,
                task,
            },
        );
        id
    }

    /// Collects `id` at `now`.
    pub fn take(&mut self, id: &str, now: Instant) -> PollOutcome {
        match self.pending.get(id) {
            None => return PollOutcome::Unknown,
            Some(p) if now < p.ready_at => return PollOutcome::InProgress,
            Some(_) => {}
        }
        let Some(pending) = self.pending.remove(id) else {
            return PollOutcome::Unknown;
        };
        let (now_steps, pause, rest) = Turn::split_at_pause(&pending.steps);
        match pause {
            Some(pause) => {
                let next = self.park(&pending.user, pending.ready_at + pause, rest, pending.task);
                PollOutcome::Ready {
                    user: pending.user,
                    steps: now_steps,
                    next: Some(next),
                    task: Map::new(),
                }
            }
            None => PollOutcome::Ready {
                user: pending.user,
                steps: now_steps,
                next: None,
                task: pending.task,
            },
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chunks_are_handed_out_once_after_their_pause() {
        let turn = Turn::text("b")
            .then_pause(Duration::from_secs(1))
            .then_text("c")
            .end_task("T");
        let mut store = PollStore::default();
        let t0 = Instant::now();
        let id = store.park(
            "u",
            t0 + Duration::from_secs(1),
            turn.messages.clone(),
            turn.task_fields(),
        );
        assert_eq!(store.take(&id, t0), PollOutcome::InProgress);
        let PollOutcome::Ready {
            steps, next, task, ..
        } = store.take(&id, t0 + Duration::from_secs(1))
        else {
            panic!("expected ready");
        };
        assert_eq!(steps, vec![Step::Text("b".into())]);
        assert!(task.is_empty());
        let next = next.expect("a second pause");
        assert_eq!(
            store.take(&id, t0 + Duration::from_secs(5)),
            PollOutcome::Unknown
        );
        assert_eq!(
            store.take(&next, t0 + Duration::from_millis(1500)),
            PollOutcome::InProgress
        );
        let PollOutcome::Ready {
            steps, next, task, ..
        } = store.take(&next, t0 + Duration::from_secs(2))
        else {
            panic!("expected ready");
        };
        assert_eq!(steps, vec![Step::Text("c".into())]);
        assert!(next.is_none());
        assert_eq!(task["completedTaskName"], "T");
    }
}
