//! Kore's message templates and the project's hand-off convention
//! (`docs/vendors/kore-webhook-channel.md`, "Templates" and "Hand-off convention"), as
//! the JSON objects a bot puts in `text` (V1) or `val` (V2).

use serde_json::{json, Value};

/// A button of the button template.
#[derive(Clone, Debug, PartialEq)]
pub enum Button {
    /// Sends `payload` back as the next user message.
    Postback { title: String, payload: String },
    /// Opens `url`.
    WebUrl { title: String, url: String },
}

impl Button {
    pub fn postback(title: &str, payload: &str) -> Self {
        Button::Postback {
            title: title.into(),
            payload: payload.into(),
        }
    }

    pub fn web_url(title: &str, url: &str) -> Self {
        Button::WebUrl {
            title: title.into(),
            url: url.into(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Button::Postback { title, payload } => {
                json!({ "type": "postback", "title": title, "payload": payload })
            }
            Button::WebUrl { title, url } => {
                json!({ "type": "web_url", "title": title, "url": url })
            }
        }
    }
}

/// `quick_replies` template; `replies` are `(title, payload)` pairs.
pub fn quick_replies(text: &str, replies: &[(&str, &str)]) -> Value {
    let replies: Vec<Value> = replies
        .iter()
        .map(|(title, payload)| json!({ "content_type": "text", "title": title, "payload": payload }))
        .collect();
    json!({ "type": "template", "payload": {
        "template_type": "quick_replies", "text": text, "quick_replies": replies } })
}

/// `button` template.
pub fn buttons(text: &str, buttons: &[Button]) -> Value {
    let buttons: Vec<Value> = buttons.iter().map(Button::json).collect();
    json!({ "type": "template", "payload": {
        "template_type": "button", "text": text, "buttons": buttons } })
}

/// The `khoros_handoff` convention: the bridge hands the conversation to an agent.
pub fn handoff(comment: &str, tag_ids: &[u64]) -> Value {
    json!({ "type": "template", "payload": {
        "template_type": "khoros_handoff", "comment": comment, "tagIds": tag_ids } })
}

/// Image message.
pub fn image(url: &str) -> Value {
    json!({ "type": "image", "payload": { "url": url } })
}

/// Video message.
pub fn video(url: &str) -> Value {
    json!({ "type": "video", "payload": { "url": url } })
}
