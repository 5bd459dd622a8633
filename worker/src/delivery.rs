//! The delivery state machine: every Bot API call a reply takes (respond, hand-off, tag) goes
//! through [`Handlers::deliver`], and its outcome is always one of
//!
//! - **sent**: Khoros answered 2xx, or its request log shows the call arrived;
//! - **not sent**: Khoros refused it before acting (401, 429, a documented retryable 4xx), or
//!   the request log shows no such call: it may be sent (again);
//! - **failed**: Khoros refused it for good (4xx) or every allowed attempt was used: the event
//!   is dead-lettered at this step, and a replay resumes here;
//! - **unknown**: the call may have arrived but the request log cannot tell (unreadable,
//!   still `PENDING`): the event is dead-lettered as `unknown_outcome` and never resent blindly.
//!
//! `/respond` has no idempotency key (`docs/vendors/khoros-bot-api-v3.md`, "Respond"): after a
//! timeout, a 5xx or a broken connection, and after a crash that left a step in flight, its
//! outcome is resolved against the request log ("Request status lookup") before any resend.
//! Hand-offs and tags set state, so repeating them is harmless and they are simply retried.
//! Before each attempt the step is claimed in the progress record (compare-and-set), so two
//! processors of one event never send the same step.

use std::time::Duration;

use serde_json::Value;
use shared::khoros::KhorosApi;
use shared::retry::RetryPolicy;
use shared::upstream::{count_retry, UpstreamError};
use shared::Secret;

use crate::error::WorkerError;
use crate::handler::{Delivered, Handlers, Settle};
use crate::progress::{Progress, Tracked};
use crate::reply::Step;
use crate::telemetry;
use crate::token::TokenSource;

/// How long Khoros may take to show a finished call in its request log.
const LOG_SETTLE: Duration = Duration::from_millis(500);
/// Clock difference tolerated between this host and Khoros when records are compared with
/// the attempt's start.
const CLOCK_SKEW_MS: i64 = 100;
/// The longest look-back the request log allows (31 days), in minutes.
const LOG_MAX_MINUTES: i64 = 31 * 24 * 60;

/// A step that did not go out, with what the dead letter needs.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub step: &'static str,
    pub status: String,
    pub error: String,
    pub body_excerpt: String,
    pub attempts: u64,
}

impl StepFailure {
    fn from_upstream(step: &Step, e: &UpstreamError, attempts: u64) -> Self {
        Self {
            step: step.name(),
            status: e.status_label(),
            error: e.to_string(),
            body_excerpt: e.body_excerpt().to_string(),
            attempts,
        }
    }
}

/// What became of one step.
#[derive(Debug)]
enum StepOutcome {
    Sent,
    Failed(StepFailure),
    Unknown(StepFailure),
}

/// What the request log says about a call whose answer was lost.
#[derive(Debug, PartialEq)]
pub enum Resolution {
    Sent,
    NotSent,
    Unknown(Undecided),
}

/// Why the request log could not tell whether a call arrived.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Undecided {
    #[error("the call is still PENDING in Khoros' request log")]
    StillPending,
    #[error("the request log cannot be read: no Bot API token")]
    NoToken,
    #[error("the request log cannot be read: {0}")]
    LogUnreadable(String),
}

/// What to do after a failed call.
enum Class {
    /// Khoros did not act on it: try again after a wait.
    NotSent,
    /// 401: the scheduler may have rotated the token.
    Unauthorized,
    /// Refused for good.
    Permanent,
    /// Retryable, and repeating it is harmless (hand-off, tag).
    Idempotent,
    /// A `/respond` that may have arrived.
    Ambiguous,
}

fn classify(step: &Step, e: &UpstreamError) -> Class {
    let respond = matches!(step, Step::Respond(_));
    match e.status() {
        Some(401) => Class::Unauthorized,
        Some(429) => Class::NotSent,
        Some(s) if s >= 500 && respond => Class::Ambiguous,
        Some(_) if shared::retry::RetryClass::is_retryable(e) => Class::Idempotent,
        Some(_) => Class::Permanent,
        None if respond => Class::Ambiguous,
        None => Class::Idempotent,
    }
}

