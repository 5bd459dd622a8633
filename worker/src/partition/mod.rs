//! The runner of one owned partition: pulls its consumer with many events in flight, runs
//! different conversations concurrently and each conversation one event at a time in stream
//! order ([`lanes`]), acknowledges per event, and keeps every held event alive with
//! in-progress acks, whether it is running or waiting for its turn or for a permit.
//!
//! Work is bounded twice: the consumer's `max_ack_pending` (`PARTITION_MAX_IN_FLIGHT`) bounds
//! what one partition holds, and the replica-wide semaphore (`WORKER_CONCURRENCY`) bounds how
//! many events are handled (call Kore.ai and Khoros) at once.

pub mod lanes;
pub mod order;
pub mod stuck;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use futures::{StreamExt, TryStreamExt};
use shared::contract::kind::consumer_base;
use shared::contract::route::DEADLINE_ID_PREFIX;
use shared::contract::{subject, Envelope, RouteFields};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::lanes::Lanes;
use self::order::DeliveryOrder;
use self::stuck::{HeldId, Stuck};
use crate::error::WorkerError;
use crate::handler::{Delivered, Handlers, Settle};
use crate::ownership::assign::Slot;
use crate::ownership::Running;
use crate::telemetry;
use shared::contract::EventKind;

/// What every runner of the replica shares.
pub struct PartitionContext {
    pub handlers: Arc<Handlers>,
    pub js: jetstream::Context,
    /// The partition table, to check ownership before pulling again (`crate::ownership`).
    pub owners: async_nats::jetstream::kv::Store,
    pub member_id: String,
    pub permits: Arc<Semaphore>,
    pub stuck: Arc<Stuck>,
}

/// One event pulled and not yet settled.
struct Held {
    message: jetstream::Message,
    env: Delivered,
    lane: String,
    id: HeldId,
}

static HELD_IDS: AtomicU64 = AtomicU64::new(0);

/// Starts the runner of `slot` (see [`crate::ownership`] for when).
pub fn start(ctx: Arc<PartitionContext>, slot: Slot) -> Running {
    let stop = CancellationToken::new();
    let lost = CancellationToken::new();
    let span = tracing::info_span!(
        "partition",
        kind = slot.kind.as_str(),
        partition = slot.partition
    );
    let task = tokio::spawn(run(ctx, slot, stop.clone(), lost.clone()).instrument(span));
    Running { stop, lost, task }
}

fn consumer_config(ctx: &PartitionContext, slot: Slot, name: String) -> pull::Config {
    let config = &ctx.handlers.config;
    pull::Config {
        durable_name: Some(name),
        filter_subject: subject::partition(slot.kind, slot.partition),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: config.partition_max_in_flight,
        ..Default::default()
    }
}

/// A handle on the stream `slot` lives in (no API call).
async fn partition_stream(
    ctx: &PartitionContext,
    slot: Slot,
) -> Result<jetstream::stream::Stream<()>, WorkerError> {
    ctx.js
        .get_stream_no_info(slot.kind.stream())
        .await
        .map_err(WorkerError::infra)
}

/// Creates this runner's own instance of the partition's consumer, deleting any other first:
/// on a work-queue stream the new consumer starts at the oldest unacknowledged event, so
/// whatever the previous owner held comes first, in stream order, instead of after its ack
/// wait; and the previous owner, should it still pull by its instance's name, finds nothing.
async fn recreate_consumer(
    ctx: &PartitionContext,
    slot: Slot,
) -> Result<jetstream::consumer::Consumer<pull::Config>, WorkerError> {
    let stream = partition_stream(ctx, slot).await?;
    let instance = format!("{:08x}", rand::random::<u32>());
    let config = consumer_config(
        ctx,
        slot,
        slot.kind.consumer_instance(slot.partition, &instance),
    );
    // A work queue refuses a second consumer on the same subject: creation succeeds at once
    // only when no other instance is left.
    if let Ok(consumer) = stream.create_consumer(config.clone()).await {
        return Ok(consumer);
    }
    let base = slot.kind.consumer_name(slot.partition);
    let mut names = stream.consumer_names();
    let mut others = Vec::new();
    while let Some(name) = names.try_next().await.map_err(WorkerError::infra)? {
        if consumer_base(&name) == base {
            others.push(name);
        }
    }
    for name in others {
        let _ = stream.delete_consumer(&name).await;
    }
    stream
        .create_consumer(config)
        .await
        .map_err(WorkerError::infra)
}

