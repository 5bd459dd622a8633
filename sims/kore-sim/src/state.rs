//! The simulator's shared state: live config, the bot's script, sessions, open polls, the
//! rate limiter, seen `jti`s and the bounded inspection log with its counters (watched by
//! `wait_for_*`). Locks are std mutexes held for short, await-free sections.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::asynchronous::Outbox;
use super::config::KoreSimConfig;
use super::inspect::{Delivery, RecordedRequest};
use super::poll::PollStore;
use super::ratelimit::RateLimiter;
use super::script::Script;

/// Locks `m`, recovering from poisoning (a panicked holder leaves plain data behind).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One user's conversation as the bot sees it (`docs/vendors/kore-webhook-channel.md`,
/// "Users and sessions").
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user_id: String,
    /// False after `SESSION_CLOSURE` until the next message.
    pub active: bool,
    /// Sessions started (first message, `session.new: true`, or after a closure).
    pub sessions: u64,
    /// Turns in the current session.
    pub turns: u64,
    /// Turns since the simulator started (or was reset).
    pub total_turns: u64,
    /// The last `message` object received.
    pub last_message: Value,
    pub last_seen_ms: u64,
}

/// Requests and deliveries, newest last, capped at the configured record limit.
#[derive(Debug, Default)]
pub struct Log {
    pub requests: VecDeque<RecordedRequest>,
    pub deliveries: VecDeque<Delivery>,
    next_request: u64,
    next_delivery: u64,
}

/// Everything the routes and the async workers share.
pub struct State {
    pub config: Mutex<KoreSimConfig>,
    pub script: Mutex<Script>,
    pub sessions: Mutex<BTreeMap<String, Session>>,
    pub polls: Mutex<PollStore>,
    pub limiter: Mutex<RateLimiter>,
    /// `jti` -> `exp`, for the replay check when JTI enforcement is on.
    pub jti_seen: Mutex<HashMap<String, u64>>,
    pub log: Mutex<Log>,
    /// Requests recorded since start or reset.
    pub requests_total: watch::Sender<u64>,
    /// Deliveries recorded since start or reset.
    pub deliveries_total: watch::Sender<u64>,
    pub outbox: Outbox,
    /// Cancelled on shutdown: stops waits, async workers and the server.
    pub cancel: CancellationToken,
}

impl State {
    pub fn new(config: KoreSimConfig, cancel: CancellationToken) -> Self {
        Self {
            config: Mutex::new(config),
            script: Mutex::default(),
            sessions: Mutex::default(),
            polls: Mutex::default(),
            limiter: Mutex::default(),
            jti_seen: Mutex::default(),
            log: Mutex::default(),
            requests_total: watch::Sender::new(0),
            deliveries_total: watch::Sender::new(0),
            outbox: Outbox::new(),
            cancel,
        }
    }

    pub fn config(&self) -> KoreSimConfig {
        lock(&self.config).clone()
    }

    fn limit(&self) -> usize {
        lock(&self.config).record_limit
    }

    pub fn record_request(&self, mut request: RecordedRequest) {
        let limit = self.limit();
        {
            let mut log = lock(&self.log);
            log.next_request += 1;
            request.seq = log.next_request;
            log.requests.push_back(request);
            while log.requests.len() > limit {
                log.requests.pop_front();
            }
        }
        self.requests_total.send_modify(|n| *n += 1);
    }

    pub fn record_delivery(&self, mut delivery: Delivery) {
        let limit = self.limit();
        {
            let mut log = lock(&self.log);
            log.next_delivery += 1;
            delivery.seq = log.next_delivery;
            log.deliveries.push_back(delivery);
            while log.deliveries.len() > limit {
                log.deliveries.pop_front();
            }
        }
        self.deliveries_total.send_modify(|n| *n += 1);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).requests.iter().cloned().collect()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.log).deliveries.iter().cloned().collect()
    }

    /// Forgets recorded requests and deliveries (counters restart at zero).
    pub fn clear_log(&self) {
        *lock(&self.log) = Log::default();
        self.requests_total.send_replace(0);
        self.deliveries_total.send_replace(0);
    }

    /// Forgets everything but the config: log, sessions, scripts, polls, limiter, jtis.
    pub fn reset(&self) {
        self.clear_log();
        lock(&self.sessions).clear();
        lock(&self.script).clear();
        lock(&self.polls).clear();
        lock(&self.limiter).clear();
        lock(&self.jti_seen).clear();
    }

    /// Counts one turn for `user`, starting a session when asked or when none is active.
    pub fn touch_session(&self, user: &str, new_session: bool, message: Value, now_ms: u64) {
        let mut sessions = lock(&self.sessions);
        let session = sessions.entry(user.to_string()).or_insert_with(|| Session {
            user_id: user.to_string(),
            active: false,
            sessions: 0,
            turns: 0,
            total_turns: 0,
            last_message: Value::Null,
            last_seen_ms: now_ms,
        });
        if new_session || !session.active {
            session.active = true;
            session.sessions += 1;
            session.turns = 0;
        }
        session.turns += 1;
        session.total_turns += 1;
        session.last_message = message;
        session.last_seen_ms = now_ms;
    }

    /// Ends `user`'s session; `true` if one was active.
    pub fn close_session(&self, user: &str, message: Value, now_ms: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(user) {
            Some(session) if session.active => {
                session.active = false;
                session.last_message = message;
                session.last_seen_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Records `jti` until `exp`; `false` if it was seen before (a replay).
    pub fn first_use_of_jti(&self, jti: &str, exp: u64, now: u64) -> bool {
        let mut seen = lock(&self.jti_seen);
        seen.retain(|_, e| *e > now);
        seen.insert(jti.to_string(), exp).is_none()
    }
}
