//! Bodies of the events the Framework sends to the bot (`docs/vendors/khoros-webhooks.md`,
//! "Event types"): message, update
//! (CREATED, CLOSED, AGENT_RESPONSE), control, and the sim's suspension probe.

use serde_json::{json, Map, Value};
use shared::event::{
    ControlEvent, Conversation as EventConversation, Coordinate, Event, MessageEvent, Operation,
    UpdateEvent,
};

use super::actions::InboundMessage;
use super::conversations::{ConvKey, Conversation};

/// The coordinate of an event about `key` (`docs/vendors/khoros-webhooks.md`, "Coordinate"), always
/// `PRIVATE` scope.
pub fn coordinate(key: &ConvKey, app_id: &str, message_id: Option<&str>) -> Coordinate {
    Coordinate {
        company_key: Some(key.company_key.clone()),
        network_key: Some(key.network_key.clone()),
        external_id: Some(key.external_id.clone()),
        bot_id: Some(app_id.to_string()),
        message_id: message_id.map(str::to_string),
        scope: Some("PRIVATE".into()),
        ..Coordinate::default()
    }
}

fn to_value(event: Event) -> Value {
    // Serialising these plain structs cannot fail; `Null` would only be a bug here.
    serde_json::to_value(event).unwrap_or(Value::Null)
}

/// `docs/vendors/khoros-webhooks.md`, "Message events": carries the owner as the conversation
/// stands now.
pub fn message(
    conversation: &Conversation,
    app_id: &str,
    message_id: &str,
    inbound: &InboundMessage,
    now_ms: i64,
) -> Value {
    let mut extra = inbound.extra.clone();
    extra
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    to_value(Event::Message(MessageEvent {
        coordinate: coordinate(&conversation.key, app_id, Some(message_id)),
        author: conversation.author.clone(),
        owner: Some(conversation.owner.clone()),
        text: inbound.text.clone(),
        media: inbound.media.clone(),
        actions: inbound.actions.clone(),
        published_ts: Some(now_ms),
        received_ts: Some(now_ms),
        extra,
    }))
}

fn update(
    conversation: &Conversation,
    app_id: &str,
    operation: Operation,
    details: EventConversation,
    agent_response: Option<Value>,
) -> Value {
    let mut coordinate = coordinate(
        &conversation.key,
        app_id,
        conversation.last_message_id.as_deref(),
    );
    coordinate.normalized_author_id = Some(conversation.key.author_id.clone());
    to_value(Event::Update(UpdateEvent {
        operation,
        coordinate,
        author: conversation.author.clone(),
        conversation: Some(details),
        agent_response,
        extra: Map::new(),
    }))
}

/// `docs/vendors/khoros-webhooks.md`, "Update events" (CREATED).
pub fn created(conversation: &Conversation, app_id: &str) -> Value {
    update(
        conversation,
        app_id,
        Operation::Created,
        EventConversation {
            display_id: Some(json!(conversation.conversation_display_id)),
            status: Some("ASSIGNED".into()),
            ..EventConversation::default()
        },
        None,
    )
}

/// `docs/vendors/khoros-webhooks.md`, "Update events" (CLOSED).
pub fn closed(conversation: &Conversation, app_id: &str, disposition_id: i64) -> Value {
    update(
        conversation,
        app_id,
        Operation::Closed,
        EventConversation {
            display_id: Some(json!(conversation.conversation_display_id)),
            disposition_id: Some(json!(disposition_id)),
            ..EventConversation::default()
        },
        None,
    )
}

/// `docs/vendors/khoros-webhooks.md`, "Update events" (AGENT_RESPONSE).
pub fn agent_response(conversation: &Conversation, app_id: &str, text: &str, now_ms: i64) -> Value {
    update(
        conversation,
        app_id,
        Operation::AgentResponse,
        EventConversation {
            display_id: Some(json!(conversation.conversation_display_id)),
            disposition_id: Some(json!(1)),
            ..EventConversation::default()
        },
        Some(json!({"publishDate": now_ms, "text": text})),
    )
}

/// `docs/vendors/khoros-webhooks.md`, "Control events" (assumed shape): the owner after the change.
pub fn control(conversation: &Conversation, app_id: &str, comment: Option<&str>) -> Value {
    to_value(Event::Control(ControlEvent {
        coordinate: coordinate(&conversation.key, app_id, None),
        author: conversation.author.clone(),
        owner: conversation.owner.clone(),
        comment: comment.map(str::to_string),
        conversation_display_id: Some(json!(conversation.conversation_display_id)),
        last_update_ts: Some(json!(conversation.last_update_ts)),
        extra: Map::new(),
    }))
}

/// The sim's suspension probe. `docs/vendors/khoros-webhooks.md` ("Suspension") only says Khoros
/// tries a delivery again every 2 minutes; an event of a type the bot must accept and ignore
/// ("Event types") has no side effects.
pub fn probe(
    company_key: &str,
    network_key: &str,
    external_id: &str,
    app_id: &str,
    now_ms: i64,
) -> Value {
    let key = ConvKey {
        company_key: company_key.into(),
        network_key: network_key.into(),
        external_id: external_id.into(),
        author_id: String::new(),
    };
    json!({
        "type": "probe",
        "coordinate": coordinate(&key, app_id, None),
        "timestamp": now_ms,
    })
}
