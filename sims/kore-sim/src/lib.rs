//! Kore.ai simulator: the XO platform's Webhook channel with a scriptable bot, faithful to
//! `docs/vendors/kore-webhook-channel.md`. Tests, the local demo and the benchmarks use it in
//! place of Kore.ai.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kore_sim::{KoreSim, KoreSimConfig, Turn};
//! let sim = KoreSim::start(KoreSimConfig::default()).await?;
//! sim.script("user-1", [Turn::quick_replies("Pick one", &[("Yes", "YES")])]);
//! // POST {sim.v2_url()} with `Authorization: bearer {sim.token()}` ...
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: `KoreSimConfig` (bot, app/JWT, channel instances, latency, outage, ...) and
//!   the runtime `ConfigPatch`.
//! - [`jwt`]: the JWT checks (`docs/vendors/kore-webhook-channel.md`, "What Kore checks"), token
//!   minting for tests, a decoder for the log.
//! - [`payload`]: V1/V2 request validation.
//! - [`script`]: the scriptable bot (`Turn`, per-user queues, echo).
//! - [`templates`]: Kore templates and the `khoros_handoff` convention.
//! - [`render`]: V1/V2 response and delivery bodies, ids, timestamps.
//! - [`webhook`]: the `/chatbot/...` routes.
//! - [`poll`]: V2 polling state.
//! - [`asynchronous`]: POST_URL deliveries, sequential per user.
//! - [`ratelimit`]: the optional 60/min per bot+user limiter.
//! - [`error`]: failures and Kore's error envelope.
//! - [`inspect`]: the `/sim/...` inspection and control API and its record types.
//! - [`state`]: shared state and the bounded log.

pub mod asynchronous;
pub mod config;
pub mod error;
pub mod inspect;
pub mod jwt;
pub mod payload;
pub mod poll;
pub mod ratelimit;
pub mod render;
pub mod script;
pub mod state;
pub mod templates;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ChannelConfig, ConfigPatch, JwtAlg, KoreSimConfig, Mode, TokenHeader};
pub use inspect::{BadRequest, Delivery, DeliveryKind, RecordedRequest, WaitTimeout};
pub use jwt::Claims;
pub use payload::ApiVersion;
pub use script::{Step, Turn};
pub use state::Session;
pub use templates::Button;

use state::{lock, State};

/// A running simulator. Dropping it stops the server; [`KoreSim::shutdown`] also waits.
pub struct KoreSim {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl KoreSim {
    /// Binds `127.0.0.1:0` and serves.
    pub async fn start(config: KoreSimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, config)
    }