/// The Bot API side of deliveries.
#[derive(Clone)]
pub struct Delivery {
    pub api: KhorosApi,
    pub token: TokenSource,
    pub retry: RetryPolicy,
    pub app_id: String,
    /// `KHOROS_TIMEOUT`: a call claimed before a crash may still be running this long.
    pub call_timeout: Duration,
    /// The request log as last listed, shared by every resolution of this replica.
    pub log: RequestLog,
}

/// Khoros' request log of this app's Bot API calls, as this replica last listed it. A listing
/// covers minutes of every call the app made, so it grows with traffic; in a storm of lost
/// answers (Khoros slowing down, partitions moving mid-reply) one listing per resolution would
/// add load exactly when Khoros has least to spare. So resolutions share: a listing asked for
/// after the moment a resolution needs serves it, and while one is in flight the others wait
/// for it instead of asking too.
#[derive(Clone, Default)]
pub struct RequestLog {
    latest: std::sync::Arc<tokio::sync::Mutex<Option<Listing>>>,
}

struct Listing {
    /// When it was asked for, epoch ms: it shows every call that finished before.
    asked_at_ms: i64,
    /// The oldest creation time it covers, epoch ms.
    since_ms: i64,
    records: std::sync::Arc<Vec<Value>>,
}

impl RequestLog {
    /// Records created since `since_ms`, from a listing asked for at `fresh_from_ms` or later.
    async fn since(
        &self,
        delivery: &Delivery,
        since_ms: i64,
        fresh_from_ms: i64,
    ) -> Result<std::sync::Arc<Vec<Value>>, Undecided> {
        let mut latest = self.latest.lock().await;
        if let Some(l) = latest
            .as_ref()
            .filter(|l| l.asked_at_ms >= fresh_from_ms && l.since_ms <= since_ms)
        {
            metrics::counter!(telemetry::REQUEST_LOG_LISTINGS, "result" => "shared").increment(1);
            return Ok(l.records.clone());
        }
        let token = delivery.token.current().ok_or(Undecided::NoToken)?;
        let asked_at_ms = now_ms();
        let minutes = ((asked_at_ms - since_ms).max(0) / 60_000 + 2).min(LOG_MAX_MINUTES);
        let records = delivery
            .api
            .recent_bot_requests(&token, &delivery.app_id, &format!("{minutes}m"))
            .await
            .map_err(|e| Undecided::LogUnreadable(e.to_string()))?;
        metrics::counter!(telemetry::REQUEST_LOG_LISTINGS, "result" => "listed").increment(1);
        let records = std::sync::Arc::new(records);
        *latest = Some(Listing {
            asked_at_ms,
            since_ms: asked_at_ms - minutes * 60_000,
            records: records.clone(),
        });
        Ok(records)
    }
}

impl Delivery {
    async fn call(&self, step: &Step, token: &Secret) -> Result<(), UpstreamError> {
        match step {
            Step::Respond(body) => self.api.respond(token, body).await.map(drop),
            Step::Handoff(body) => self.api.control(token, body).await,
            Step::Tag(body) => self.api.tag(token, body).await,
        }
    }

