//! Pipeline metrics sampled from JetStream: stream depth, consumer lag and dead letters.
//!
//! Every replica samples (the values are the same whichever one Prometheus scrapes, and no
//! label names the replica). Consumers are named `worker-<type>-<partition>`; the `event_type`
//! label is parsed from that name so a dashboard can sum lag per event type.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use shared::contract::kind::{consumer_base, CONSUMER_PREFIX};
use shared::topology::{DEAD_LETTER_STREAM, EVENTS_STREAM, KORE_REPLIES_STREAM};
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// The streams of the bridge, in the order they are sampled.
pub const STREAMS: [&str; 3] = [EVENTS_STREAM, KORE_REPLIES_STREAM, DEAD_LETTER_STREAM];

/// One stream's state.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSample {
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: Vec<ConsumerSample>,
}

/// One consumer's lag.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSample {
    pub name: String,
    pub event_type: String,
    /// Messages not yet delivered (`num_pending`).
    pub pending: u64,
    /// Delivered, not yet acknowledged (`num_ack_pending`).
    pub ack_pending: u64,
    /// Delivered more than once (`num_redelivered`).
    pub redelivered: u64,
}

/// Reads the streams' state and turns it into gauges.
pub struct Sampler {
    js: jetstream::Context,
    /// Consumers seen in earlier samples, so one that disappears drops to 0 instead of
    /// keeping its last value forever.
    seen: HashSet<(String, String, String)>,
}

/// The event type in a worker consumer's name: `worker-message-3` (or an instance of it,
/// `worker-message-3--a1b2`) -> `message`, `worker-agent-response-12` -> `agent-response`;
/// `other` for consumers not named so.
pub fn event_type_of(consumer: &str) -> &str {
    let Some(rest) = consumer_base(consumer)
        .strip_prefix(CONSUMER_PREFIX)
        .filter(|r| !r.is_empty())
    else {
        return "other";
    };
    match rest.rsplit_once('-') {
        Some((kind, partition))
            if !kind.is_empty()
                && !partition.is_empty()
                && partition.bytes().all(|b| b.is_ascii_digit()) =>
        {
            kind
        }
        _ => rest,
    }
}

/// A stream whose state could not be read (sampling goes on at the next interval).
#[derive(Debug, thiserror::Error)]
#[error("stream {stream}: {reason}")]
pub struct SampleError {
    pub stream: &'static str,
    pub reason: String,
}

impl Sampler {
    pub fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            seen: HashSet::new(),
        }
    }

    /// Reads every bridge stream that exists (a missing one is skipped).
    pub async fn sample(&self) -> Result<Vec<StreamSample>, SampleError> {
        let failed = |stream: &'static str| {
            move |e: &dyn std::fmt::Display| SampleError {
                stream,
                reason: e.to_string(),
            }
        };
        let mut samples = Vec::with_capacity(STREAMS.len());
        for name in STREAMS {
            let mut stream = match self.js.get_stream(name).await {
                Ok(stream) => stream,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(failed(name)(&e)),
            };
            let state = stream
                .info()
                .await
                .map_err(|e| failed(name)(&e))?
                .state
                .clone();
            let consumers: Vec<_> = stream
                .consumers()
                .try_collect()
                .await
                .map_err(|e| failed(name)(&e))?;
            samples.push(StreamSample {
                stream: name.to_string(),
                messages: state.messages,
                bytes: state.bytes,
                consumers: consumers
                    .into_iter()
                    .map(|c| ConsumerSample {
                        event_type: event_type_of(&c.name).to_string(),
                        // The base name: an owner change makes a new instance, not a new series.
                        name: consumer_base(&c.name).to_string(),
                        pending: c.num_pending,
                        ack_pending: c.num_ack_pending as u64,
                        redelivered: c.num_redelivered as u64,
                    })
                    .collect(),
            });
        }
        Ok(samples)
    }

    /// Sets the gauges from `samples`.
    pub fn record(&mut self, samples: &[StreamSample]) {
        let mut seen = HashSet::new();
        for s in samples {
            let stream = s.stream.clone();
            metrics::gauge!(telemetry::STREAM_MESSAGES, "stream" => stream.clone())
                .set(s.messages as f64);
            metrics::gauge!(telemetry::STREAM_BYTES, "stream" => stream.clone())
                .set(s.bytes as f64);
            if s.stream == DEAD_LETTER_STREAM {
                metrics::gauge!(telemetry::DEAD_LETTERS).set(s.messages as f64);
            }
            for c in &s.consumers {
                consumer_gauges(&stream, &c.name, &c.event_type, c);
                seen.insert((stream.clone(), c.name.clone(), c.event_type.clone()));
            }
        }
        for (stream, name, event_type) in self.seen.difference(&seen) {
            consumer_gauges(
                stream,
                name,
                event_type,
                &ConsumerSample {
                    name: name.clone(),
                    event_type: event_type.clone(),
                    pending: 0,
                    ack_pending: 0,
                    redelivered: 0,
                },
            );
        }
        self.seen = seen;
    }

    /// Samples every `interval` until `shutdown`; `interval` zero means never.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        if interval.is_zero() {
            tracing::info!("METRICS_INTERVAL is 0: JetStream metrics are off");
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sample().await {
                Ok(samples) => self.record(&samples),
                Err(error) => {
                    metrics::counter!(telemetry::SAMPLE_ERRORS).increment(1);
                    tracing::warn!(%error, "sampling JetStream state failed");
                }
            }
        }
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

fn consumer_gauges(stream: &str, name: &str, event_type: &str, c: &ConsumerSample) {
    let labels = [
        ("stream", stream.to_string()),
        ("consumer", name.to_string()),
        ("event_type", event_type.to_string()),
    ];
    metrics::gauge!(telemetry::CONSUMER_PENDING, &labels).set(c.pending as f64);
    metrics::gauge!(telemetry::CONSUMER_ACK_PENDING, &labels).set(c.ack_pending as f64);
    metrics::gauge!(telemetry::CONSUMER_REDELIVERED, &labels).set(c.redelivered as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_parsed_from_worker_consumer_names() {
        assert_eq!(event_type_of("worker-message-3"), "message");
        assert_eq!(event_type_of("worker-kore_reply-3--0a1b"), "kore_reply");
        assert_eq!(event_type_of("worker-update-15"), "update");
        assert_eq!(event_type_of("worker-agent-response-12"), "agent-response");
        assert_eq!(event_type_of("worker-control"), "control");
        assert_eq!(event_type_of("worker-"), "other");
        assert_eq!(event_type_of("replies"), "other");
    }
}
