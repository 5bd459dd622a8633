//! The state every part of the sim shares: one mutex over the mutable model (never held
//! across an `.await`), the clock, the delivery lanes and a change counter that waiters watch.
//!
//! Operations that touch several parts at once (ownership changes with their tags, control
//! log and control event; closing a conversation) live here so the gateway, the sender and
//! the actions apply them identically.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use shared::event::Owner;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::actions::AuthorRef;
use super::clock::SimClock;
use super::config::KhorosSimConfig;
use super::conversations::{
    ChangeSource, ControlChange, ConvKey, Conversation, ConversationStatus, Conversations,
};
use super::events;
use super::faults::FaultSet;
use super::health::Health;
use super::request_log::RequestLog;
use super::settings::Settings;
use super::tokens::TokenTable;
use super::SimError;

/// What became of an emitted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryOutcome {
    /// Waiting in its lane or being attempted.
    Queued,
    Delivered,
    /// Every attempt failed.
    Failed,
    /// Not attempted: deliveries were suspended.
    Suspended,
    /// Not attempted: no webhook is configured.
    NoWebhook,
}

/// An event the Framework emitted, as `GET /sim/events` lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmittedEvent {
    /// The `x-amzn-RequestId` of every attempt.
    pub request_id: String,
    /// `message`, `update`, `control` or `probe`.
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author_id: Option<String>,
    pub body: Value,
    pub outcome: DeliveryOutcome,
    pub attempts: u32,
    /// HTTP status of each attempt (`null` for timeouts and connection errors).
    pub statuses: Vec<Option<u16>>,
    pub created_millis: i64,
}

/// The mutable model.
#[derive(Debug)]
pub struct State {
    pub settings: Settings,
    pub tokens: TokenTable,
    pub conversations: Conversations,
    pub log: RequestLog,
    pub faults: FaultSet,
    pub health: Health,
    pub events: VecDeque<EmittedEvent>,
    pub control_changes: VecDeque<ControlChange>,
}

impl State {
    /// Appends to the bounded event history.
    pub fn record_event(&mut self, event: EmittedEvent, limit: usize) {
        if self.events.len() >= limit.max(1) {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn event_mut(&mut self, request_id: &str) -> Option<&mut EmittedEvent> {
        // Recent events are the ones being updated; search from the back.
        self.events
            .iter_mut()
            .rev()
            .find(|e| e.request_id == request_id)
    }
}

/// What a lane delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A message event: its final failure hands the conversation to an agent.
    Message,
    Other,
    /// The suspension probe: attempted while suspended, never retried.
    Probe,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub request_id: String,
    /// Serialised once; every attempt signs and sends these exact bytes.
    pub body: Bytes,
    pub kind: JobKind,
    pub key: Option<ConvKey>,
}

pub struct Shared {
    /// Identity and start-up settings (company, appId, defaults).
    pub config: KhorosSimConfig,
    pub clock: Arc<SimClock>,
    state: Mutex<State>,
    /// Bumped after every mutation so waiters re-check without polling hard.
    changes: watch::Sender<u64>,
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    pub http: reqwest::Client,
    pub cancel: CancellationToken,
}

impl Shared {
    /// The shared state and the receiving ends of its delivery lanes.
    pub fn new(
        config: KhorosSimConfig,
    ) -> Result<(Arc<Self>, Vec<mpsc::UnboundedReceiver<Job>>), SimError> {
        let clock = Arc::new(SimClock::new(config.clock_start_ms, config.clock_speed)?);
        let now = clock.now_ms();
        let mut tokens = TokenTable::new(
            config.jwt_signing_key.clone(),
            &config.company_key,
            &config.aws_region,
        );
        if let Some(token) = &config.initial_token {
            tokens.insert_configured(token.expose(), &config.app_id, now);
        }
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.sender.lanes.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let state = State {
            settings: Settings {
                respond_accepted: config.respond_accepted,
                webhook: config.webhook.clone(),
                sender: config.sender.clone(),
                grant_renames: Default::default(),
            },
            tokens,
            conversations: Conversations::default(),
            log: RequestLog::new(config.history_limit),
            faults: FaultSet::default(),
            health: Health::default(),
            events: VecDeque::new(),
            control_changes: VecDeque::new(),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SimError::Invalid(format!("http client: {e}")))?;
        let shared = Arc::new(Self {
            config,
            clock,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
            lanes: senders,
            http,
            cancel: CancellationToken::new(),
        });
        Ok((shared, receivers))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Reads the state (no change notification).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation leaves the model consistent before it can panic; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutates the state, then wakes waiters.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = f(&mut self.lock());
        self.notify();
        result
    }