    /// Whether the `/respond` of `steps[index]`, attempted at `attempt_at_ms`, reached Khoros.
    /// `after_crash`: the attempt may still be running (another process made it), so wait out
    /// the call timeout first.
    pub async fn resolve(
        &self,
        steps: &[Step],
        progress: &Progress,
        index: usize,
        after_crash: bool,
    ) -> Resolution {
        let (completed_at_ms, attempt_at_ms) = (&progress.completed_at_ms, progress.attempt_at_ms);
        let Step::Respond(body) = &steps[index] else {
            return Resolution::NotSent;
        };
        let wait_until = attempt_at_ms
            + LOG_SETTLE.as_millis() as i64
            + if after_crash {
                self.call_timeout.as_millis() as i64
            } else {
                0
            };
        let now = now_ms();
        if wait_until > now {
            tokio::time::sleep(Duration::from_millis((wait_until - now) as u64)).await;
        }
        // Only records made since the attempt began can be this call's. Identical bodies
        // (the same text twice in one turn) are told apart by time: an identical earlier part
        // of this reply that finished inside that window is counted out.
        let since = attempt_at_ms - CLOCK_SKEW_MS;
        let earlier = steps[..index]
            .iter()
            .enumerate()
            .filter(|(j, s)| {
                *s == &steps[index] && completed_at_ms.get(*j).is_none_or(|at| *at >= since)
            })
            .count();
        let mut delays = self.retry.delays();
        let mut fresh_from = wait_until;
        let resolution = loop {
            let why = match self.lookup(body, since, fresh_from).await {
                Ok((sent, _)) if sent > earlier => break Resolution::Sent,
                Ok((_, 0)) => break Resolution::NotSent,
                Ok(_) => Undecided::StillPending,
                Err(e) => e,
            };
            match delays.next() {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    // Asking again means a listing newer than the last one seen.
                    fresh_from = now_ms();
                }
                None => break Resolution::Unknown(why),
            }
        };
        let label = match &resolution {
            Resolution::Sent => "sent",
            Resolution::NotSent => "not_sent",
            Resolution::Unknown(_) => "unknown",
        };
        metrics::counter!(telemetry::RESOLUTIONS, "result" => label).increment(1);
        tracing::info!(
            step = index,
            result = label,
            "lost answer resolved against the request log"
        );
        resolution
    }

    /// Non-`ERROR` and `PENDING` records of this exact body created since `since_ms`, in a
    /// listing asked for at `fresh_from_ms` or later.
    async fn lookup(
        &self,
        body: &Value,
        since_ms: i64,
        fresh_from_ms: i64,
    ) -> Result<(usize, usize), Undecided> {
        let records = self.log.since(self, since_ms, fresh_from_ms).await?;
        let (mut sent, mut pending) = (0, 0);
        for record in records.iter() {
            let payload = record
                .get("payload")
                .and_then(Value::as_str)
                .and_then(|p| serde_json::from_str::<Value>(p).ok());
            let created = record.get("createdEpochMillis").and_then(Value::as_i64);
            if payload.as_ref() != Some(body) || created.is_some_and(|c| c < since_ms) {
                continue;
            }
            match record.get("state").and_then(Value::as_str) {
                Some("ERROR") => {}
                Some("PENDING") => pending += 1,
                _ => sent += 1,
            }
        }
        Ok((sent, pending))
    }
}

fn now_ms() -> i64 {
    shared::auth::Clock::now_ms(&shared::auth::SystemClock)
}

impl Handlers {
    /// Runs `steps` from where the progress record left off, recording each one. A step that
    /// fails or whose outcome stays unknown dead-letters the event (`Settle::Term`). The caller
    /// marks the event done ([`Self::finish`]) once nothing more is to come.
    pub async fn deliver(
        &self,
        env: &Delivered,
        tracked: &mut Tracked,
        steps: &[Step],
        conversation_key: &str,
    ) -> Result<Settle, WorkerError> {
        while tracked.progress.steps_done < steps.len() {
            let index = tracked.progress.steps_done;
            match self.send_step(env, tracked, steps, index).await? {
                StepOutcome::Sent => {}
                StepOutcome::Failed(failure) => {
                    return self.fail_step(env, tracked, failure, false).await
                }
                StepOutcome::Unknown(failure) => {
                    return self.fail_step(env, tracked, failure, true).await
                }
            }
            if let Step::Handoff(_) = &steps[index] {
                let now = self.now_ms();
                self.conversations
                    .modify(conversation_key, |r| {
                        r.owner = Some(shared::event::Owner::agent());
                        r.owner_updated_at_ms = now;
                    })
                    .await?;
            }
            let now = self.now_ms();
            let completed = &mut tracked.progress.completed_at_ms;
            completed.resize(index, now);
            completed.push(now);
            tracked.progress.steps_done = index + 1;
            tracked.progress.in_flight = None;
            if tracked.progress.steps_done < steps.len() {
                self.progress.save(&env.event_id, tracked).await?;
            }
        }
        Ok(Settle::Ack)
    }

    /// Marks the event done (a redelivery or a replay is then a no-op).
    pub async fn finish(&self, env: &Delivered, tracked: &mut Tracked) -> Result<(), WorkerError> {
        tracked.progress.done = true;
        tracked.progress.in_flight = None;
        tracked.progress.poll = None;
        self.progress.save(&env.event_id, tracked).await?;
        if let Some(received) = env.headers.received_at_ms {
            let seconds = (self.now_ms() - received).max(0) as f64 / 1000.0;
            metrics::histogram!(telemetry::END_TO_END_SECONDS).record(seconds);
        }
        Ok(())
    }

