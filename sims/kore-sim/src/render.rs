//! Wire format of the bot's answers: V1 `text` (string | object | array), V2 `data[]` items,
//! the async delivery bodies (`docs/vendors/kore-webhook-channel.md`, "Sync answers" and
//! "Deliveries") and Kore-looking ids and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::payload::ApiVersion;
use super::script::Step;

/// `RTM-TRACE-` plus 12 upper-case hex digits.
pub fn trace_id() -> String {
    let hex = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    format!("RTM-TRACE-{}", &hex[..12])
}

/// `ms-<uuid>`.
pub fn message_id() -> String {
    format!("ms-{}", uuid::Uuid::new_v4())
}

/// 32 hex digits, like the sample `pollId` described in `docs/vendors/kore-webhook-channel.md`,
/// "V2 polling".
pub fn poll_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Milliseconds since the epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2023-11-14T22:13:20.100Z` for a time in milliseconds since the epoch.
pub fn iso8601(millis: u64) -> String {
    shared::auth::clock::rfc3339(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// A message as it appears in V1 `text`: a string or the template object.
fn v1_value(step: &Step) -> Option<Value> {
    match step {
        Step::Text(t) => Some(Value::String(t.clone())),
        Step::Template(obj) => Some(Value::Object(obj.clone())),
        Step::Pause(_) => None,
    }
}

/// V1 `text`: one message as itself, several as an array, none as `[]`.
pub fn v1_text(steps: &[Step]) -> Value {
    let mut values: Vec<Value> = steps.iter().filter_map(v1_value).collect();
    if values.len() == 1 {
        values.remove(0)
    } else {
        Value::Array(values)
    }
}

/// A V2 `data[]` item; sync items carry a `messageId`, async ones do not
/// (`docs/vendors/kore-webhook-channel.md`, "Deliveries").
pub fn v2_item(step: &Step, with_id: bool) -> Option<Value> {
    let (kind, val) = match step {
        Step::Text(t) => ("text", Value::String(t.clone())),
        Step::Template(obj) => ("template", Value::Object(obj.clone())),
        Step::Pause(_) => return None,
    };
    let mut item = json!({ "type": kind, "val": val, "createdOn": iso8601(unix_millis()) });
    if with_id {
        item["messageId"] = Value::String(message_id());
    }
    Some(item)
}

/// V1 sync body: `{"text": .., <task fields>}`.
pub fn v1_sync(steps: &[Step], task: &Map<String, Value>) -> Value {
    let mut body = Map::new();
    body.insert("text".into(), v1_text(steps));
    body.extend(task.clone());
    Value::Object(body)
}

/// V2 sync body: `{"to","from","data":[..],"_v":"v2", <task fields>, "pollId"?}`.
pub fn v2_sync(
    user: &str,
    bot: &str,
    steps: &[Step],
    task: &Map<String, Value>,
    poll: Option<&str>,
) -> Value {
    let data: Vec<Value> = steps.iter().filter_map(|s| v2_item(s, true)).collect();
    let mut body = Map::new();
    body.insert("to".into(), json!(user));
    body.insert("from".into(), json!(bot));
    body.insert("data".into(), Value::Array(data));
    body.insert("_v".into(), json!("v2"));
    body.extend(task.clone());
    if let Some(poll) = poll {
        body.insert("pollId".into(), json!(poll));
    }
    Value::Object(body)
}

/// One async message delivery: V1 `{"text","to","from"}`, V2 `{"to","data":[item],"_v"}`.
pub fn async_message(version: ApiVersion, step: &Step, user: &str, bot: &str) -> Option<Value> {
    match version {
        ApiVersion::V1 => {
            v1_value(step).map(|text| json!({ "text": text, "to": user, "from": bot }))
        }
        ApiVersion::V2 => {
            v2_item(step, false).map(|item| json!({ "to": user, "data": [item], "_v": "v2" }))
        }
    }
}

/// The separate task-status delivery: V1 `{"to","from",..}`, V2 `{"to","_v":"v2",..}`.
pub fn async_status(
    version: ApiVersion,
    user: &str,
    bot: &str,
    task: &Map<String, Value>,
) -> Value {
    let mut body = Map::new();
    body.insert("to".into(), json!(user));
    match version {
        ApiVersion::V1 => {
            body.insert("from".into(), json!(bot));
        }
        ApiVersion::V2 => {
            body.insert("_v".into(), json!("v2"));
        }
    }
    body.extend(task.clone());
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_instants() {
        assert_eq!(iso8601(1_700_000_000_100), "2023-11-14T22:13:20.100Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn v1_text_has_three_forms() {
        let text = Step::Text("a".into());
        let obj = Step::Template(json!({"type":"image"}).as_object().cloned().unwrap());
        assert_eq!(v1_text(std::slice::from_ref(&text)), json!("a"));
        assert_eq!(v1_text(std::slice::from_ref(&obj)), json!({"type":"image"}));
        assert_eq!(v1_text(&[text, obj]), json!(["a", {"type":"image"}]));
        assert_eq!(v1_text(&[]), json!([]));
    }

    #[test]
    fn ids_look_like_kore() {
        assert!(trace_id().starts_with("RTM-TRACE-") && trace_id().len() == 22);
        assert!(message_id().starts_with("ms-"));
        assert_eq!(poll_id().len(), 32);
    }
}
