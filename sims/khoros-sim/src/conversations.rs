//! The conversation model (`docs/vendors/khoros-webhooks.md`, "Owner", and
//! `docs/vendors/khoros-bot-api-v3.md`, "Control (hand-off)"): one conversation per
//! (companyKey, networkKey, externalId, author.id), owned by `BOT(appId)` or `AGENT`, with
//! its Care display id, tags, priority, notes and everything the bot sent to the author.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;
use shared::event::{Author, Owner};

/// Parent tag of every bot handoff (`docs/vendors/khoros-bot-api-v3.md`, "Hand-off tags").
pub const TAG_BOT_HANDOFF: &str = "Bot Handoff";
/// The bot called `PUT /control` to hand off.
pub const TAG_STANDARD_HANDOFF: &str = "Standard Bot Handoff";
/// The Framework handed off (undeliverable message, suspended bot).
pub const TAG_AUTOMATIC_HANDOFF: &str = "Automatic Bot Handoff";

/// First Care conversation number handed out (the samples in `docs/vendors/khoros-webhooks.md` are
/// in this range).
const FIRST_DISPLAY_ID: u64 = 512_000;

/// Identifies a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConvKey {
    pub company_key: String,
    pub network_key: String,
    pub external_id: String,
    pub author_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConversationStatus {
    Open,
    Closed,
}

/// Who moved control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeSource {
    /// The bot called `PUT /bots/v3/control`.
    Bot,
    /// An agent took or returned control (sim action).
    Agent,
    /// Automatic handoff by the Framework (failed delivery, suspension).
    Framework,
    /// A close reset ownership to the bot.
    Close,
}

/// One ownership change (or accepted `PUT /control` that changed nothing).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlChange {
    #[serde(flatten)]
    pub key: ConvKey,
    pub conversation_display_id: u64,
    pub from: Owner,
    pub to: Owner,
    pub source: ChangeSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// False when the requested owner was already the owner.
    pub changed: bool,
    pub at_millis: i64,
}

/// One conversation; serialised as the `GET /sim/conversations` element.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    #[serde(flatten)]
    pub key: ConvKey,
    /// The author as last seen (inbound message or Bot API call).
    pub author: Author,
    pub conversation_display_id: u64,
    pub owner: Owner,
    /// Sim time of the last ownership change (`lastUpdateTS` / `lastUpdatedTS`).
    pub last_update_ts: i64,
    pub status: ConversationStatus,
    /// Handoff tag names, in the order applied.
    pub tags: Vec<String>,
    /// Care tag ids applied through `PUT /bots/v3/tag`.
    pub tag_ids: Vec<i64>,
    pub priority: Option<u8>,
    pub notes: Vec<String>,
    pub work_queue: Option<i64>,
    /// Every accepted `/respond` body (messages and typing indicators), oldest first.
    pub replies: VecDeque<Value>,
    /// Texts agents sent (AGENT_RESPONSE actions).
    pub agent_replies: Vec<String>,
    /// Inbound messages injected so far.
    pub inbound_count: u64,
    /// The messageId of the last inbound message, for coordinates of later events.
    pub last_message_id: Option<String>,
}

impl Conversation {
    /// The `/respond` bodies of `type: "message"`, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.replies
            .iter()
            .filter(|r| r.get("type").and_then(Value::as_str) == Some("message"))
            .cloned()
            .collect()
    }

    /// Sets the owner; true if it changed.
    pub fn set_owner(&mut self, owner: Owner, now_ms: i64) -> bool {
        if self.owner == owner {
            return false;
        }
        self.owner = owner;
        self.last_update_ts = now_ms;
        true
    }

    /// Adds handoff tags not already present.
    pub fn add_tags(&mut self, names: &[&str]) {
        for name in names {
            if !self.tags.iter().any(|t| t == name) {
                self.tags.push((*name).to_string());
            }
        }
    }

    pub fn push_reply(&mut self, body: Value, limit: usize) {
        if self.replies.len() >= limit.max(1) {
            self.replies.pop_front();
        }
        self.replies.push_back(body);
    }

    /// A closed conversation that gets a new message becomes a new Care conversation:
    /// new display id, bot-owned, no tags or priority.
    fn reopen(&mut self, display_id: u64, bot: Owner, now_ms: i64) {
        self.conversation_display_id = display_id;
        self.status = ConversationStatus::Open;
        self.set_owner(bot, now_ms);
        self.tags.clear();
        self.tag_ids.clear();
        self.priority = None;
        self.work_queue = None;
    }
}