    async fn send_step(
        &self,
        env: &Delivered,
        tracked: &mut Tracked,
        steps: &[Step],
        index: usize,
    ) -> Result<StepOutcome, WorkerError> {
        let d = &self.delivery;
        let step = &steps[index];
        let unknown = |why: String, attempts: u64| StepFailure {
            step: step.name(),
            status: "unknown_outcome".into(),
            error: why,
            body_excerpt: String::new(),
            attempts,
        };
        // An earlier attempt never learned its outcome (a crash, another processor, a dead
        // letter replayed): ask the request log before sending anything.
        if tracked.progress.in_flight == Some(index) {
            match d.resolve(steps, &tracked.progress, index, true).await {
                Resolution::Sent => return Ok(StepOutcome::Sent),
                Resolution::NotSent => {}
                Resolution::Unknown(why) => {
                    return Ok(StepOutcome::Unknown(unknown(why.to_string(), 0)))
                }
            }
        }
        let mut delays = d.retry.delays();
        let mut attempts = 0;
        let mut reloaded = false;
        loop {
            let Some(token) = d.token.current() else {
                return Ok(StepOutcome::Failed(StepFailure {
                    step: step.name(),
                    status: "-".into(),
                    error: "no Bot API token in KV (the scheduler seeds it from its KHOROS_TOKEN)"
                        .into(),
                    body_excerpt: String::new(),
                    attempts,
                }));
            };
            tracked.progress.in_flight = Some(index);
            tracked.progress.attempt_at_ms = self.now_ms();
            self.progress.save(&env.event_id, tracked).await?;
            attempts += 1;
            let error = match d.call(step, &token).await {
                Ok(()) => return Ok(StepOutcome::Sent),
                Err(e) => e,
            };
            match classify(step, &error) {
                Class::Permanent => {
                    return Ok(StepOutcome::Failed(StepFailure::from_upstream(
                        step, &error, attempts,
                    )))
                }
                Class::Unauthorized if !reloaded => {
                    reloaded = true;
                    let changed = d.token.reload().await.unwrap_or(false);
                    tracing::warn!(
                        step = step.name(),
                        token_changed = changed,
                        "bot api answered 401; token reloaded"
                    );
                    continue;
                }
                Class::Unauthorized => {
                    return Ok(StepOutcome::Failed(StepFailure::from_upstream(
                        step, &error, attempts,
                    )))
                }
                Class::Ambiguous => match d.resolve(steps, &tracked.progress, index, false).await {
                    Resolution::Sent => return Ok(StepOutcome::Sent),
                    Resolution::NotSent => {}
                    Resolution::Unknown(why) => {
                        return Ok(StepOutcome::Unknown(unknown(
                            format!("{error}; then {why}"),
                            attempts,
                        )))
                    }
                },
                Class::NotSent | Class::Idempotent => {}
            }
            // `Retry-After` counts against the same total budget as the backoff.
            let retry_after = shared::retry::RetryClass::retry_after(&error);
            let Some(wait) = delays.next_honouring(retry_after) else {
                return Ok(StepOutcome::Failed(StepFailure::from_upstream(
                    step, &error, attempts,
                )));
            };
            count_retry("khoros", step.name());
            tracing::warn!(step = step.name(), error = %error, retry_in = ?wait, "bot api call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Dead-letters the event at this step. A step whose outcome is unknown stays marked in
    /// flight, so a replay asks the request log again instead of sending.
    async fn fail_step(
        &self,
        env: &Delivered,
        tracked: &mut Tracked,
        failure: StepFailure,
        unknown: bool,
    ) -> Result<Settle, WorkerError> {
        self.dead_letter(
            env,
            failure.step,
            &failure.status,
            &failure.error,
            &failure.body_excerpt,
            failure.attempts + env.delivered.max(1) as u64 - 1,
        )
        .await?;
        if !unknown {
            tracked.progress.in_flight = None;
        }
        self.progress.save(&env.event_id, tracked).await?;
        Ok(Settle::Term)
    }
}
