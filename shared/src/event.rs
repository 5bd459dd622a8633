//! The Khoros Automation Framework event model (`docs/vendors/khoros-webhooks.md`, "Common objects"
//! and "Event types").
//!
//! Khoros adds fields without notice, so every object keeps what it does not know in `extra`
//! and writes it back unchanged; an unknown `type` or `operation` is a value, not an error.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Fields this model does not name, kept so a round trip loses nothing.
pub type Extra = Map<String, Value>;

/// Where a message lives; echoed back unchanged on every Bot API call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalized_author_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_level_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The end user on the source network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Author {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Who controls the conversation: `BOT` (with its appId) or `AGENT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Owner {
    pub fn bot(app_id: &str) -> Self {
        Self {
            kind: "BOT".into(),
            app_id: Some(app_id.into()),
            extra: Extra::new(),
        }
    }
    pub fn agent() -> Self {
        Self {
            kind: "AGENT".into(),
            app_id: None,
            extra: Extra::new(),
        }
    }
    /// True only for `BOT` owned by exactly this appId (`docs/vendors/khoros-webhooks.md`,
    /// "Owner").
    pub fn is_bot(&self, app_id: &str) -> bool {
        self.kind == "BOT" && self.app_id.as_deref() == Some(app_id)
    }
}

/// An image or video attached by URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A quick reply (`reply`) or postback button (`postback`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub text: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `type: "message"`: something the author wrote (`docs/vendors/khoros-webhooks.md`,
/// "Message events").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEvent {
    #[serde(default, skip_serializing_if = "is_default")]
    pub coordinate: Coordinate,
    #[serde(default, skip_serializing_if = "is_default")]
    pub author: Author,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Media>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    #[serde(
        default,
        rename = "publishedTS",
        skip_serializing_if = "Option::is_none"
    )]
    pub published_ts: Option<i64>,
    #[serde(
        default,
        rename = "receivedTS",
        skip_serializing_if = "Option::is_none"
    )]
    pub received_ts: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `operation` of an update event; new operations are kept by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Created,
    Closed,
    AgentResponse,
    Other(String),
}

impl Operation {
    pub fn as_str(&self) -> &str {
        match self {
            Operation::Created => "CREATED",
            Operation::Closed => "CLOSED",
            Operation::AgentResponse => "AGENT_RESPONSE",
            Operation::Other(name) => name,
        }
    }
}

impl From<&str> for Operation {
    fn from(name: &str) -> Self {
        match name {
            "CREATED" => Operation::Created,
            "CLOSED" => Operation::Closed,
            "AGENT_RESPONSE" => Operation::AgentResponse,
            other => Operation::Other(other.to_string()),
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Operation::from(name.as_str()))
    }
}

/// The Care conversation an update refers to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition_id: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `type: "update"`: conversation lifecycle (`docs/vendors/khoros-webhooks.md`, "Update events").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateEvent {
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "is_default")]
    pub coordinate: Coordinate,
    #[serde(default, skip_serializing_if = "is_default")]
    pub author: Author,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Conversation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_response: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `type: "control"`: ownership changed (`docs/vendors/khoros-webhooks.md`, "Control events"; the
/// shape is assumed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlEvent {
    #[serde(default, skip_serializing_if = "is_default")]
    pub coordinate: Coordinate,
    #[serde(default, skip_serializing_if = "is_default")]
    pub author: Author,
    pub owner: Owner,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_display_id: Option<Value>,
    #[serde(
        default,
        rename = "lastUpdateTS",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_update_ts: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Any event the Framework delivers. Unknown types are kept whole in `Other`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Message(MessageEvent),
    Update(UpdateEvent),
    Control(ControlEvent),
    Other(Value),
}

