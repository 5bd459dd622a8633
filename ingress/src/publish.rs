//! Publishing an accepted event and waiting for JetStream's PubAck, within a deadline.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use shared::topology::Readiness;

use crate::error::IngressError;
use crate::telemetry::HotMetrics;

/// Publishes to JetStream; a missing or late PubAck is [`IngressError::Unavailable`].
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
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
    pub fn new(
        js: jetstream::Context,
        timeout: Duration,
        readiness: Readiness,
        metrics: HotMetrics,
    ) -> Self {
        Self {
            js,
            timeout,
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
        let attempt = async {
            let ack = self.js.send_publish(subject, publish).await?;
            ack.await.map_err(async_nats::Error::from)
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(ack)) => Ok(Stored {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(e)) => Err(IngressError::Unavailable(e.to_string())),
            Err(_) => Err(IngressError::Unavailable(format!(
                "no PubAck within {:?}",
                self.timeout
            ))),
        };
        if result.is_err() {
            self.readiness.nudge();
        }
        self.metrics
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        result
    }
}
