//! Metric names of the worker (documented in the README's metrics table).

/// Counter, labels `type`, `outcome`: events handled and how it ended.
pub const EVENTS: &str = "worker_events_total";
/// Counter, label `reason`: message events not answered because we do not own the conversation.
pub const SKIPPED: &str = "worker_skipped_total";
/// Counter, label `reason`: hand-offs to an agent (bot_requested, task, kore_unavailable,
/// breaker_open, kore_incomplete, kore_timeout).
pub const HANDOFFS: &str = "worker_handoffs_total";
/// Counter, label `step`: events written to the dead-letter stream.
pub const DEAD_LETTERS: &str = "worker_dead_letters_total";
/// Counter, label `type`: deliveries that were redeliveries (delivered > 1).
pub const REDELIVERIES: &str = "worker_redeliveries_total";
/// Counter, label `operation`: update and control events applied to conversation records.
pub const UPDATES: &str = "worker_conversation_updates_total";
/// Histogram: ingress receive timestamp to the last Khoros call of the reply, seconds.
pub const END_TO_END_SECONDS: &str = "worker_end_to_end_seconds";
/// Histogram, label `type`: time spent handling one event, seconds.
pub const HANDLE_SECONDS: &str = "worker_handle_duration_seconds";
/// Gauge: Kore.ai breaker state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "worker_kore_breaker_state";
/// Gauge: events being handled right now by this process (holding a concurrency permit).
pub const IN_FLIGHT: &str = "worker_in_flight";
/// Gauge: events this process holds unacknowledged (running or waiting their turn).
pub const HELD: &str = "worker_held_events";
/// Gauge: age of the oldest event this process holds unfinished, seconds.
pub const OLDEST_EVENT_AGE: &str = "worker_oldest_event_age_seconds";
/// Gauge: partitions (type, partition) this process owns.
pub const OWNED_PARTITIONS: &str = "worker_owned_partitions";
/// Gauge: worker replicas this process sees alive.
pub const LIVE_MEMBERS: &str = "worker_live_members";
/// Counter, label `result` (sent, not_sent, unknown): lost `/respond` answers resolved
/// against Khoros' request log.
pub const RESOLUTIONS: &str = "worker_delivery_resolutions_total";
/// Counter, label `result` (listed, shared): request-log listings those resolutions made, and
/// the ones they took from a listing another resolution had just made.
pub const REQUEST_LOG_LISTINGS: &str = "worker_request_log_listings_total";
/// Counter: token swaps seen in KV.
pub const TOKEN_SWAPS: &str = "worker_token_swaps_total";
