//! Metric names exported by the scheduler (the dashboard and alert rules in `deploy/` use
//! exactly these). Token gauges are set by every replica from the KV record, so whichever
//! replica Prometheus scrapes tells the truth; no metric carries a per-replica label except
//! `scheduler_lease_holder{holder}`.

/// Gauge: when the current token expires, epoch seconds (0 = unknown, e.g. a seed token).
pub const TOKEN_EXPIRY: &str = "scheduler_token_expiry_timestamp_seconds";
/// Gauge: age of the current token (seed or rotation), seconds.
pub const TOKEN_AGE: &str = "scheduler_token_age_seconds";
/// Gauge: seconds since the last successful rotation (the seed's age before the first one).
pub const SINCE_LAST_ROTATION: &str = "scheduler_seconds_since_last_rotation";
/// Gauge: when the next scheduled (or early) rotation is due, epoch seconds.
pub const NEXT_ROTATION: &str = "scheduler_next_rotation_timestamp_seconds";
/// Gauge: 1 when a token is stored in KV, 0 when neither KV nor the config has one.
pub const TOKEN_PRESENT: &str = "scheduler_token_present";
/// Gauge: 1 while a freshly granted token waits for NATS to store it (the old token's
/// 10-minute grace is running), 0 otherwise.
pub const TOKEN_UNSTORED: &str = "scheduler_token_unstored";
/// Gauge: 1 when Khoros refuses the stored token (401) and no grace can explain it: the
/// token is lost and only an operator can replace it (`scheduler token-status` says how).
pub const TOKEN_LOST: &str = "scheduler_token_lost";
/// Counter, label `result`: success, client_error (4xx, not retried), server_error (5xx or 429
/// after retries), transport_error (timeouts, connection errors after retries), conflict
/// (another scheduler rotated or claimed first), store_error (NATS failed to store the claim),
/// grant_unreadable (2xx without a token; retried at the next check).
pub const ROTATIONS: &str = "scheduler_rotations_total";
/// Gauge, label `holder`: 1 while this replica holds the rotation lease, 0 otherwise.
pub const LEASE_HOLDER: &str = "scheduler_lease_holder";
/// Gauge: 1 while this replica holds the rotation lease, 0 otherwise.
pub const IS_LEADER: &str = "scheduler_is_leader";

/// Gauge, label `stream`: messages stored in a bridge stream.
pub const STREAM_MESSAGES: &str = "jetstream_stream_messages";
/// Gauge, label `stream`: bytes stored in a bridge stream.
pub const STREAM_BYTES: &str = "jetstream_stream_bytes";
/// Gauge, labels `stream`, `consumer`, `event_type`: messages not yet delivered (num_pending).
pub const CONSUMER_PENDING: &str = "jetstream_consumer_pending";
/// Gauge, labels `stream`, `consumer`, `event_type`: delivered but not acknowledged.
pub const CONSUMER_ACK_PENDING: &str = "jetstream_consumer_ack_pending";
/// Gauge, labels `stream`, `consumer`, `event_type`: messages delivered more than once.
pub const CONSUMER_REDELIVERED: &str = "jetstream_consumer_redelivered";
/// Gauge: messages in the dead-letter stream.
pub const DEAD_LETTERS: &str = "dead_letter_messages";
/// Counter: JetStream samples that failed (NATS unreachable, stream info refused).
pub const SAMPLE_ERRORS: &str = "scheduler_jetstream_sample_errors_total";
