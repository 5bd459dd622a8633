//! Metric names of the ingress (documented in the README's metrics table), and the handles the
//! hot path records into (looked up once: a registry lookup per request showed in profiles).

use metrics::{Counter, Histogram};
use shared::contract::EventKind;

/// Counter, label `outcome`: accepted, duplicate, unauthorized, too_large, bad_request,
/// timeout, busy, unavailable.
pub const REQUESTS: &str = "ingress_requests_total";
/// Histogram: time from request received to response, seconds (the ack latency Khoros sees).
pub const REQUEST_SECONDS: &str = "ingress_request_duration_seconds";
/// Histogram: publish-to-PubAck time, seconds.
pub const PUBLISH_SECONDS: &str = "ingress_publish_duration_seconds";
/// Counter: publish attempts made again because the first found no stream leader, got no
/// PubAck in time, or lost its connection (`STORE_DEADLINE`).
pub const PUBLISH_RETRIES: &str = "ingress_publish_retries_total";
/// Counter: events JetStream reported as duplicates (same request id within the window).
pub const DUPLICATES: &str = "ingress_duplicates_total";
/// Counter, label `reason`: why authentication failed.
pub const AUTH_FAILURES: &str = "ingress_auth_failures_total";
/// Counter, label `type`: events newly stored, by event type token (duplicates not counted).
pub const EVENTS_STORED: &str = "ingress_events_stored_total";
/// Counter, label `outcome`: Kore.ai asynchronous deliveries (stored, unauthorized, ...).
pub const KORE_CALLBACKS: &str = "ingress_kore_callbacks_total";

/// The `type` labels of `ingress_events_stored_total`: the Khoros types a pool consumes, and
/// `other` for the rest (bounded cardinality).
const KINDS: [&str; 4] = [
    EventKind::Message.as_str(),
    EventKind::Update.as_str(),
    EventKind::Control.as_str(),
    "other",
];

/// The handles of the per-request metrics.
#[derive(Clone)]
pub struct HotMetrics {
    pub accepted: Counter,
    pub duplicate: Counter,
    pub duplicates: Counter,
    pub request_seconds: Histogram,
    pub publish_seconds: Histogram,
    pub publish_retries: Counter,
    stored: [Counter; 4],
}

impl HotMetrics {
    /// Registers the handles; call after the recorder is installed.
    pub fn register() -> Self {
        Self {
            accepted: metrics::counter!(REQUESTS, "outcome" => "accepted"),
            duplicate: metrics::counter!(REQUESTS, "outcome" => "duplicate"),
            duplicates: metrics::counter!(DUPLICATES),
            request_seconds: metrics::histogram!(REQUEST_SECONDS),
            publish_seconds: metrics::histogram!(PUBLISH_SECONDS),
            publish_retries: metrics::counter!(PUBLISH_RETRIES),
            stored: KINDS.map(|label| metrics::counter!(EVENTS_STORED, "type" => label)),
        }
    }

    /// The label of an event type: the known ones, or `other` (bounded cardinality).
    pub fn kind_label(kind: &str) -> &'static str {
        EventKind::of_khoros_type(kind).map_or(KINDS[3], EventKind::as_str)
    }

    /// `ingress_events_stored_total` for a label from [`Self::kind_label`].
    pub fn stored(&self, label: &str) -> &Counter {
        &self.stored[KINDS.iter().position(|k| *k == label).unwrap_or(3)]
    }
}
