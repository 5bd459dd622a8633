//! What travels in the NATS headers of a stored event, written by the ingress (or by the
//! worker, for dead-letter replays and turn-deadline markers) and read by the worker.

use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::headers;

/// The headers of one stored event. Every field is optional on the way in: a header that is
/// absent or does not parse reads as `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `Nats-Msg-Id`: the dedup id.
    pub message_id: Option<String>,
    /// `Bridge-Request-Id`: Khoros' `x-amzn-RequestId`.
    pub request_id: Option<String>,
    /// `Bridge-Received-At`: when the ingress received it, epoch ms.
    pub received_at_ms: Option<i64>,
    /// `Bridge-Event-Id`: the original id of a replayed dead letter.
    pub event_id: Option<String>,
    /// `Bridge-Signature-Digest`: digest of the request's HMAC signature.
    pub signature_digest: Option<String>,
    /// `Bridge-Turn-Deadline`: set on a worker's turn-deadline marker, epoch ms.
    pub turn_deadline_ms: Option<i64>,
}

impl Envelope {
    /// The NATS headers that carry it.
    pub fn to_headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut put = |name: &'static str, value: Option<&str>| {
            if let Some(value) = value {
                map.insert(name, value);
            }
        };
        put(headers::MSG_ID, self.message_id.as_deref());
        put(headers::REQUEST_ID, self.request_id.as_deref());
        put(
            headers::RECEIVED_AT,
            self.received_at_ms.map(|v| v.to_string()).as_deref(),
        );
        put(headers::EVENT_ID, self.event_id.as_deref());
        put(headers::SIGNATURE_DIGEST, self.signature_digest.as_deref());
        put(
            headers::TURN_DEADLINE,
            self.turn_deadline_ms.map(|v| v.to_string()).as_deref(),
        );
        map
    }

    /// Stores `payload` on `subject` with these headers and waits for JetStream's PubAck.
    pub async fn publish(
        &self,
        js: &jetstream::Context,
        subject: String,
        payload: Bytes,
    ) -> Result<PublishAck, async_nats::Error> {
        Ok(js
            .publish_with_headers(subject, self.to_headers(), payload)
            .await?
            .await?)
    }

    /// Reads it back from a message's headers (none at all reads as the default).
    pub fn from_headers(map: Option<&HeaderMap>) -> Self {
        let text = |name: &str| {
            map.and_then(|m| m.get(name))
                .map(|v| v.as_str().to_string())
        };
        let number = |name: &str| text(name).and_then(|v| v.parse().ok());
        Self {
            message_id: text(headers::MSG_ID),
            request_id: text(headers::REQUEST_ID),
            received_at_ms: number(headers::RECEIVED_AT),
            event_id: text(headers::EVENT_ID),
            signature_digest: text(headers::SIGNATURE_DIGEST),
            turn_deadline_ms: number(headers::TURN_DEADLINE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_nats_headers() {
        let full = Envelope {
            message_id: Some("req-1".into()),
            request_id: Some("req-1".into()),
            received_at_ms: Some(1_700_000_000_123),
            event_id: Some("orig".into()),
            signature_digest: Some("ab".into()),
            turn_deadline_ms: Some(42),
        };
        assert_eq!(Envelope::from_headers(Some(&full.to_headers())), full);
        let sparse = Envelope {
            message_id: Some("m".into()),
            ..Envelope::default()
        };
        assert_eq!(Envelope::from_headers(Some(&sparse.to_headers())), sparse);
        assert_eq!(Envelope::from_headers(None), Envelope::default());
        let mut odd = HeaderMap::new();
        odd.insert(headers::RECEIVED_AT, "soon");
        assert_eq!(Envelope::from_headers(Some(&odd)).received_at_ms, None);
    }
}