/// Every conversation the sim knows.
#[derive(Debug, Default)]
pub struct Conversations {
    by_key: HashMap<ConvKey, Conversation>,
    issued_display_ids: u64,
}

/// What [`Conversations::open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Already open.
    Existing,
    /// First contact, or a new Care conversation after a close.
    New,
}

impl Conversations {
    pub fn get(&self, key: &ConvKey) -> Option<&Conversation> {
        self.by_key.get(key)
    }

    pub fn get_mut(&mut self, key: &ConvKey) -> Option<&mut Conversation> {
        self.by_key.get_mut(key)
    }

    /// For an inbound message: the conversation for `key`, created bot-owned when missing
    /// and started afresh (new display id) when closed.
    pub fn open(
        &mut self,
        key: &ConvKey,
        author: &Author,
        app_id: &str,
        now_ms: i64,
    ) -> (&mut Conversation, Opened) {
        self.open_with(key, author, app_id, now_ms, true)
    }

    /// For a Bot API call: like [`Self::open`], but a closed conversation stays closed.
    pub fn touch(
        &mut self,
        key: &ConvKey,
        author: &Author,
        app_id: &str,
        now_ms: i64,
    ) -> &mut Conversation {
        self.open_with(key, author, app_id, now_ms, false).0
    }

    /// `author` refreshes the stored author when it names more than the id.
    fn open_with(
        &mut self,
        key: &ConvKey,
        author: &Author,
        app_id: &str,
        now_ms: i64,
        reopen_closed: bool,
    ) -> (&mut Conversation, Opened) {
        let next_id = FIRST_DISPLAY_ID + self.issued_display_ids;
        let mut opened = Opened::Existing;
        let conversation = self.by_key.entry(key.clone()).or_insert_with(|| {
            opened = Opened::New;
            Conversation {
                key: key.clone(),
                author: author.clone(),
                conversation_display_id: next_id,
                owner: Owner::bot(app_id),
                last_update_ts: now_ms,
                status: ConversationStatus::Open,
                tags: Vec::new(),
                tag_ids: Vec::new(),
                priority: None,
                notes: Vec::new(),
                work_queue: None,
                replies: VecDeque::new(),
                agent_replies: Vec::new(),
                inbound_count: 0,
                last_message_id: None,
            }
        });
        if reopen_closed && conversation.status == ConversationStatus::Closed {
            conversation.reopen(next_id, Owner::bot(app_id), now_ms);
            opened = Opened::New;
        }
        if opened == Opened::New {
            self.issued_display_ids += 1;
        }
        if author.full_name.is_some() || author.properties.is_some() {
            conversation.author = author.clone();
        }
        (conversation, opened)
    }

    /// Conversations of `author_id` on any network, for lookups by author alone.
    pub fn by_author<'a>(&'a self, author_id: &'a str) -> impl Iterator<Item = &'a Conversation> {
        self.by_key
            .values()
            .filter(move |c| c.key.author_id == author_id)
    }

    pub fn all(&self) -> Vec<&Conversation> {
        let mut all: Vec<_> = self.by_key.values().collect();
        all.sort_by_key(|c| c.conversation_display_id);
        all
    }

    pub fn clear(&mut self) {
        self.by_key.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConvKey {
        ConvKey {
            company_key: "acme".into(),
            network_key: "brandmessenger".into(),
            external_id: "bm-web-01".into(),
            author_id: "u1".into(),
        }
    }

    #[test]
    fn close_starts_a_new_bot_owned_conversation() {
        let mut all = Conversations::default();
        let author = Author {
            id: "u1".into(),
            ..Author::default()
        };
        let (c, opened) = all.open(&key(), &author, "bot", 1);
        assert_eq!(opened, Opened::New);
        let first_id = c.conversation_display_id;
        assert!(c.set_owner(Owner::agent(), 2));
        c.add_tags(&[TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF, TAG_BOT_HANDOFF]);
        assert_eq!(c.tags.len(), 2);
        assert_eq!(all.open(&key(), &author, "bot", 3).1, Opened::Existing);
        all.get_mut(&key()).unwrap().status = ConversationStatus::Closed;
        let (c, opened) = all.open(&key(), &author, "bot", 4);
        assert_eq!(opened, Opened::New);
        assert!(c.owner.is_bot("bot"));
        assert!(c.tags.is_empty());
        assert_eq!(c.conversation_display_id, first_id + 1);
    }
}
