//! Publishing an accepted event and waiting for JetStream's PubAck, within a deadline.
//!
//! Each attempt waits `PUBLISH_TIMEOUT` at most. An attempt that failed because the stream
//! has no leader right now (no responders, no PubAck in time, a broken connection) is made
//! again, with the same `Nats-Msg-Id`, until `STORE_DEADLINE` from the first: a clustered
//! stream takes 4 to 9 s to elect a new leader after losing one (nats-server's Raft election
//! timeout, not configurable), and Khoros hands the conversation to an agent on any answer but
//! a 2xx, so holding the webhook through an election beats refusing it
//! (`docs/decisions.md`, "Thin ingress"). Only then is it a 503.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use shared::contract::Envelope;
use shared::retry::RetryPolicy;
use shared::topology::Readiness;

use crate::error::{IngressError, Unavailable};
use crate::telemetry::HotMetrics;

/// Waits between attempts: short at first (a reconnect to another node takes milliseconds),
/// then capped so a new leader is found within half a second of its election.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(50);
const RETRY_MAX_DELAY: Duration = Duration::from_millis(500);

/// Publishes to JetStream; a missing or late PubAck is [`IngressError::Unavailable`].
#[derive(Clone)]
pub struct Publisher {
    /// With its timeout set to `PUBLISH_TIMEOUT`.
    js: jetstream::Context,
    /// `STORE_DEADLINE`: how long one event is tried before the answer is 503.
    deadline: Duration,
    /// Told of every failure: a deleted stream shows up here first, and the keeper then
    /// recreates it at once instead of at its next check.
    readiness: Readiness,
    metrics: HotMetrics,
}

/// What JetStream said about a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// The same `Nats-Msg-Id` was already stored inside the duplicate window.
    pub duplicate: bool,
}

impl Publisher {
    /// `js` must carry the per-attempt deadline (`Context::set_timeout`); `deadline` bounds
    /// all attempts together.
    pub fn new(
        js: jetstream::Context,
        deadline: Duration,
        readiness: Readiness,
        metrics: HotMetrics,
    ) -> Self {
        Self {
            js,
            deadline,
            readiness,
            metrics,
        }
    }

    pub async fn publish(
        &self,
        subject: String,
        envelope: &Envelope,
        payload: Bytes,
    ) -> Result<Stored, IngressError> {
        let started = Instant::now();
        // Cheap to clone for a retry (shared bytes); the headers are built per attempt.
        let subject = Subject::from(subject);
        // The first attempt needs no timer of our own: the context's timeout
        // (`PUBLISH_TIMEOUT`) bounds both the hand-over to the connection and the PubAck.
        let mut result = self
            .attempt(subject.clone(), envelope.to_headers(), payload.clone())
            .await;
        // An attempt that timed out or lost its connection may have been stored all the same;
        // a later attempt then gets "duplicate" for what is, to Khoros, a first delivery.
        let mut maybe_stored = false;
        if result.is_err() {
            self.readiness.nudge();
            let mut delays = RetryPolicy {
                max_retries: usize::MAX,
                min_delay: RETRY_MIN_DELAY,
                max_delay: RETRY_MAX_DELAY,
                max_elapsed: self.deadline,
            }
            .delays();
            while let Err(e) = &result {
                maybe_stored |= matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                );
                let left = self.deadline.saturating_sub(started.elapsed());
                let Some(wait) = delays.next().filter(|_| retryable(e)) else {
                    break;
                };
                if wait >= left {
                    break;
                }
                tokio::time::sleep(wait).await;
                self.metrics.publish_retries.increment(1);
                let left = self.deadline.saturating_sub(started.elapsed());
                let attempt = self.attempt(subject.clone(), envelope.to_headers(), payload.clone());
                result = tokio::time::timeout(left, attempt)
                    .await
                    .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
            }
        }
        self.metrics
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        result
            .map(|ack| Stored {
                sequence: ack.sequence,
                duplicate: ack.duplicate && !maybe_stored,
            })
            .map_err(|e| Unavailable::Publish(e.into()).into())
    }

    async fn attempt(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, PublishError> {
        let publish = PublishMessage::build().headers(headers).payload(payload);
        self.js.send_publish(subject, publish).await?.await
    }
}

/// Whether another attempt could store the event: the stream has no leader (or is being
/// recreated), the PubAck did not come, the connection broke, or the cluster said it is
/// temporarily unavailable (its meta leader being elected). JetStream's other refusals (the
/// stream is full, say) stand.
fn retryable(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|api| api.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(json: &str) -> PublishError {
        let api: jetstream::Error = serde_json::from_str(json).expect("an API error");
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn a_missing_leader_is_retried_and_a_full_stream_is_not() {
        for kind in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
        ] {
            assert!(retryable(&PublishError::new(kind)), "{kind:?}");
        }
        let unavailable = api_error(
            r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#,
        );
        assert!(retryable(&unavailable));
        let full =
            api_error(r#"{"code":503,"err_code":10077,"description":"maximum messages exceeded"}"#);
        assert!(!retryable(&full));
        assert!(!retryable(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
    }
}
