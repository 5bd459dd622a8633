//! The broker ceiling: the same events published straight to JetStream with the ingress'
//! subjects and headers, each awaited until its PubAck. No HTTP, no authentication.

use std::sync::Arc;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use shared::auth::{Clock, SystemClock};
use shared::contract::{headers, subject};

use super::driver::{Failure, Job, Target};
use super::events::EventSource;

/// A signature digest's size (hex SHA-256); the raw publisher signs nothing.
const STAND_IN_DIGEST: &str = "5f3c9a0e1b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf2468";

/// Publishes generated events over one NATS connection (as the ingress does).
pub struct PublishTarget {
    js: jetstream::Context,
    events: Arc<EventSource>,
}

impl PublishTarget {
    pub fn new(js: jetstream::Context, events: Arc<EventSource>) -> Self {
        Self { js, events }
    }
}

impl Target for PublishTarget {
    type Conn = ();

    async fn connect(&self) -> Result<(), Failure> {
        Ok(())
    }

    async fn send(&self, _conn: &mut (), job: Job) -> Result<(), Failure> {
        let now_ms = SystemClock.now_ms();
        let event = self.events.event(job.seq, now_ms);
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, event.request_id.as_str());
        h.insert(headers::REQUEST_ID, event.request_id.as_str());
        h.insert(headers::RECEIVED_AT, now_ms.to_string().as_str());
        // The ingress stores the digest of each signature: same headers, same bytes.
        h.insert(headers::SIGNATURE_DIGEST, STAND_IN_DIGEST);
        let subject = subject::event(event.kind.as_str(), event.partition);
        let message = PublishMessage::build()
            .headers(h)
            .payload(Bytes::from(event.body));
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|_| Failure::Transport("publish"))?;
        ack.await.map_err(|_| Failure::Transport("puback"))?;
        Ok(())
    }
}
