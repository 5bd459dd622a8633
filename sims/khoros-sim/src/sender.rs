//! The event sender (`docs/vendors/khoros-webhooks.md`, "Authentication" and
//! "What Khoros does with our answer"): signs and delivers queued events to the webhook,
//! retries with the same `x-amzn-RequestId`, hands undeliverable messages to an agent,
//! suspends after persistent failures and probes every 2 minutes of sim time to resume.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use shared::auth::hmac::{HEADER_API_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use shared::auth::{Clock, SignatureHeaders, SystemClock};
use tokio::sync::mpsc;

use super::config::{Credentials, SenderConfig, WebhookTarget};
use super::events;
use super::request_log::{Origin, RequestRecord, RequestState};
use super::state::{DeliveryOutcome, Job, JobKind, Shared};

/// How stale a `stale_timestamp` tamper makes the signature (well past the 60 s skew).
const STALE_BY_MS: i64 = 5 * 60 * 1000;
/// How often the probe task looks at the sim clock.
const PROBE_TICK: Duration = Duration::from_millis(20);

/// Why one attempt failed.
#[derive(Clone, Debug)]
struct AttemptFailure {
    status: Option<u16>,
    message: String,
}

/// Starts one worker per lane and the suspension prober; all stop on `shared.cancel`.
pub fn spawn(shared: &Arc<Shared>, lanes: Vec<mpsc::UnboundedReceiver<Job>>) {
    for rx in lanes {
        tokio::spawn(run_lane(shared.clone(), rx));
    }
    tokio::spawn(run_prober(shared.clone()));
}

async fn run_lane(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            job = rx.recv() => match job {
                Some(job) => tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = deliver(&shared, job) => {}
                },
                None => break,
            },
        }
    }
}

async fn run_prober(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = shared.now_ms();
        let due = shared.with_state(|state| state.health.take_probe(now));
        if !due {
            continue;
        }
        let config = &shared.config;
        let body = events::probe(
            &config.company_key,
            &config.network_key,
            &config.external_id,
            &config.app_id,
            now,
        );
        let job = shared.with_state(|state| {
            // Recorded like any event, but delivered here rather than through a lane.
            let request_id = uuid::Uuid::new_v4().to_string();
            let event = super::state::EmittedEvent {
                request_id: request_id.clone(),
                event_type: "probe".into(),
                operation: None,
                author_id: None,
                body: body.clone(),
                outcome: DeliveryOutcome::Queued,
                attempts: 0,
                statuses: Vec::new(),
                created_millis: now,
            };
            state.record_event(event, shared.config.history_limit);
            Job {
                request_id,
                body: serde_json::to_vec(&body).unwrap_or_default().into(),
                kind: JobKind::Probe,
                key: None,
            }
        });
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = deliver(&shared, job) => {}
        }
    }
}

/// Delivers one event with its retries and applies the consequences of
/// `docs/vendors/khoros-webhooks.md`, "What Khoros does with our answer".
async fn deliver(shared: &Shared, job: Job) {
    let (target, sender, suspended) = {
        let state = shared.lock();
        (
            state.settings.webhook.clone(),
            state.settings.sender.clone(),
            state.health.is_suspended(),
        )
    };
    let Some(target) = target else {
        finish(shared, &job, DeliveryOutcome::NoWebhook);
        return;
    };
    if suspended && job.kind != JobKind::Probe {
        finish(shared, &job, DeliveryOutcome::Suspended);
        if let (JobKind::Message, Some(key)) = (&job.kind, &job.key) {
            shared.automatic_handoff(key, "deliveries to the bot are suspended");
        }
        return;
    }

    start_record(shared, &job, &target);
    let mut attempts = 0_u32;
    let delivered = loop {
        attempts += 1;
        let result = attempt(shared, &target, &sender, &job).await;
        let now = shared.now_ms();
        let ok = result.is_ok();
        let stop = shared.with_state(|state| {
            let suspended_now = if job.kind == JobKind::Probe {
                state.health.probe_result(now, ok);
                false
            } else {
                state.health.record(now, ok) || state.health.is_suspended()
            };
            if let Some(event) = state.event_mut(&job.request_id) {
                event.attempts = attempts;
                event
                    .statuses
                    .push(result.as_ref().map_or_else(|f| f.status, |s| Some(*s)));
            }
            if let Some(record) = state.log.get_mut(&job.request_id) {
                update_record(record, &result, attempts, now);
            }
            suspended_now
        });
        if ok {
            break true;
        }
        if stop || job.kind == JobKind::Probe || attempts > sender.retries {
            break false;
        }
        tokio::time::sleep(sender.retry_delay).await;
    };

    finish(
        shared,
        &job,
        if delivered {
            DeliveryOutcome::Delivered
        } else {
            DeliveryOutcome::Failed
        },
    );
    if !delivered {
        if let (JobKind::Message, Some(key)) = (&job.kind, &job.key) {
            shared.automatic_handoff(key, "the message could not be delivered to the bot");
        }
    }
}

