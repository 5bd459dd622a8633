//! Parsing and validating inbound bodies (`docs/vendors/kore-webhook-channel.md`, "Requests"): V1
//! needs `message.text` and `from.id`;
//! V2 needs `message.type`, `message.val` (typed by `type`; with attachments `type` must be
//! `text` and `val` non-empty) and `from.id`. Anything else is "Invalid Request Payload".

use serde::Serialize;
use serde_json::Value;

/// The webhook API version, picked by the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    V1,
    V2,
}

/// V2 events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    OnConnect,
    SessionClosure,
}

/// What the user sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Text(String),
    /// A template or form answer (V2 `template` / `formData`).
    Object(Value),
    Event(Event),
}

impl Message {
    /// The text the echo bot repeats.
    pub fn echo_text(&self) -> String {
        match self {
            Message::Text(t) => t.clone(),
            Message::Object(v) => v.to_string(),
            Message::Event(Event::OnConnect) => "ON_CONNECT".into(),
            Message::Event(Event::SessionClosure) => "SESSION_CLOSURE".into(),
        }
    }
}

/// A validated inbound call.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    /// `from.id`: keys the session, the script and the async deliveries.
    pub user_id: String,
    pub message: Message,
    /// `session.new`.
    pub session_new: bool,
}

/// Parses `body` for `version`; the `Err` text says which rule failed.
pub fn parse(version: ApiVersion, body: &[u8]) -> Result<Inbound, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("body is not a JSON object".into());
    }
    let user_id = match value.pointer("/from/id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        _ => return Err("from.id is required (non-empty string)".into()),
    };
    let session_new = value
        .pointer("/session/new")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let message = value
        .get("message")
        .filter(|m| m.is_object())
        .ok_or("message is required (object)")?;
    let message = match version {
        ApiVersion::V1 => match message.get("text") {
            Some(Value::String(text)) => Message::Text(text.clone()),
            _ => return Err("message.text is required (string)".into()),
        },
        ApiVersion::V2 => parse_v2_message(message)?,
    };
    Ok(Inbound {
        user_id,
        message,
        session_new,
    })
}

fn parse_v2_message(message: &Value) -> Result<Message, String> {
    let has_attachments = message
        .get("attachments")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let kind = message.get("type").and_then(Value::as_str);
    let val = message.get("val").filter(|v| !v.is_null());
    // The vendor's form sample puts `formData` directly under `message`.
    if kind.is_none() && val.is_none() {
        if let Some(form) = message.get("formData").filter(|f| f.is_object()) {
            return Ok(Message::Object(form.clone()));
        }
    }
    let kind = kind.ok_or("message.type is required (string)")?;
    let val = val.ok_or("message.val is required")?;
    if has_attachments && !(kind == "text" && val.as_str().is_some_and(|s| !s.is_empty())) {
        return Err("with attachments, message.type must be text and message.val non-empty".into());
    }
    match (kind, val) {
        ("text", Value::String(text)) => Ok(Message::Text(text.clone())),
        ("text", _) => Err("message.val must be a string for type text".into()),
        ("template" | "formData", v @ Value::Object(_)) => Ok(Message::Object(v.clone())),
        ("template" | "formData", _) => {
            Err(format!("message.val must be an object for type {kind}"))
        }
        ("event", Value::String(e)) if e == "ON_CONNECT" => Ok(Message::Event(Event::OnConnect)),
        ("event", Value::String(e)) if e == "SESSION_CLOSURE" => {
            Ok(Message::Event(Event::SessionClosure))
        }
        ("event", _) => Err("message.val must be ON_CONNECT or SESSION_CLOSURE".into()),
        (other, _) => Err(format!("unknown message.type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(version: ApiVersion, body: Value) -> Result<Inbound, String> {
        parse(version, body.to_string().as_bytes())
    }

    #[test]
    fn v1_needs_text_and_from_id() {
        let ok = v(
            ApiVersion::V1,
            json!({"message":{"text":"hi"},"from":{"id":"u"}}),
        )
        .unwrap();
        assert_eq!(ok.message, Message::Text("hi".into()));
        assert!(v(ApiVersion::V1, json!({"message":{"text":"hi"}})).is_err());
        assert!(v(
            ApiVersion::V1,
            json!({"message":{"type":"text","val":"hi"},"from":{"id":"u"}})
        )
        .is_err());
        assert!(parse(ApiVersion::V1, b"{not json").is_err());
        assert!(parse(ApiVersion::V1, b"[]").is_err());
    }

    #[test]
    fn v2_rules() {
        let from = json!({"id":"u"});
        let ok = |m: Value| v(ApiVersion::V2, json!({"message": m, "from": from}));
        assert!(ok(json!({"type":"text","val":"hi"})).is_ok());
        assert_eq!(
            ok(json!({"type":"event","val":"SESSION_CLOSURE"}))
                .unwrap()
                .message,
            Message::Event(Event::SessionClosure)
        );
        assert!(ok(json!({"type":"template","val":{"a":1}})).is_ok());
        assert!(ok(json!({"formData":{"formId":"frm-1"}})).is_ok());
        assert!(ok(json!({"text":"hi"})).is_err());
        assert!(ok(json!({"type":"text"})).is_err());
        assert!(ok(json!({"type":"text","val":{"a":1}})).is_err());
        assert!(ok(json!({"type":"event","val":"OTHER"})).is_err());
        assert!(ok(json!({"type":"text","val":"","attachments":[{"url":"x"}]})).is_err());
        assert!(ok(json!({"type":"text","val":"see","attachments":[{"url":"x"}]})).is_ok());
    }
}
