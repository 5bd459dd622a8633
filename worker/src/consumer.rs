//! The pull loop of one (event type, partition) consumer.
//!
//! The durable consumer allows one unacknowledged message (`max_ack_pending = 1`), so across
//! every replica a partition's events are handled one at a time, in stored order. Transient
//! failures are retried in place (never nak'ed with a delay, which would let the next event of
//! the conversation overtake); long work sends in-progress acks so it is not redelivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use shared::routing::{headers, EVENTS_PREFIX, KORE_REPLIES_PREFIX};
use shared::topology::{EVENTS_STREAM, KORE_REPLIES_STREAM};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::EventKind;
use crate::error::WorkerError;
use crate::handler::{Envelope, Handlers, Settle};
use crate::telemetry;

/// `worker-<type>-<partition>`: the durable name every replica shares.
pub fn consumer_name(kind: EventKind, partition: u32) -> String {
    format!("worker-{}-{partition}", kind.as_str())
}

fn stream_and_subject(kind: EventKind, partition: u32) -> (&'static str, String) {
    match kind {
        EventKind::KoreReply => (
            KORE_REPLIES_STREAM,
            format!("{KORE_REPLIES_PREFIX}.{partition}"),
        ),
        other => (
            EVENTS_STREAM,
            format!("{EVENTS_PREFIX}.{}.{partition}", other.as_str()),
        ),
    }
}

/// What the loop needs besides the handlers.
#[derive(Clone)]
pub struct LoopContext {
    pub handlers: Arc<Handlers>,
    pub js: jetstream::Context,
    pub permits: Arc<Semaphore>,
    /// Stop pulling new messages.
    pub shutdown: CancellationToken,
    /// The shutdown deadline passed: give back (nak) what is still being handled.
    pub hard_stop: CancellationToken,
}

/// Runs until `shutdown`; reconnects the consumer when its message stream ends.
pub async fn run(ctx: LoopContext, kind: EventKind, partition: u32) {
    let name = consumer_name(kind, partition);
    let (stream_name, subject) = stream_and_subject(kind, partition);
    let config = &ctx.handlers.config;
    let consumer_config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: subject,
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: 1,
        ..Default::default()
    };
    let mut backoff = Duration::from_millis(100);
    while !ctx.shutdown.is_cancelled() {
        let attempt = async {
            let stream = ctx
                .js
                .get_stream(stream_name)
                .await
                .map_err(WorkerError::infra)?;
            let consumer: jetstream::consumer::Consumer<pull::Config> = stream
                .get_or_create_consumer(&name, consumer_config.clone())
                .await
                .map_err(WorkerError::infra)?;
            consumer
                .stream()
                .max_messages_per_batch(1)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(WorkerError::infra)
        };
        let mut messages = match attempt.await {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                messages
            }
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "consumer not available; retrying");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    give_back_buffered(&mut messages).await;
                    return;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => process(&ctx, kind, message).await,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %name, error = %e, "pull failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}

/// A message pulled just as shutdown began goes straight back, first in line.
async fn give_back_buffered(messages: &mut pull::Stream) {
    if let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(50), messages.next()).await
    {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}

fn envelope(kind: EventKind, message: &jetstream::Message) -> Envelope {
    let (sequence, delivered) = message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    Envelope {
        kind,
        subject: message.subject.to_string(),
        stream_sequence: sequence,
        delivered,
        event_id: header(headers::MSG_ID)
            .unwrap_or_else(|| format!("{}-seq-{sequence}", kind.as_str())),
        request_id: header(headers::REQUEST_ID),
        signature_digest: header(headers::SIGNATURE_DIGEST),
        received_at_ms: header(headers::RECEIVED_AT).and_then(|v| v.parse().ok()),
        payload: message.payload.clone(),
    }
}

async fn process(ctx: &LoopContext, kind: EventKind, message: jetstream::Message) {
    let Ok(_permit) = ctx.permits.acquire().await else {
        return;
    };
    let env = envelope(kind, &message);
    let span = tracing::info_span!(
        "event",
        request_id = %env.request_id.as_deref().unwrap_or(&env.event_id),
        subject = %env.subject,
        seq = env.stream_sequence,
        delivered = env.delivered,
    );
    async {
        let started = Instant::now();
        metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
        if env.delivered > 1 {
            metrics::counter!(telemetry::REDELIVERIES, "type" => kind.as_str()).increment(1);
        }
        let beat = (ctx.handlers.config.ack_wait / 3).max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let handlers = ctx.handlers.clone();
        let mut backoff = Duration::from_millis(250);
        let outcome = loop {
            let work = handlers.handle(&env);
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    result = &mut work => break Some(result),
                    _ = heartbeat.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                    _ = ctx.hard_stop.cancelled() => break None,
                }
            };
            match result {
                None => {
                    tracing::warn!("shutdown deadline reached; event given back");
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    break "given_back";
                }
                Some(Ok((Settle::Ack, outcome))) => {
                    ack(&message, AckKind::Ack).await;
                    break outcome;
                }
                Some(Ok((Settle::Term, outcome))) => {
                    ack(&message, AckKind::Term).await;
                    break outcome;
                }
                // NATS itself is struggling: keep the event (and its partition) and try again.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "event handling interrupted; retrying in place");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = ctx.hard_stop.cancelled() => {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            break "given_back";
                        }
                    }
                    let _ = message.ack_with(AckKind::Progress).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
        metrics::counter!(telemetry::EVENTS, "type" => kind.as_str(), "outcome" => outcome).increment(1);
        metrics::histogram!(telemetry::HANDLE_SECONDS, "type" => kind.as_str()).record(started.elapsed().as_secs_f64());
        tracing::info!(outcome, elapsed_ms = started.elapsed().as_millis() as u64, "event handled");
    }
    .instrument(span)
    .await;
}

/// Acknowledges and waits for the server to confirm, so the next event of the partition is
/// only released once this one is settled.
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.double_ack_with(kind).await {
        tracing::warn!(error = %e, "ack not confirmed; the event may be redelivered (the processed-id record makes that a no-op)");
    }
}