    /// Serves on an already bound listener (the binary binds `KORE_SIM_LISTEN`).
    pub fn start_on(listener: TcpListener, config: KoreSimConfig) -> std::io::Result<Self> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let state = Arc::new(State::new(config, cancel.clone()));
        let app = router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "kore-sim listening");
        Ok(Self {
            addr,
            state,
            task: Some(task),
        })
    }

    /// Stops accepting, ends in-flight waits and async workers, and waits for the server.
    pub async fn shutdown(mut self) {
        self.state.cancel.cancel();
        if let Some(task) = self.task.take() {
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "kore-sim server ended with an error");
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the `{host}` of `docs/vendors/kore-webhook-channel.md`,
    /// "Endpoints".
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// V1 endpoint of the configured bot.
    pub fn v1_url(&self) -> String {
        format!("{}/chatbot/hooks/{}", self.base_url(), self.bot_id())
    }

    /// V2 endpoint of the configured bot.
    pub fn v2_url(&self) -> String {
        format!("{}/chatbot/v2/webhook/{}", self.base_url(), self.bot_id())
    }

    /// V1 endpoint of an extra channel instance.
    pub fn v1_instance_url(&self, instance: &str) -> String {
        format!("{}/hookInstance/{instance}", self.v1_url())
    }

    /// V2 endpoint of an extra channel instance.
    pub fn v2_instance_url(&self, instance: &str) -> String {
        format!("{}/hookInstance/{instance}", self.v2_url())
    }

    /// V2 poll endpoint for `poll_id`.
    pub fn poll_url(&self, poll_id: &str) -> String {
        format!("{}/poll/{poll_id}", self.v2_url())
    }

    fn bot_id(&self) -> String {
        lock(&self.state.config).bot_id.clone()
    }

    /// A valid token for the current app (5 minutes, no `userIdentity`).
    pub fn token(&self) -> String {
        self.token_with(&self.claims())
    }

    /// Valid claims for the current app, to tweak before [`KoreSim::token_with`].
    pub fn claims(&self) -> Claims {
        Claims::for_app(&lock(&self.state.config).client_id)
    }

    /// `claims` signed with the app's secret and algorithm.
    pub fn token_with(&self, claims: &Claims) -> String {
        let config = self.state.config();
        jwt::mint(
            claims,
            config.jwt_alg,
            config.client_secret.expose().as_bytes(),
        )
    }

    /// Appends turns for `user` (the body's `from.id`), consumed one per message, in order.
    pub fn script(&self, user: &str, turns: impl IntoIterator<Item = Turn>) {
        lock(&self.state.script).push(user, turns);
    }

    /// Turns still queued, by user.
    pub fn pending_script(&self) -> std::collections::BTreeMap<String, Vec<Turn>> {
        lock(&self.state.script).pending()
    }

    /// The live configuration.
    pub fn config(&self) -> KoreSimConfig {
        self.state.config()
    }

    /// Applies `patch` (validated; all or nothing).
    pub fn update_config(&self, patch: &ConfigPatch) -> Result<(), BadRequest> {
        inspect::apply_patch(&self.state, patch)
    }

    /// Added latency for every answer.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state.config).latency = latency;
    }

    /// Outage switch: every webhook call fails with `status` (4xx/5xx); `None` restores.
    pub fn set_outage(&self, status: Option<u16>) -> Result<(), BadRequest> {
        self.update_config(&ConfigPatch {
            fail_all: Some(status),
            ..ConfigPatch::default()
        })
    }

    /// Reply used when a user has no scripted turn; `None` restores the echo.
    pub fn set_default_reply(&self, turn: Option<Turn>) -> Result<(), BadRequest> {
        self.update_config(&ConfigPatch {
            default_reply: Some(turn),
            ..ConfigPatch::default()
        })
    }

    /// Recorded calls, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Recorded async deliveries, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries()
    }

    /// Sessions by user id.
    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.state.sessions).values().cloned().collect()
    }

    pub fn session(&self, user: &str) -> Option<Session> {
        lock(&self.state.sessions).get(user).cloned()
    }

    /// Forgets recorded requests and deliveries.
    pub fn reset_requests(&self) {
        self.state.clear_log();
    }

    /// Forgets log, sessions, scripts, polls and rate-limit windows (config kept).
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Waits until at least `n` calls were recorded since start/reset; returns them all.
    pub async fn wait_for_requests(
        &self,
        n: u64,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        wait_count(&self.state.requests_total, n, timeout, "requests").await?;
        Ok(self.requests())
    }

    /// Waits until at least `n` deliveries were recorded since start/reset; returns them all.
    pub async fn wait_for_deliveries(
        &self,
        n: u64,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, WaitTimeout> {
        wait_count(&self.state.deliveries_total, n, timeout, "deliveries").await?;
        Ok(self.deliveries())
    }
}

impl Drop for KoreSim {
    fn drop(&mut self) {
        self.state.cancel.cancel();
    }
}

async fn wait_count(
    counter: &watch::Sender<u64>,
    n: u64,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WaitTimeout> {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|seen| *seen >= n)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(WaitTimeout {
            what,
            wanted: n,
            seen: *counter.borrow(),
        }),
    }
}

/// The whole HTTP surface: webhook routes, `/sim/...`, and a 404 envelope for the rest.
pub fn router(state: Arc<State>) -> Router {
    webhook::router(Arc::clone(&state))
        .merge(inspect::router(state))
        .fallback(webhook::not_found)
}