impl Event {
    pub fn type_name(&self) -> &str {
        match self {
            Event::Message(_) => "message",
            Event::Update(_) => "update",
            Event::Control(_) => "control",
            Event::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
        Ok(match kind.as_deref() {
            Some("message") => {
                Event::Message(serde_json::from_value(value).map_err(D::Error::custom)?)
            }
            Some("update") => {
                Event::Update(serde_json::from_value(value).map_err(D::Error::custom)?)
            }
            Some("control") => {
                Event::Control(serde_json::from_value(value).map_err(D::Error::custom)?)
            }
            _ => Event::Other(value),
        })
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The `type` tag is written first so the output reads like Khoros' own payloads.
        fn tagged<T: Serialize, S: Serializer>(
            tag: &str,
            body: &T,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let mut map = Map::new();
            map.insert("type".into(), Value::String(tag.into()));
            match serde_json::to_value(body).map_err(serde::ser::Error::custom)? {
                Value::Object(fields) => map.extend(fields),
                other => return other.serialize(s),
            }
            map.serialize(s)
        }
        match self {
            Event::Message(m) => tagged("message", m, s),
            Event::Update(u) => tagged("update", u, s),
            Event::Control(c) => tagged("control", c, s),
            Event::Other(v) => v.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_round_trip_keeps_unknown_fields() {
        let raw = json!({
            "type": "message",
            "coordinate": {"companyKey": "acme", "networkKey": "brandmessenger", "externalId": "bm-web-01",
                            "messageId": "m-1", "botId": "kore-bridge", "scope": "PRIVATE", "newCoordField": 7},
            "author": {"id": "user-42", "fullName": "Pat", "properties": {"tier": "gold"}, "avatar": "x"},
            "owner": {"type": "BOT", "appId": "kore-bridge", "since": 1},
            "text": "hi",
            "media": [{"url": "https://m/x.jpg", "mediaType": "IMAGE", "size": 9}],
            "actions": [{"type": "reply", "payload": "P", "text": "T", "color": "red"}],
            "publishedTS": 1700000100000_i64,
            "location": {"type": "GEO_POINT", "countryCode": "gb", "geoDSL": [51.5, -0.1]},
            "futureField": {"nested": [1, 2, 3]}
        });
        let event: Event = serde_json::from_value(raw.clone()).unwrap();
        let Event::Message(m) = &event else {
            panic!("not a message: {event:?}")
        };
        assert!(m.owner.as_ref().unwrap().is_bot("kore-bridge"));
        assert_eq!(m.media[0].media_type.as_deref(), Some("IMAGE"));
        assert_eq!(serde_json::to_value(&event).unwrap(), raw);
    }

    #[test]
    fn update_operations_and_unknown_types_are_values() {
        let closed: Event = serde_json::from_value(json!({"type": "update", "operation": "CLOSED",
            "coordinate": {}, "author": {"id": "a"}, "conversation": {"displayId": 512345, "dispositionId": 3}})).unwrap();
        assert!(matches!(&closed, Event::Update(u) if u.operation == Operation::Closed));
        let created: Event =
            serde_json::from_value(json!({"type": "update", "operation": "CREATED"})).unwrap();
        assert!(matches!(&created, Event::Update(u) if u.operation == Operation::Created));
        let merged: Event =
            serde_json::from_value(json!({"type": "update", "operation": "MERGED", "x": 1}))
                .unwrap();
        assert!(
            matches!(&merged, Event::Update(u) if u.operation == Operation::Other("MERGED".into()))
        );
        assert_eq!(
            serde_json::to_value(&merged).unwrap(),
            json!({"type": "update", "operation": "MERGED", "x": 1})
        );
        let unknown = json!({"type": "typing", "whatever": [1]});
        let event: Event = serde_json::from_value(unknown.clone()).unwrap();
        assert_eq!(event, Event::Other(unknown.clone()));
        assert_eq!(event.type_name(), "typing");
        assert_eq!(serde_json::to_value(&event).unwrap(), unknown);
    }

    #[test]
    fn control_event_reads_owner() {
        let event: Event = serde_json::from_value(json!({"type": "control", "owner": {"type": "AGENT"},
            "author": {"id": "u"}, "coordinate": {"networkKey": "n"}, "lastUpdateTS": 1700000300000_i64})).unwrap();
        let Event::Control(c) = event else { panic!() };
        assert_eq!(c.owner, Owner::agent());
        assert!(!c.owner.is_bot("kore-bridge"));
    }
}
