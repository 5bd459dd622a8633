//! The scriptable bot. A [`Turn`] is what the bot does for one user message: messages (text
//! or template objects) with optional pauses between them (slow service nodes), task-end
//! fields, an initial delay, or an HTTP failure. Turns are queued per user (`from.id`) and
//! consumed in order; with none queued the default reply (or the echo) answers.
//!
//! JSON form (for `POST /sim/script` and `defaultReply`):
//! `{"messages":["hi",{"type":"template","payload":{..}},{"pauseMs":500},"done"],
//!   "endOfTask":true,"endReason":"Fulfilled","completedTaskName":"Order Status",
//!   "delayMs":0,"fail":{"status":429,"msg":"optional"}}` — every field optional.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::templates::{self, Button};

/// One element of a turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Step {
    /// A plain text message.
    Text(String),
    /// A slow node: nothing is sent for this long.
    Pause(Pause),
    /// A template (or any JSON object message).
    Template(Map<String, Value>),
}

/// `{"pauseMs": n}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pause {
    pub pause_ms: u64,
}

/// A scripted HTTP failure of the inbound call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// 4xx or 5xx.
    pub status: u16,
    /// Envelope `msg`; Kore's wording for the status when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
}

/// What the bot does for one user message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Turn {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_task: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_task_name: Option<String>,
    /// Processing time before the first message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Answer the call with this error instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<Failure>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Turn {
    /// A turn with no messages (add some with `then_*`).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self::empty().then_text(text)
    }

    /// Several text messages (V1: `text` is an array).
    pub fn texts<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        texts.into_iter().fold(Self::empty(), Turn::then_text)
    }

    pub fn template(template: Value) -> Self {
        Self::empty().then_template(template)
    }

    pub fn quick_replies(text: &str, replies: &[(&str, &str)]) -> Self {
        Self::template(templates::quick_replies(text, replies))
    }

    pub fn buttons(text: &str, buttons: &[Button]) -> Self {
        Self::template(templates::buttons(text, buttons))
    }

    /// The `khoros_handoff` convention of `docs/vendors/kore-webhook-channel.md`,
    /// "Hand-off convention".
    pub fn handoff(comment: &str, tag_ids: &[u64]) -> Self {
        Self::template(templates::handoff(comment, tag_ids))
    }

    pub fn image(url: &str) -> Self {
        Self::template(templates::image(url))
    }

    pub fn video(url: &str) -> Self {
        Self::template(templates::video(url))
    }

    /// Answer the call with `status` and Kore's envelope.
    pub fn fail(status: u16) -> Self {
        Self {
            fail: Some(Failure { status, msg: None }),
            ..Self::default()
        }
    }

    /// Answer the call with `status` and a custom envelope `msg`.
    pub fn fail_with(status: u16, msg: &str) -> Self {
        Self {
            fail: Some(Failure {
                status,
                msg: Some(msg.into()),
            }),
            ..Self::default()
        }
    }

    pub fn then_text(mut self, text: impl Into<String>) -> Self {
        self.messages.push(Step::Text(text.into()));
        self
    }

    /// Appends a template; a non-object value is sent as its JSON text.
    pub fn then_template(mut self, template: Value) -> Self {
        self.messages.push(match template {
            Value::Object(map) => Step::Template(map),
            other => Step::Text(other.to_string()),
        });
        self
    }

    /// A slow node between messages (V2 sync with polling: drives `pollId`).
    pub fn then_pause(mut self, pause: Duration) -> Self {
        self.messages.push(Step::Pause(Pause {
            pause_ms: millis(pause),
        }));
        self
    }

    /// Processing time before the first message (beyond the sync timeout: 504).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay_ms = millis(delay);
        self
    }

    /// Marks the dialog task `name` fulfilled on this turn.
    pub fn end_task(mut self, name: &str) -> Self {
        self.end_of_task = Some(true);
        self.end_reason.get_or_insert_with(|| "Fulfilled".into());
        self.completed_task_id
            .get_or_insert_with(|| format!("dg-{}", uuid::Uuid::new_v4()));
        self.completed_task_name = Some(name.into());
        self
    }

    pub fn end_reason(mut self, reason: &str) -> Self {
        self.end_reason = Some(reason.into());
        self
    }

    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    /// The task-end fields present on this turn, as they appear in responses.
    pub fn task_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        if let Some(v) = self.end_of_task {
            fields.insert("endOfTask".into(), Value::Bool(v));
        }
        let strings = [
            ("endReason", &self.end_reason),
            ("completedTaskId", &self.completed_task_id),
            ("completedTaskName", &self.completed_task_name),
        ];
        for (name, value) in strings {
            if let Some(v) = value {
                fields.insert(name.into(), Value::String(v.clone()));
            }
        }
        fields
    }

    /// Refuses failures that are not 4xx/5xx.
    pub fn validate(&self) -> Result<(), String> {
        match &self.fail {
            Some(f) if !(400..=599).contains(&f.status) => {
                Err(format!("fail.status must be 4xx or 5xx, got {}", f.status))
            }
            _ => Ok(()),
        }
    }

    /// Messages until the first pause, that pause, and the rest.
    pub fn split_at_pause(steps: &[Step]) -> (Vec<Step>, Option<Duration>, Vec<Step>) {
        match steps.iter().position(|s| matches!(s, Step::Pause(_))) {
            None => (steps.to_vec(), None, Vec::new()),
            Some(i) => {
                let pause = match &steps[i] {
                    Step::Pause(p) => Duration::from_millis(p.pause_ms),
                    _ => Duration::ZERO,
                };
                (steps[..i].to_vec(), Some(pause), steps[i + 1..].to_vec())
            }
        }
    }

    /// Sum of all pauses.
    pub fn total_pause(&self) -> Duration {
        self.messages
            .iter()
            .map(|s| match s {
                Step::Pause(p) => Duration::from_millis(p.pause_ms),
                _ => Duration::ZERO,
            })
            .sum()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Per-user queues of scripted turns.
#[derive(Debug, Default)]
pub struct Script {
    queues: HashMap<String, VecDeque<Turn>>,
}

impl Script {
    pub fn push(&mut self, user: &str, turns: impl IntoIterator<Item = Turn>) {
        self.queues
            .entry(user.to_string())
            .or_default()
            .extend(turns);
    }

    /// The next scripted turn for `user`, if any.
    pub fn next(&mut self, user: &str) -> Option<Turn> {
        let queue = self.queues.get_mut(user)?;
        let turn = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(user);
        }
        turn
    }

    /// Turns still queued, by user.
    pub fn pending(&self) -> BTreeMap<String, Vec<Turn>> {
        self.queues
            .iter()
            .map(|(user, turns)| (user.clone(), turns.iter().cloned().collect()))
            .collect()
    }

    pub fn clear(&mut self) {
        self.queues.clear();
    }
}

