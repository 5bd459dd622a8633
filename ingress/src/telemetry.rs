//! Metric names of the ingress (documented in the README's metrics table).

/// Counter, label `outcome`: accepted, duplicate, unauthorized, too_large, bad_request, unavailable.
pub const REQUESTS: &str = "ingress_requests_total";
/// Histogram: time from request received to response, seconds (the ack latency Khoros sees).
pub const REQUEST_SECONDS: &str = "ingress_request_duration_seconds";
/// Histogram: publish-to-PubAck time, seconds.
pub const PUBLISH_SECONDS: &str = "ingress_publish_duration_seconds";
/// Counter: events JetStream reported as duplicates (same request id within the window).
pub const DUPLICATES: &str = "ingress_duplicates_total";
/// Counter, label `reason`: why authentication failed.
pub const AUTH_FAILURES: &str = "ingress_auth_failures_total";
/// Counter, label `type`: events stored, by event type token.
pub const EVENTS_STORED: &str = "ingress_events_stored_total";
/// Counter, label `outcome`: Kore.ai asynchronous deliveries (stored, unauthorized, ...).
pub const KORE_CALLBACKS: &str = "ingress_kore_callbacks_total";
