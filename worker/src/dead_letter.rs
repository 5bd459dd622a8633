//! Dead letters: what finally failed, with the step, the status, a body excerpt and the
//! attempt count, published to `bridge.dlq.<type>` so nothing is dropped silently.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::routing::DEAD_LETTER_PREFIX;

use crate::error::WorkerError;
use crate::telemetry;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The subject the event was stored on, so a replay can put it back.
    pub subject: String,
    /// The request id / dedup id of the event.
    pub event_id: String,
    /// The step that failed (`parse`, `respond`, `control`, `tag`, `max_deliveries`, ...).
    pub step: String,
    /// HTTP status or `timeout` / `connect` / `-`.
    pub status: String,
    pub error: String,
    pub body_excerpt: String,
    /// Deliveries of the event plus attempts of the failed call.
    pub attempts: u64,
    pub failed_at_ms: i64,
    /// The event as stored (JSON when it parses, else a string).
    pub event: Value,
}

pub async fn publish(
    js: &jetstream::Context,
    kind: &str,
    letter: &DeadLetter,
) -> Result<(), WorkerError> {
    let subject = format!("{DEAD_LETTER_PREFIX}.{kind}");
    let payload = serde_json::to_vec(letter).expect("dead letter serialises");
    js.publish(subject, payload.into())
        .await
        .map_err(WorkerError::infra)?
        .await
        .map_err(WorkerError::infra)?;
    metrics::counter!(telemetry::DEAD_LETTERS, "step" => letter.step.clone()).increment(1);
    tracing::error!(step = %letter.step, status = %letter.status, error = %letter.error, "event dead-lettered");
    Ok(())
}