/// The echo bot's answer to `text`.
pub fn echo(text: &str) -> Turn {
    Turn::text(format!("You said: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn turn_json_round_trips_and_rejects_typos() {
        let turn: Turn = serde_json::from_value(json!({
            "messages": ["hi", {"pauseMs": 300}, {"type": "image", "payload": {"url": "u"}}],
            "endOfTask": true, "completedTaskName": "Order Status", "delayMs": 5
        }))
        .unwrap();
        assert_eq!(turn.messages.len(), 3);
        assert!(matches!(
            turn.messages[1],
            Step::Pause(Pause { pause_ms: 300 })
        ));
        assert!(matches!(turn.messages[2], Step::Template(_)));
        assert_eq!(turn.delay(), Duration::from_millis(5));
        assert_eq!(
            serde_json::to_value(&turn).unwrap()["completedTaskName"],
            "Order Status"
        );
        assert!(serde_json::from_value::<Turn>(json!({"endofTask": true})).is_err());
        assert!(Turn::fail(200).validate().is_err());
    }

    #[test]
    fn queues_are_per_user_and_in_order() {
        let mut script = Script::default();
        script.push("a", [Turn::text("1"), Turn::text("2")]);
        script.push("b", [Turn::text("x")]);
        assert_eq!(script.next("a"), Some(Turn::text("1")));
        assert_eq!(script.next("b"), Some(Turn::text("x")));
        assert_eq!(script.next("a"), Some(Turn::text("2")));
        assert_eq!(script.next("a"), None);
    }
}
