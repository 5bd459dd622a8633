//! Publishing an accepted event and waiting for JetStream's PubAck, within a deadline.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::error::IngressError;
use crate::telemetry;

/// Publishes to JetStream; a missing or late PubAck is [`IngressError::Unavailable`].
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
}

/// What JetStream said about a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// The same `Nats-Msg-Id` was already stored inside the duplicate window.
    pub duplicate: bool,
}

impl Publisher {
    pub fn new(js: jetstream::Context, timeout: Duration) -> Self {
        Self { js, timeout }
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
        metrics::histogram!(telemetry::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        result
    }
}