fn finish(shared: &Shared, job: &Job, outcome: DeliveryOutcome) {
    shared.with_state(|state| {
        if let Some(event) = state.event_mut(&job.request_id) {
            event.outcome = outcome;
        }
    });
}

/// A `KHOROS` record in `PENDING`, before the first attempt.
fn start_record(shared: &Shared, job: &Job, target: &WebhookTarget) {
    let now = shared.now_ms();
    let config = &shared.config;
    let key = job.key.as_ref();
    let record = RequestRecord {
        id: job.request_id.clone(),
        company_key: key.map_or(config.company_key.clone(), |k| k.company_key.clone()),
        external_id: key.map_or(config.external_id.clone(), |k| k.external_id.clone()),
        network_key: key.map_or(config.network_key.clone(), |k| k.network_key.clone()),
        app_id: config.app_id.clone(),
        callback_url: Some(target.url.clone()),
        origin: Origin::Khoros,
        state: RequestState::Pending,
        details: Map::new(),
        payload: String::from_utf8_lossy(&job.body).into_owned(),
        created_epoch_millis: now,
        completed_epoch_millis: None,
        last_updated_epoch_millis: now,
    };
    shared.with_state(|state| state.log.insert(record));
}

fn update_record(
    record: &mut RequestRecord,
    result: &Result<u16, AttemptFailure>,
    attempts: u32,
    now: i64,
) {
    let (state, code, message) = match result {
        Ok(status) => (RequestState::Success, Some(*status), "OK".to_string()),
        Err(f) => (RequestState::Error, f.status, f.message.clone()),
    };
    record.state = state;
    record.details = match json!({
        "code": code.map_or_else(|| "NONE".to_string(), |c| c.to_string()),
        "message": message,
        "attempts": attempts,
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    record.completed_epoch_millis = Some(now);
    record.last_updated_epoch_millis = now;
}

/// One signed POST; any 2xx is success, anything else (or no answer in time) a failure.
async fn attempt(
    shared: &Shared,
    target: &WebhookTarget,
    sender: &SenderConfig,
    job: &Job,
) -> Result<u16, AttemptFailure> {
    let headers =
        signed_headers(shared, target, sender, job).map_err(|message| AttemptFailure {
            status: None,
            message,
        })?;
    let response = shared
        .http
        .post(&target.url)
        .headers(headers)
        .body(job.body.clone())
        .timeout(sender.timeout)
        .send()
        .await
        .map_err(|e| AttemptFailure {
            status: None,
            message: if e.is_timeout() {
                format!("timed out after {:?}", sender.timeout)
            } else {
                format!("connection failed: {e}")
            },
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(AttemptFailure {
            status: Some(status.as_u16()),
            message: status.canonical_reason().unwrap_or("Error").to_string(),
        })
    }
}

/// Auth headers signed at this attempt's time, with the configured tampering applied.
fn signed_headers(
    shared: &Shared,
    target: &WebhookTarget,
    sender: &SenderConfig,
    job: &Job,
) -> Result<HeaderMap, String> {
    let tamper = &sender.tamper;
    let mut headers = HeaderMap::new();
    for (name, value) in &tamper.smm_headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("bad x-smm header name {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("bad header value: {e}"))?;
        headers.append(name, value);
    }
    let now = if sender.sign_with_sim_clock {
        shared.now_ms()
    } else {
        SystemClock.now_ms()
    };
    let ts = if tamper.stale_timestamp {
        now - STALE_BY_MS
    } else {
        now
    };
    let value = |v: &str| HeaderValue::from_str(v).map_err(|e| format!("bad header value: {e}"));
    match &target.credentials {
        Credentials::Hmac { api_key, secret } => {
            let signed = SignatureHeaders::sign(
                api_key,
                secret,
                ts,
                "POST",
                &target.url,
                &job.body,
                &headers,
            );
            let api_key = if tamper.unknown_api_key {
                format!("unknown-{api_key}")
            } else {
                signed.api_key
            };
            let signature = if tamper.wrong_signature {
                corrupt(&signed.signature)
            } else {
                signed.signature
            };
            headers.insert(HEADER_API_KEY, value(&api_key)?);
            headers.insert(HEADER_TIMESTAMP, value(&signed.timestamp)?);
            headers.insert(HEADER_SIGNATURE, value(&signature)?);
        }
        Credentials::Basic { user, password } => {
            let password = if tamper.wrong_signature {
                format!("wrong-{}", password.expose())
            } else {
                password.expose().to_string()
            };
            headers.insert(
                http::header::AUTHORIZATION,
                value(&shared::auth::basic::header_value(user, &password))?,
            );
        }
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-amzn-requestid", value(&job.request_id)?);
    Ok(headers)
}

/// The same signature with its first character changed (still valid base64).
fn corrupt(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    if let Some(first) = chars.first_mut() {
        *first = if *first == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}
