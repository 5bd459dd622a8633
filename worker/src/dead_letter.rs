//! Dead letters: what finally failed, with the step, the status, a body excerpt and the
//! attempt count, published to `bridge.dlq.<type>` so nothing is dropped silently; listed and
//! replayed by the `worker dlq-list` / `worker dlq-replay` operator commands.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::routing::{self, DEAD_LETTER_PREFIX};
use shared::topology::DEAD_LETTER_STREAM;

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

/// A dead letter as stored, with its sequence in the `DEAD_LETTERS` stream.
#[derive(Debug, Clone, Serialize)]
pub struct StoredLetter {
    pub sequence: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// Every dead letter currently in the stream, oldest first.
pub async fn list(js: &jetstream::Context) -> Result<Vec<StoredLetter>, WorkerError> {
    let stream = js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .map_err(WorkerError::infra)?;
    let state = stream.get_info().await.map_err(WorkerError::infra)?.state;
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // Replayed letters are deleted, which leaves gaps.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        match serde_json::from_slice(&message.payload) {
            Ok(letter) => letters.push(StoredLetter { sequence, letter }),
            Err(e) => tracing::warn!(sequence, error = %e, "unreadable dead letter skipped"),
        }
    }
    Ok(letters)
}

/// Puts dead letters back on their original subjects, so workers handle them again, then
/// removes them from the dead-letter stream. The original event id travels in
/// `Bridge-Event-Id`: the progress record is found and work resumes at the failed step.
pub async fn replay(js: &jetstream::Context, sequences: &[u64]) -> Result<Vec<u64>, WorkerError> {
    let stream = js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .map_err(WorkerError::infra)?;
    let mut replayed = Vec::new();
    for &sequence in sequences {
        let message = stream
            .get_raw_message(sequence)
            .await
            .map_err(|e| WorkerError::Infrastructure(format!("dead letter {sequence}: {e}")))?;
        let letter: DeadLetter = serde_json::from_slice(&message.payload).map_err(|e| {
            WorkerError::Poison(format!("dead letter {sequence} is unreadable: {e}"))
        })?;
        let payload = match &letter.event {
            Value::String(raw) => raw.clone().into_bytes(),
            event => serde_json::to_vec(event).expect("event serialises"),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            routing::headers::MSG_ID,
            format!("replay-{sequence}-{}", letter.event_id).as_str(),
        );
        headers.insert(routing::headers::EVENT_ID, letter.event_id.as_str());
        let now = shared::auth::Clock::now_ms(&shared::auth::SystemClock);
        headers.insert(routing::headers::RECEIVED_AT, now.to_string().as_str());
        js.publish_with_headers(letter.subject.clone(), headers, payload.into())
            .await
            .map_err(WorkerError::infra)?
            .await
            .map_err(WorkerError::infra)?;
        stream
            .delete_message(sequence)
            .await
            .map_err(WorkerError::infra)?;
        tracing::info!(sequence, subject = %letter.subject, event_id = %letter.event_id, "dead letter replayed");
        replayed.push(sequence);
    }
    Ok(replayed)
}
