//! Async-mode deliveries (`docs/vendors/kore-webhook-channel.md`, "Deliveries"): after the
//! acknowledgement each bot message is POSTed
//! to the channel's POST_URL, one request per message, then a separate task-status delivery
//! if the turn ended a task. One worker per user sends that user's deliveries sequentially,
//! in order; workers exit after a quiet spell or on shutdown. Every delivery's outcome is
//! recorded for `GET /sim/deliveries`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shared::Secret;
use tokio::sync::mpsc;

use super::config::TokenHeader;
use super::inspect::{Delivery, DeliveryKind};
use super::payload::ApiVersion;
use super::render;
use super::script::Step;
use super::state::{lock, State};

/// A user's worker exits after this long without work.
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// Per-delivery HTTP timeout.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how a channel delivers.
#[derive(Clone, Debug)]
pub struct Target {
    pub post_url: Option<String>,
    pub access_token: Option<Secret>,
    pub token_header: TokenHeader,
}

/// One turn's deliveries.
#[derive(Debug)]
pub struct Job {
    pub version: ApiVersion,
    pub user: String,
    pub bot: String,
    pub instance: Option<String>,
    pub target: Target,
    /// Before the first delivery (channel async delay + the turn's processing delay).
    pub delay: Duration,
    pub steps: Vec<Step>,
    pub task: Map<String, Value>,
}

/// The HTTP client and the per-user worker queues.
pub struct Outbox {
    http: reqwest::Client,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
}

impl Outbox {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            http,
            workers: Mutex::default(),
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues `job` behind the user's earlier turns, starting the user's worker if needed.
pub fn enqueue(state: &Arc<State>, job: Job) {
    let mut workers = lock(&state.outbox.workers);
    let user = job.user.clone();
    let job = match workers.get(&user) {
        Some(tx) => match tx.send(job) {
            Ok(()) => return,
            Err(mpsc::error::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // The receiver is alive until the worker below exits, so this send cannot fail.
    let _ = tx.send(job);
    workers.insert(user.clone(), tx);
    tokio::spawn(run_worker(Arc::clone(state), user, rx));
}

async fn run_worker(state: Arc<State>, user: String, mut rx: mpsc::UnboundedReceiver<Job>) {
    loop {
        let next = tokio::select! {
            _ = state.cancel.cancelled() => return,
            next = tokio::time::timeout(WORKER_IDLE, rx.recv()) => next,
        };
        match next {
            Ok(Some(job)) => {
                tokio::select! {
                    _ = state.cancel.cancelled() => return,
                    _ = deliver(&state, job) => {}
                }
            }
            Ok(None) => return,
            Err(_idle) => {
                // Senders only send while holding this lock, so an empty queue seen under
                // it stays empty once the entry is gone.
                let mut workers = lock(&state.outbox.workers);
                if rx.is_empty() {
                    workers.remove(&user);
                    return;
                }
            }
        }
    }
}

async fn deliver(state: &State, job: Job) {
    tokio::time::sleep(job.delay).await;
    for step in &job.steps {
        if let Step::Pause(p) = step {
            tokio::time::sleep(Duration::from_millis(p.pause_ms)).await;
            continue;
        }
        if let Some(body) = render::async_message(job.version, step, &job.user, &job.bot) {
            post(state, &job, DeliveryKind::Message, body).await;
        }
    }
    if !job.task.is_empty() {
        let body = render::async_status(job.version, &job.user, &job.bot, &job.task);
        post(state, &job, DeliveryKind::Status, body).await;
    }
}

async fn post(state: &State, job: &Job, kind: DeliveryKind, body: Value) {
    let started = Instant::now();
    let sent_at_ms = render::unix_millis();
    let mut delivery = Delivery {
        seq: 0,
        version: job.version,
        kind,
        user_id: job.user.clone(),
        instance: job.instance.clone(),
        url: job.target.post_url.clone(),
        token_header: job
            .target
            .access_token
            .as_ref()
            .map(|_| job.target.token_header.name().to_string()),
        body: body.clone(),
        status: None,
        error: None,
        sent_at_ms,
        duration_ms: 0,
    };
    match &job.target.post_url {
        None => delivery.error = Some("no POST_URL configured".into()),
        Some(url) => {
            let mut request = state.outbox.http.post(url).json(&body);
            if let Some(token) = &job.target.access_token {
                request = request.header(
                    job.target.token_header.name(),
                    job.target.token_header.value(token.expose()),
                );
            }
            match request.send().await {
                Ok(response) => delivery.status = Some(response.status().as_u16()),
                Err(e) => delivery.error = Some(e.without_url().to_string()),
            }
        }
    }
    delivery.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        user = %delivery.user_id,
        kind = ?delivery.kind,
        status = ?delivery.status,
        error = ?delivery.error,
        "kore-sim async delivery"
    );
    state.record_delivery(delivery);
}