/// A fresh consumer and its message stream, only while the owner record still names this
/// replica (a new owner's consumer must not be deleted by its predecessor).
///
/// Fresh, because a pull that broke (a consumer or stream leader lost, a reconnect) may have
/// lost deliveries in transit: JetStream counts them as delivered and sends them again only
/// after the ack wait, while later events would keep coming at once and overtake them. On a
/// work queue, a recreated consumer starts at the oldest event still stored, so order holds.
async fn reopen(ctx: &PartitionContext, slot: Slot) -> Result<pull::Stream, WorkerError> {
    let owner = ctx
        .owners
        .get(slot.owner_key())
        .await
        .map_err(WorkerError::infra)?;
    if owner.as_deref() != Some(ctx.member_id.as_bytes()) {
        return Err(WorkerError::NotOwner);
    }
    let consumer = recreate_consumer(ctx, slot).await?;
    pull_from(ctx, &consumer).await
}

/// The continuous pull of `consumer`.
async fn pull_from(
    ctx: &PartitionContext,
    consumer: &jetstream::consumer::Consumer<pull::Config>,
) -> Result<pull::Stream, WorkerError> {
    let batch = (ctx.handlers.config.partition_max_in_flight.max(1) as usize).min(256);
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(10))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(WorkerError::infra)
}

