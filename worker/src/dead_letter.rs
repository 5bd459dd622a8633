//! Dead letters: what finally failed, with the step, the status, a body excerpt and the
//! attempt count, published to `bridge.dlq.<type>` so nothing is dropped silently; listed and
//! replayed by the `worker dlq-list` / `worker dlq-replay` operator commands.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::contract::route::replay_message_id;
use shared::contract::{subject, Envelope};
use shared::topology::DEAD_LETTER_STREAM;

use crate::error::{Poison, WorkerError};
use crate::telemetry;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The event did not fit in one NATS message next to the rest: `event` holds its start
    /// as a string, and the letter cannot be replayed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Room kept for headers and the JSON around the letter's fields.
const ENVELOPE_ROOM: usize = 8 * 1024;
/// Longest error text kept.
const ERROR_LIMIT: usize = 1024;

impl DeadLetter {
    /// Serialises the letter within `limit` bytes, truncating the error text and, if still too
    /// large, the event (so a dead letter can always be written and its conversation moves on).
    fn fit_into(&mut self, limit: usize) -> Vec<u8> {
        if self.error.len() > ERROR_LIMIT {
            let mut cut = ERROR_LIMIT;
            while !self.error.is_char_boundary(cut) {
                cut -= 1;
            }
            self.error.truncate(cut);
        }
        let bytes = serde_json::to_vec(self).expect("dead letter serialises");
        if bytes.len() <= limit {
            return bytes;
        }
        let raw = match &self.event {
            Value::String(raw) => raw.clone(),
            other => other.to_string(),
        };
        // JSON escaping at most doubles ASCII; keep half the room for the event text.
        let mut cut = limit.saturating_sub(ENVELOPE_ROOM) / 2;
        cut = cut.min(raw.len());
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        self.event = Value::String(raw[..cut].to_string());
        self.truncated = true;
        serde_json::to_vec(self).expect("dead letter serialises")
    }
}

pub async fn publish(
    js: &jetstream::Context,
    kind: &str,
    letter: &DeadLetter,
) -> Result<(), WorkerError> {
    let subject = subject::dead_letter(kind);
    let max_payload = js.client().server_info().max_payload;
    let limit = if max_payload == 0 {
        1024 * 1024
    } else {
        max_payload
    };
    let payload = letter.clone().fit_into(limit.saturating_sub(1024));
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
            .map_err(|e| WorkerError::infra(format!("dead letter {sequence}: {e}")))?;
        let letter: DeadLetter = serde_json::from_slice(&message.payload)
            .map_err(|source| Poison::UnreadableLetter { sequence, source })?;
        if letter.truncated {
            return Err(Poison::TruncatedLetter { sequence }.into());
        }
        let payload = match &letter.event {
            Value::String(raw) => raw.clone().into_bytes(),
            event => serde_json::to_vec(event).expect("event serialises"),
        };
        let envelope = Envelope {
            message_id: Some(replay_message_id(sequence, &letter.event_id)),
            event_id: Some(letter.event_id.clone()),
            received_at_ms: Some(shared::auth::Clock::now_ms(&shared::auth::SystemClock)),
            ..Envelope::default()
        };
        envelope
            .publish(js, letter.subject.clone(), payload.into())
            .await
            .map_err(WorkerError::Infrastructure)?;
        stream
            .delete_message(sequence)
            .await
            .map_err(WorkerError::infra)?;
        tracing::info!(sequence, subject = %letter.subject, event_id = %letter.event_id, "dead letter replayed");
        replayed.push(sequence);
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_letter_is_cut_to_fit() {
        let mut letter = DeadLetter {
            error: "e".repeat(5000),
            event: Value::String("\"x".repeat(400_000)),
            ..Default::default()
        };
        let bytes = letter.fit_into(100_000);
        assert!(bytes.len() <= 100_000, "{}", bytes.len());
        let back: DeadLetter = serde_json::from_slice(&bytes).unwrap();
        assert!(back.truncated);
        assert_eq!(back.error.len(), ERROR_LIMIT);
        let mut small = DeadLetter::default();
        let bytes = small.fit_into(100_000);
        assert!(
            !serde_json::from_slice::<DeadLetter>(&bytes)
                .unwrap()
                .truncated
        );
    }
}
