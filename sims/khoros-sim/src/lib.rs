//! The Khoros Care simulator: a faithful stand-in for the Bot API v3 gateway, the Automation
//! Framework's event sender and the Care conversation model, built from
//! `docs/vendors/khoros-bot-api-v3.md` and `docs/vendors/khoros-webhooks.md`. Every test, the local
//! demo and the benchmarks use it.
//!
//! Start one with [`KhorosSim::start`]; the bridge calls its `/bots/v3/*` routes with a
//! bearer token, tests inject author messages and agent actions and read back what the bot
//! did, in process (methods on [`KhorosSim`]) or over HTTP (`/sim/*`, see [`inspect`]).
//!
//! # Layout
//! - [`config`]: [`KhorosSimConfig`] and its `KHOROS_SIM_*` environment form.
//! - [`clock`]: the sim's own epoch-ms clock (set, advance, speed up).
//! - [`tokens`]: the bearer-token table: minting, 10-minute refresh grace, DELETE.
//! - [`conversations`]: ownership, display ids, tags, priority, replies per author.
//! - [`gateway`]: the Bot API v3 routes, with auth, faults and the request log.
//! - [`token_host`]: the Care instance's token creation (Basic auth;
//!   `docs/vendors/khoros-bot-api-v3.md`, "Create the first token").
//! - [`events`]: bodies of message, update, control and probe events.
//! - [`sender`]: signed delivery, retries, automatic handoff, suspension and probes.
//! - [`health`]: the rolling 2-minute health window and suspension rule.
//! - [`request_log`]: records behind `GET /bots/v3/request/{id}`.
//! - [`faults`]: per-route forced statuses, latency and dropped connections, striking before
//!   the call or, with `after`, once it took effect (the answer is lost, the effect is not).
//! - [`actions`]: author messages, closes, agent replies and control moves.
//! - [`settings`]: what `/sim/settings` may change at run time.
//! - [`inspect`]: the `/sim/*` inspection and control API.
//! - [`state`]: the shared state and the operations spanning several parts.
//! - [`error`]: [`ApiError`] (the body shapes of `docs/vendors/khoros-bot-api-v3.md`,
//!   "Error bodies"), [`SimError`], [`StartError`].

pub mod actions;
pub mod clock;
pub mod config;
pub mod conversations;
pub mod error;
pub mod events;
pub mod faults;
pub mod gateway;
pub mod health;
pub mod inspect;
pub mod request_log;
pub mod sender;
pub mod settings;
pub mod state;
pub mod token_host;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::{json, Value};
use shared::event::Owner;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use self::actions::{AuthorRef, InboundMessage, Injected};
pub use self::clock::{ClockView, SimClock};
pub use self::config::{Credentials, KhorosSimConfig, SenderConfig, Tamper, WebhookTarget};
pub use self::conversations::{
    ChangeSource, ControlChange, Conversation, ConversationStatus, TAG_AUTOMATIC_HANDOFF,
    TAG_BOT_HANDOFF, TAG_STANDARD_HANDOFF,
};
pub use self::error::{ApiError, SimError, StartError};
pub use self::faults::{Fault, FaultView};
pub use self::health::{HealthReport, HealthStatus, HealthView};
pub use self::request_log::{Origin, RequestRecord, RequestState};
pub use self::settings::{CredentialsPatch, SettingsPatch, SettingsView};
pub use self::state::{DeliveryOutcome, EmittedEvent};
pub use self::tokens::{IssuedToken, TokenState, TokenView};

use self::state::Shared;