async fn run(
    ctx: Arc<PartitionContext>,
    slot: Slot,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // Just claimed: the fresh consumer is pulled at once (later re-opens check ownership).
    let mut messages: Option<pull::Stream> = loop {
        let opened = match recreate_consumer(&ctx, slot).await {
            Ok(consumer) => pull_from(&ctx, &consumer).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(stream) => break Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "consumer not available; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = lost.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let cancel = Cancel {
        stop: stop.clone(),
        lost: lost.clone(),
    };
    let mut lanes: Lanes<Held> = Lanes::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut stopping = false;
    let beat = (ctx.handlers.config.ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut reopen_at = tokio::time::Instant::now();
    let mut order = DeliveryOrder::fresh();
    backoff = Duration::from_millis(100);
    loop {
        // Re-open only once every event in hand is settled: the fresh consumer delivers
        // again whatever is still unacknowledged, in stream order.
        if messages.is_none()
            && !stopping
            && lanes.running() == 0
            && tokio::time::Instant::now() >= reopen_at
        {
            match reopen(&ctx, slot).await {
                Ok(stream) => {
                    messages = Some(stream);
                    order = DeliveryOrder::fresh();
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull; retrying");
                    reopen_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tokio::select! {
            _ = lost.cancelled() => {
                for held in lanes.take_waiting() {
                    give_back(&ctx, held).await;
                }
                // Running events see `lost` and give themselves back.
                while lanes.running() > 0 {
                    match done_rx.recv().await {
                        Some(key) => { lanes.finish(&key); }
                        None => break,
                    }
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                messages = None;
                for held in lanes.take_waiting() {
                    give_back(&ctx, held).await;
                }
                if lanes.running() == 0 {
                    return;
                }
            }
            Some(key) = done_rx.recv() => {
                if let Some(next) = lanes.finish(&key) {
                    if stopping {
                        give_back(&ctx, next).await;
                        for held in lanes.take_waiting() {
                            give_back(&ctx, held).await;
                        }
                    } else {
                        spawn_handling(&ctx, slot.kind, next, cancel.clone(), done_tx.clone());
                    }
                }
                if stopping && lanes.running() == 0 {
                    return;
                }
            }
            next = next_message(&mut messages), if messages.is_some() => match next {
                Some(Ok(message)) => {
                    let delivery = message.info().ok().map(|i| i.consumer_sequence);
                    if let Err(gap) = order.next(delivery) {
                        tracing::warn!(
                            expected = gap.expected,
                            got = gap.got,
                            "deliveries lost in transit; reopening so the oldest event comes first"
                        );
                        messages = None;
                        for held in lanes.take_waiting() {
                            give_back(&ctx, held).await;
                        }
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        continue;
                    }
                    if let Some(held) = admit(&ctx, slot.kind, message).await {
                        let lane = held.lane.clone();
                        if let Some(ready) = lanes.admit(&lane, held) {
                            spawn_handling(&ctx, slot.kind, ready, cancel.clone(), done_tx.clone());
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull failed; reopening once the events in hand are settled");
                    messages = None;
                    for held in lanes.take_waiting() {
                        give_back(&ctx, held).await;
                    }
                    reopen_at = tokio::time::Instant::now() + backoff;
                }
                None => {
                    messages = None;
                    for held in lanes.take_waiting() {
                        give_back(&ctx, held).await;
                    }
                }
            },
            _ = ticker.tick() => {
                // Waiting is not idleness: keep every held event from being redelivered.
                for held in lanes.waiting() {
                    let _ = held.message.ack_with(AckKind::Progress).await;
                }
            }
            _ = tokio::time::sleep_until(reopen_at), if messages.is_none() && !stopping && lanes.running() == 0 => {}
        }
    }
}

async fn next_message(
    messages: &mut Option<pull::Stream>,
) -> Option<Result<jetstream::Message, async_nats::error::Error<pull::MessagesErrorKind>>> {
    messages.as_mut()?.next().await
}

/// Builds the held event, or settles at once what does not enter a lane (a turn deadline
/// that is not due yet goes back with the remaining delay).
async fn admit(
    ctx: &PartitionContext,
    kind: EventKind,
    message: jetstream::Message,
) -> Option<Held> {
    let env = delivered(kind, &message);
    if let Some(due) = env.headers.turn_deadline_ms {
        let wait = due - ctx.handlers.now_ms();
        if wait > 0 {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(wait as u64))))
                .await;
            return None;
        }
    }
    let lane = lane_key(kind, &env);
    let id = (env.stored_at_ms, HELD_IDS.fetch_add(1, Ordering::Relaxed));
    ctx.stuck.hold(id);
    Some(Held {
        message,
        env,
        lane,
        id,
    })
}

/// The conversation an event belongs to: the conversation key of Khoros events, the Kore
/// user of Kore.ai deliveries. An event that does not parse gets a lane of its own (it will
/// be dead-lettered) so it blocks nobody.
fn lane_key(kind: EventKind, env: &Delivered) -> String {
    let own_lane = || format!("unparsed-{}", env.stream_sequence);
    match kind {
        EventKind::KoreReply => {
            #[derive(serde::Deserialize)]
            struct Recipient {
                to: String,
            }
            serde_json::from_slice::<Recipient>(&env.payload)
                .map(|r| format!("kore-{}", r.to))
                .unwrap_or_else(|_| own_lane())
        }
        _ => serde_json::from_slice::<RouteFields<'_>>(&env.payload)
            .map(|f| shared::contract::keys::conversation(&f.conversation_key()))
            .unwrap_or_else(|_| own_lane()),
    }
}

async fn give_back(ctx: &PartitionContext, held: Held) {
    let _ = held.message.ack_with(AckKind::Nak(None)).await;
    ctx.stuck.release(held.id);
}

fn delivered(kind: EventKind, message: &jetstream::Message) -> Delivered {
    let info = message.info().ok();
    let sequence = info.as_ref().map(|i| i.stream_sequence).unwrap_or(0);
    let delivered = info.as_ref().map(|i| i.delivered).unwrap_or(1);
    let stored_at_ms = info
        .as_ref()
        .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_default();
    let headers = Envelope::from_headers(message.headers.as_ref());
    // A replayed dead letter carries its original id: progress resumes where it stopped.
    // Kore.ai deliveries are deduplicated on a hash of their body for the stream's window only;
    // the same text legitimately sent again later is a new delivery, so the sequence is part
    // of their id.
    let event_id = match (&headers.event_id, &headers.message_id) {
        (Some(original), _) => original.clone(),
        (None, Some(id)) if kind == EventKind::KoreReply && !id.starts_with(DEADLINE_ID_PREFIX) => {
            format!("{id}@{sequence}")
        }
        (None, Some(id)) => id.clone(),
        (None, None) => format!("{}-seq-{sequence}", kind.as_str()),
    };
    Delivered {
        kind,
        subject: message.subject.to_string(),
        stream_sequence: sequence,
        delivered,
        event_id,
        headers,
        stored_at_ms,
        payload: message.payload.clone(),
    }
}

fn spawn_handling(
    ctx: &Arc<PartitionContext>,
    kind: EventKind,
    held: Held,
    cancel: Cancel,
    done: mpsc::UnboundedSender<String>,
) {
    let ctx = ctx.clone();
    let span = tracing::info_span!(
        "event",
        request_id = %held.env.headers.request_id.as_deref().unwrap_or(&held.env.event_id),
        subject = %held.env.subject,
        seq = held.env.stream_sequence,
        delivered = held.env.delivered,
    );
    tokio::spawn(
        async move {
            let lane = held.lane.clone();
            let id = held.id;
            handle(&ctx, kind, held, &cancel).await;
            ctx.stuck.release(id);
            let _ = done.send(lane);
        }
        .instrument(span),
    );
}

/// How a running event learns that its partition is going away.
#[derive(Clone)]
struct Cancel {
    /// Released: an event not started yet goes back at once (the next owner takes it).
    stop: CancellationToken,
    /// Lost or past the shutdown deadline: everything goes back, even mid-handling.
    lost: CancellationToken,
}

/// Waits for a permit, handles the event (retrying NATS trouble in place for a bounded time,
/// then dead-lettering), and settles it; in-progress acks throughout.
async fn handle(ctx: &PartitionContext, kind: EventKind, held: Held, cancel: &Cancel) {
    let Held { message, env, .. } = held;
    let lost = &cancel.lost;
    let config = &ctx.handlers.config;
    let beat = (config.ack_wait / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let _permit = loop {
        tokio::select! {
            permit = ctx.permits.clone().acquire_owned() => match permit {
                Ok(permit) => break permit,
                Err(_) => return,
            },
            _ = heartbeat.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
            // Not started: give it back rather than make the partition's release wait for a
            // permit behind every other partition's events.
            _ = cancel.stop.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
            _ = lost.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        }
    };
    let started = Instant::now();
    metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
    if env.delivered > 1 {
        metrics::counter!(telemetry::REDELIVERIES, "type" => kind.as_str()).increment(1);
    }
    let give_up_at = started + config.infra_retry_for;
    let mut backoff = Duration::from_millis(100);
    let outcome = loop {
        let work = ctx.handlers.handle(&env);
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                result = &mut work => break Some(result),
                _ = heartbeat.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                _ = lost.cancelled() => break None,
            }
        };
        match result {
            None => {
                tracing::warn!("partition lost or shutdown deadline reached; event given back");
                let _ = message.ack_with(AckKind::Nak(None)).await;
                break "given_back";
            }
            Some(Ok((Settle::Ack, outcome))) => {
                settle(&message, AckKind::Ack).await;
                break outcome;
            }
            Some(Ok((Settle::Term, outcome))) => {
                settle(&message, AckKind::Term).await;
                break outcome;
            }
            Some(Err(e)) if Instant::now() >= give_up_at => {
                // Bounded: one event that cannot succeed must not hold its conversation forever.
                match ctx
                    .handlers
                    .dead_letter(
                        &env,
                        "infrastructure",
                        "-",
                        &e.to_string(),
                        "",
                        env.delivered as u64,
                    )
                    .await
                {
                    Ok(()) => {
                        settle(&message, AckKind::Term).await;
                        break "dead_lettered";
                    }
                    Err(dl) => {
                        tracing::error!(error = %e, dead_letter_error = %dl, "cannot even dead-letter; retrying in place")
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "event handling interrupted; retrying in place");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = lost.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                break "given_back";
            }
        }
        let _ = message.ack_with(AckKind::Progress).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
    metrics::counter!(telemetry::EVENTS, "type" => kind.as_str(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(telemetry::HANDLE_SECONDS, "type" => kind.as_str())
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "event handled"
    );
}

/// Acknowledges and waits for the server to confirm.
async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.double_ack_with(kind).await {
        tracing::warn!(error = %e, "ack not confirmed; the event may be redelivered (its progress record makes that a no-op)");
    }
}
