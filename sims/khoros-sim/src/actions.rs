//! What happens on the Khoros side without the bot asking (the events of
//! `docs/vendors/khoros-webhooks.md`, "Event types"): an author writes,
//! a conversation is closed, an agent replies, takes or returns control. Shared by the
//! in-process API and the `/sim/actions/*` routes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shared::event::{Action, Author, Media, Owner};

use super::conversations::{ChangeSource, ConvKey, Opened};
use super::events;
use super::state::{JobKind, Shared};
use super::SimError;

/// Names a conversation by author; network and externalId default to the configured ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorRef {
    pub author_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl From<&str> for AuthorRef {
    fn from(author_id: &str) -> Self {
        Self {
            author_id: author_id.to_string(),
            ..Self::default()
        }
    }
}

impl From<String> for AuthorRef {
    fn from(author_id: String) -> Self {
        Self {
            author_id,
            ..Self::default()
        }
    }
}

/// An author's message arriving at Khoros (`POST /sim/actions/message`):
/// `{"authorId":"user-1","text":"hi","media":[..],"actions":[..],"networkKey":..,"externalId":..}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundMessage {
    pub author_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// Brand Messenger custom metadata (`author.properties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_properties: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Media>,
    /// The reply/postback the user tapped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Further message fields passed through as-is (`location`, `form`, `list`, `properties`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl InboundMessage {
    /// A plain text message.
    pub fn text(author_id: &str, text: &str) -> Self {
        Self {
            author_id: author_id.to_string(),
            text: Some(text.to_string()),
            ..Self::default()
        }
    }

    pub fn with_action(mut self, kind: &str, payload: &str, text: &str) -> Self {
        self.actions.push(Action {
            kind: kind.to_string(),
            payload: payload.to_string(),
            text: text.to_string(),
            extra: Map::new(),
        });
        self
    }

    pub fn with_media(mut self, url: &str, media_type: &str) -> Self {
        self.media.push(Media {
            url: url.to_string(),
            media_type: Some(media_type.to_string()),
            title: None,
            extra: Map::new(),
        });
        self
    }
}

/// What an injected message produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Injected {
    /// The `x-amzn-RequestId` its delivery uses.
    pub request_id: String,
    pub message_id: String,
    pub conversation_display_id: u64,
    /// The owner the message event carries.
    pub owner: Owner,
    /// True when this message started a conversation (a CREATED update follows if enabled).
    pub new_conversation: bool,
}

impl Shared {
    fn resolve_ref(&self, target: &AuthorRef) -> Result<ConvKey, SimError> {
        if target.author_id.trim().is_empty() {
            return Err(SimError::Invalid("authorId may not be empty".into()));
        }
        let network = target.network_key.as_deref();
        if let Some(network) = network {
            if !self.network_is_valid(network) {
                return Err(SimError::Invalid(format!("Invalid networkKey {network}")));
            }
        }
        Ok(self.key(&target.author_id, network, target.external_id.as_deref()))
    }

    /// An author writes: the message event goes to the bot, then (for a new conversation
    /// and if enabled) the CREATED update (the message arrives first:
    /// `docs/vendors/khoros-webhooks.md`, "Delivery").
    pub fn inject_message(&self, message: &InboundMessage) -> Result<Injected, SimError> {
        let key = self.resolve_ref(&AuthorRef {
            author_id: message.author_id.clone(),
            network_key: message.network_key.clone(),
            external_id: message.external_id.clone(),
        })?;
        let author = Author {
            id: message.author_id.clone(),
            full_name: message.full_name.clone(),
            properties: message.author_properties.clone(),
            extra: Map::new(),
        };
        let app_id = self.config.app_id.clone();
        let now = self.now_ms();
        let message_id = format!("msg-{}", uuid::Uuid::new_v4().simple());
        Ok(self.with_state(|state| {
            let emit_created = state.settings.sender.emit_created;
            let (conversation, opened) = state.conversations.open(&key, &author, &app_id, now);
            conversation.inbound_count += 1;
            conversation.last_message_id = Some(message_id.clone());
            let event = events::message(conversation, &app_id, &message_id, message, now);
            let created = (opened == Opened::New && emit_created)
                .then(|| events::created(conversation, &app_id));
            let injected = Injected {
                request_id: String::new(),
                message_id: message_id.clone(),
                conversation_display_id: conversation.conversation_display_id,
                owner: conversation.owner.clone(),
                new_conversation: opened == Opened::New,
            };
            let request_id = self.emit(state, event, JobKind::Message, Some(&key));
            if let Some(created) = created {
                self.emit(state, created, JobKind::Other, Some(&key));
            }
            Injected {
                request_id,
                ..injected
            }
        }))
    }

    /// Closes the conversation (CLOSED update, ownership back to the bot).
    pub fn close_conversation(
        &self,
        target: &AuthorRef,
        disposition_id: i64,
    ) -> Result<(), SimError> {
        let key = self.resolve_ref(target)?;
        self.with_state(|state| self.close(state, &key, disposition_id))
    }

    /// An agent answers the author (AGENT_RESPONSE update, `docs/vendors/khoros-webhooks.md`,
    /// "Update events").
    pub fn agent_reply(&self, target: &AuthorRef, text: &str) -> Result<String, SimError> {
        let key = self.resolve_ref(target)?;
        let now = self.now_ms();
        self.with_state(|state| {
            let conversation = state
                .conversations
                .get_mut(&key)
                .ok_or_else(|| SimError::UnknownConversation(key.author_id.clone()))?;
            conversation.agent_replies.push(text.to_string());
            let event = events::agent_response(conversation, &self.config.app_id, text, now);
            Ok(self.emit(state, event, JobKind::Other, Some(&key)))
        })
    }

    /// An agent takes the conversation (no handoff tags: the bot did not hand off).
    pub fn agent_take(&self, target: &AuthorRef, comment: Option<String>) -> Result<(), SimError> {
        self.agent_moves(target, Owner::agent(), comment)
    }

    /// An agent gives the conversation back to this bot.
    pub fn agent_return(
        &self,
        target: &AuthorRef,
        comment: Option<String>,
    ) -> Result<(), SimError> {
        self.agent_moves(target, Owner::bot(&self.config.app_id), comment)
    }

    fn agent_moves(
        &self,
        target: &AuthorRef,
        to: Owner,
        comment: Option<String>,
    ) -> Result<(), SimError> {
        let key = self.resolve_ref(target)?;
        self.with_state(|state| {
            self.change_owner(state, &key, to, ChangeSource::Agent, comment, &[])
                .map(|_| ())
                .ok_or_else(|| SimError::UnknownConversation(key.author_id.clone()))
        })
    }
}
