//! Publishing an accepted event and waiting for JetStream's PubAck, within a deadline.

use std::time::Instant;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use shared::topology::Readiness;

use crate::error::{IngressError, Unavailable};
use crate::telemetry::HotMetrics;

/// Publishes to JetStream; a missing or late PubAck is [`IngressError::Unavailable`].
#[derive(Clone)]
pub struct Publisher {
    /// With its timeout set to `PUBLISH_TIMEOUT`.
    js: jetstream::Context,
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
    /// `js` must carry the publish deadline (`Context::set_timeout`).
    pub fn new(js: jetstream::Context, readiness: Readiness, metrics: HotMetrics) -> Self {
        Self {
            js,
            readiness,
            metrics,
        }
    }

    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Stored, IngressError> {
        let started = Instant::now();
        let publish = PublishMessage::build().headers(headers).payload(payload);
        // The context's timeout (`PUBLISH_TIMEOUT`) bounds both the hand-over to the
        // connection and the wait for the PubAck; no timer of our own on the hot path.
        let result = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map_err(async_nats::Error::from),
            Err(e) => Err(e.into()),
        }
        .map(|ack| Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
        .map_err(|e| Unavailable::Publish(e).into());
        if result.is_err() {
            self.readiness.nudge();
        }
        self.metrics
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        result
    }
}