    pub fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records an event and queues it on its conversation's lane. Called with the state
    /// locked so events of one conversation are queued in the order they happened.
    pub fn emit(
        &self,
        state: &mut State,
        body: Value,
        kind: JobKind,
        key: Option<&ConvKey>,
    ) -> String {
        let request_id = uuid::Uuid::new_v4().to_string();
        let serialized = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
        let event = EmittedEvent {
            request_id: request_id.clone(),
            event_type: field("type").unwrap_or_default(),
            operation: field("operation"),
            author_id: key.map(|k| k.author_id.clone()),
            body,
            outcome: DeliveryOutcome::Queued,
            attempts: 0,
            statuses: Vec::new(),
            created_millis: self.now_ms(),
        };
        state.record_event(event, self.config.history_limit);
        let lane = match key {
            Some(key) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % self.lanes.len() as u64) as usize
            }
            None => 0,
        };
        let job = Job {
            request_id: request_id.clone(),
            body: serialized,
            kind,
            key: key.cloned(),
        };
        // A closed lane means the sim is shutting down; the event simply stays queued.
        let _ = self.lanes[lane].send(job);
        request_id
    }

    /// Moves control of `key` to `to`, applies `tags`, logs the change and emits a control
    /// event when the owner really changed. `None` when the conversation is unknown.
    pub fn change_owner(
        &self,
        state: &mut State,
        key: &ConvKey,
        to: Owner,
        source: ChangeSource,
        comment: Option<String>,
        tags: &[&str],
    ) -> Option<ControlChange> {
        let now = self.now_ms();
        let conversation = state.conversations.get_mut(key)?;
        let from = conversation.owner.clone();
        let changed = conversation.set_owner(to.clone(), now);
        conversation.add_tags(tags);
        let change = ControlChange {
            key: key.clone(),
            conversation_display_id: conversation.conversation_display_id,
            from,
            to,
            source,
            comment: comment.clone(),
            changed,
            at_millis: now,
        };
        let event =
            changed.then(|| events::control(conversation, &self.config.app_id, comment.as_deref()));
        if state.control_changes.len() >= self.config.history_limit.max(1) {
            state.control_changes.pop_front();
        }
        state.control_changes.push_back(change.clone());
        if let Some(event) = event {
            self.emit(state, event, JobKind::Other, Some(key));
        }
        Some(change)
    }

    /// Automatic handoff (`docs/vendors/khoros-webhooks.md`, "Automatic hand-off"): only a
    /// conversation this bot owns moves to an agent.
    pub fn automatic_handoff(&self, key: &ConvKey, reason: &str) {
        use super::conversations::{TAG_AUTOMATIC_HANDOFF, TAG_BOT_HANDOFF};
        let app_id = self.config.app_id.clone();
        self.with_state(|state| {
            let bot_owned = state
                .conversations
                .get(key)
                .is_some_and(|c| c.owner.is_bot(&app_id));
            if bot_owned {
                self.change_owner(
                    state,
                    key,
                    Owner::agent(),
                    ChangeSource::Framework,
                    Some(format!("Automatic Bot Handoff: {reason}")),
                    &[TAG_BOT_HANDOFF, TAG_AUTOMATIC_HANDOFF],
                );
            }
        });
    }

    /// Closes the conversation (`docs/vendors/khoros-webhooks.md`, "Update events"): CLOSED update,
    /// then ownership back to the bot.
    pub fn close(
        &self,
        state: &mut State,
        key: &ConvKey,
        disposition_id: i64,
    ) -> Result<(), SimError> {
        let conversation = state
            .conversations
            .get_mut(key)
            .ok_or_else(|| SimError::UnknownConversation(key.author_id.clone()))?;
        conversation.status = ConversationStatus::Closed;
        let event = events::closed(conversation, &self.config.app_id, disposition_id);
        self.emit(state, event, JobKind::Other, Some(key));
        self.change_owner(
            state,
            key,
            Owner::bot(&self.config.app_id),
            ChangeSource::Close,
            None,
            &[],
        );
        Ok(())
    }

    /// The key for an author on a network/externalId (the configured defaults when `None`).
    pub fn key(
        &self,
        author_id: &str,
        network_key: Option<&str>,
        external_id: Option<&str>,
    ) -> ConvKey {
        ConvKey {
            company_key: self.config.company_key.clone(),
            network_key: network_key.unwrap_or(&self.config.network_key).to_string(),
            external_id: external_id.unwrap_or(&self.config.external_id).to_string(),
            author_id: author_id.to_string(),
        }
    }

    /// A copy of the conversation `target` names.
    pub fn conversation(&self, target: &AuthorRef) -> Option<Conversation> {
        let key = self.key(
            &target.author_id,
            target.network_key.as_deref(),
            target.external_id.as_deref(),
        );
        self.lock().conversations.get(&key).cloned()
    }

    /// Forgets conversations, logs, events, faults and health; keeps tokens and settings.
    pub fn reset(&self) {
        self.with_state(|state| {
            state.conversations.clear();
            state.log.clear();
            state.events.clear();
            state.control_changes.clear();
            state.faults.clear(None);
            state.health = Health::default();
        });
    }

    pub fn network_is_valid(&self, network_key: &str) -> bool {
        self.config.networks.iter().any(|n| n == network_key)
    }
}