/// A running simulator. Dropping it stops the server and the sender.
pub struct KhorosSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl KhorosSim {
    /// Binds `127.0.0.1:0` and starts.
    pub async fn start(config: KhorosSimConfig) -> Result<Self, StartError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, config).await
    }

    /// Starts on a listener the caller bound (the binary binds `KHOROS_SIM_LISTEN`).
    pub async fn start_on(
        listener: TcpListener,
        mut config: KhorosSimConfig,
    ) -> Result<Self, StartError> {
        if !config.networks.contains(&config.network_key) {
            config.networks.push(config.network_key.clone());
        }
        let addr = listener.local_addr()?;
        let (shared, lanes) = Shared::new(config)?;
        sender::spawn(&shared, lanes);
        let app = Router::new()
            .merge(gateway::router(shared.clone()))
            .merge(token_host::router(shared.clone()))
            .merge(inspect::router(shared.clone()))
            .fallback(not_found);
        let stop = shared.cancel.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "khoros-sim server failed");
            }
        });
        tracing::info!(%addr, "khoros-sim listening");
        Ok(Self {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:<port>`: the Bot API gateway, the token host and `/sim`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &KhorosSimConfig {
        &self.shared.config
    }

    /// Stops accepting, cancels deliveries and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    // --- clock ---

    pub fn clock(&self) -> &SimClock {
        &self.shared.clock
    }

    pub fn now_ms(&self) -> i64 {
        self.shared.now_ms()
    }

    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
        self.shared.notify();
    }

    pub fn set_clock_ms(&self, ms: i64) {
        self.shared.clock.set_ms(ms);
        self.shared.notify();
    }

    pub fn set_clock_speed(&self, speed: f64) -> Result<(), SimError> {
        self.shared.clock.set_speed(speed)
    }

    // --- tokens ---

    /// The configured opaque token, if any.
    pub fn initial_token(&self) -> Option<String> {
        self.shared
            .config
            .initial_token
            .as_ref()
            .map(|t| t.expose().to_string())
    }

    /// A fresh active JWT for the configured appId (the current one enters its grace).
    pub fn mint_token(&self) -> IssuedToken {
        let now = self.now_ms();
        let app_id = self.shared.config.app_id.clone();
        self.shared
            .with_state(|state| state.tokens.mint(&app_id, now))
    }

    pub fn tokens(&self) -> Vec<TokenView> {
        let now = self.now_ms();
        self.shared.lock().tokens.views(now)
    }

    // --- conversations ---

    pub fn conversation(&self, author: impl Into<AuthorRef>) -> Option<Conversation> {
        self.shared.conversation(&author.into())
    }

    pub fn conversations(&self) -> Vec<Conversation> {
        self.shared
            .lock()
            .conversations
            .all()
            .into_iter()
            .cloned()
            .collect()
    }

    pub fn owner(&self, author: impl Into<AuthorRef>) -> Option<Owner> {
        self.conversation(author).map(|c| c.owner)
    }

    /// The `/respond` bodies of `type: "message"` sent to the author, in order.
    pub fn messages(&self, author: impl Into<AuthorRef>) -> Vec<Value> {
        self.conversation(author)
            .map(|c| c.messages())
            .unwrap_or_default()
    }

    /// Handoff tag names of the conversation.
    pub fn tags(&self, author: impl Into<AuthorRef>) -> Vec<String> {
        self.conversation(author)
            .map(|c| c.tags)
            .unwrap_or_default()
    }

    /// Care tag ids applied with `PUT /bots/v3/tag`.
    pub fn tag_ids(&self, author: impl Into<AuthorRef>) -> Vec<i64> {
        self.conversation(author)
            .map(|c| c.tag_ids)
            .unwrap_or_default()
    }

    pub fn priority(&self, author: impl Into<AuthorRef>) -> Option<u8> {
        self.conversation(author).and_then(|c| c.priority)
    }

    pub fn control_changes(&self) -> Vec<ControlChange> {
        self.shared.lock().control_changes.iter().cloned().collect()
    }

    // --- logs, events, health ---

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.iter().cloned().collect()
    }

    pub fn request(&self, id: &str) -> Option<RequestRecord> {
        self.shared.lock().log.get(id).cloned()
    }

    /// Every event emitted towards the bot, oldest first, with its delivery outcome.
    pub fn events(&self) -> Vec<EmittedEvent> {
        self.shared.lock().events.iter().cloned().collect()
    }

    pub fn health(&self) -> HealthView {
        let now = self.now_ms();
        self.shared.with_state(|state| state.health.view(now))
    }

    // --- faults and settings ---

    pub fn add_fault(&self, fault: Fault) -> Result<u64, SimError> {
        self.shared.with_state(|state| state.faults.add(fault))
    }

    pub fn remove_fault(&self, id: u64) -> bool {
        self.shared.with_state(|state| state.faults.remove(id))
    }

    pub fn clear_faults(&self) {
        self.shared.with_state(|state| state.faults.clear(None));
    }

    pub fn faults(&self) -> Vec<FaultView> {
        self.shared.lock().faults.list()
    }

    pub fn settings(&self) -> SettingsView {
        self.shared.lock().settings.view()
    }

    pub fn update_settings(&self, patch: SettingsPatch) -> Result<(), SimError> {
        self.shared.with_state(|state| state.settings.apply(patch))
    }

    /// Points deliveries at `target` (`None`: stop delivering).
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        self.shared
            .with_state(|state| state.settings.webhook = target);
    }

    pub fn set_tamper(&self, tamper: Tamper) {
        self.shared
            .with_state(|state| state.settings.sender.tamper = tamper);
    }

    /// `/respond` answers 202 with no body (true) or 200 with the body of
    /// `docs/vendors/khoros-bot-api-v3.md`, "Respond" (false).
    pub fn set_respond_accepted(&self, accepted: bool) {
        self.shared
            .with_state(|state| state.settings.respond_accepted = accepted);
    }

    // --- actions ---

    pub fn inject_message(&self, message: &InboundMessage) -> Result<Injected, SimError> {
        self.shared.inject_message(message)
    }

    /// The author sends `text` on the default network.
    pub fn send_text(&self, author_id: &str, text: &str) -> Result<Injected, SimError> {
        self.inject_message(&InboundMessage::text(author_id, text))
    }

    /// Closes the conversation: CLOSED update, ownership back to the bot.
    pub fn close(&self, author: impl Into<AuthorRef>) -> Result<(), SimError> {
        self.shared.close_conversation(&author.into(), 1)
    }

    /// An agent replies (AGENT_RESPONSE update); returns the event's request id.
    pub fn agent_reply(
        &self,
        author: impl Into<AuthorRef>,
        text: &str,
    ) -> Result<String, SimError> {
        self.shared.agent_reply(&author.into(), text)
    }

    pub fn agent_take(
        &self,
        author: impl Into<AuthorRef>,
        comment: Option<&str>,
    ) -> Result<(), SimError> {
        self.shared
            .agent_take(&author.into(), comment.map(str::to_string))
    }

    pub fn agent_return(
        &self,
        author: impl Into<AuthorRef>,
        comment: Option<&str>,
    ) -> Result<(), SimError> {
        self.shared
            .agent_return(&author.into(), comment.map(str::to_string))
    }

    /// Forgets conversations, logs, events, faults and health; keeps tokens and settings.
    pub fn reset(&self) {
        self.shared.reset();
    }

    // --- waits ---

    /// Waits until `check` returns `Some`, re-checking on every state change (and at least
    /// every 50 ms, for clock-driven conditions).
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&KhorosSim) -> Option<T>,
    ) -> Result<T, SimError> {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(value) = check(self) {
                return Ok(value);
            }
            let next = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return check(self).ok_or_else(|| SimError::Timeout {
                    what: what.to_string(),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
        }
    }

    /// Waits until the bot has sent at least `n` messages to `author`; returns them all.
    pub async fn wait_for_messages(
        &self,
        author: impl Into<AuthorRef>,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, SimError> {
        let author = author.into();
        let what = format!("{n} messages to {}", author.author_id);
        self.wait_until(timeout, &what, |sim| {
            let messages = sim.messages(author.clone());
            (messages.len() >= n).then_some(messages)
        })
        .await
    }
}

impl Drop for KhorosSim {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Unknown paths: the 404 shape of `docs/vendors/khoros-bot-api-v3.md`, "Error bodies" (with
/// `x-amzn-RequestId`) under `/bots/v3`, a
/// `/sim`-style error elsewhere.
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    if uri.path().starts_with("/bots/v3/") {
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = json!({"error": {"messages": [format!("No route for {}", uri.path())]}});
        return (
            StatusCode::NOT_FOUND,
            [(gateway::REQUEST_ID_HEADER, request_id)],
            Json(body),
        )
            .into_response();
    }
    let body = json!({"error": format!("no route for {}", uri.path())});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
