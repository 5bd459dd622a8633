//! What the scheduler keeps in KV about rotations, next to the token itself: the record of
//! the last attempt and its vocabulary. Both [`crate::schedule`] (which reads it to decide)
//! and [`crate::rotation`] (which writes it) depend on this module, not on each other.

use serde::{Deserialize, Serialize};
use shared::upstream::{self, UpstreamError};

/// Why a rotation happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The token reached `rotate_every`.
    Scheduled,
    /// The token expires within `expiry_margin`.
    ExpiringSoon,
    /// An operator ran `scheduler rotate-now`.
    Forced,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Scheduled => "scheduled",
            Reason::ExpiringSoon => "expiring_soon",
            Reason::Forced => "forced",
        }
    }
}

/// Key of the last attempt's record, in the tokens bucket next to the token itself
/// (workers watch only [`TOKEN_KEY`], so writing this one does not wake them).
pub const STATE_KEY: &str = "scheduler.rotation-state";

/// How an attempt ended (`in_progress` while it runs); also the `result` label of
/// `scheduler_rotations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    InProgress,
    Success,
    /// 4xx from Khoros: not retried, the current token is kept.
    ClientError,
    /// 5xx or 429 after every retry, or a 2xx whose body could not be read.
    ServerError,
    /// Timeouts or connection errors after every retry.
    TransportError,
    /// Another scheduler claimed or rotated first.
    Conflict,
    /// NATS failed to store the claim (a new token is never given up: see [`Rotator::store_until_done`]).
    StoreError,
    /// Khoros answered 2xx without a readable token. Not a failure: the old token is in its
    /// grace and still refreshes, so the next check tries again at once.
    GrantUnreadable,
}

impl AttemptStatus {
    pub fn label(self) -> &'static str {
        match self {
            AttemptStatus::InProgress => "in_progress",
            AttemptStatus::Success => "success",
            AttemptStatus::ClientError => "client_error",
            AttemptStatus::ServerError => "server_error",
            AttemptStatus::TransportError => "transport_error",
            AttemptStatus::Conflict => "conflict",
            AttemptStatus::StoreError => "store_error",
            AttemptStatus::GrantUnreadable => "grant_unreadable",
        }
    }

    /// Khoros refused or stayed unreachable: wait `retry_after_failure` before the next try.
    /// (A store error is not one: the stored token may be in its last 10 minutes.)
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            AttemptStatus::ClientError | AttemptStatus::ServerError | AttemptStatus::TransportError
        )
    }

    /// The final status of a refresh that failed after the retry policy was applied.
    pub fn of(error: &UpstreamError) -> Self {
        match error {
            UpstreamError::Status { status, .. } if upstream::transient(*status) => {
                AttemptStatus::ServerError
            }
            UpstreamError::Status { .. } => AttemptStatus::ClientError,
            UpstreamError::Timeout { .. } | UpstreamError::Connect { .. } => {
                AttemptStatus::TransportError
            }
            UpstreamError::Decode { .. } => AttemptStatus::ServerError,
        }
    }
}

/// The record of the last rotation attempt, shared by every replica and `token-status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationState {
    /// Revision of the token record the attempt started from: the claim's fence.
    pub base_revision: u64,
    /// `SCHEDULER_ID` of the scheduler (or `rotate-now`) that made the attempt.
    pub holder: String,
    pub status: AttemptStatus,
    pub reason: Reason,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// What went wrong (Khoros' status and body excerpt; never a token).
    pub error: Option<String>,
    /// When a rotation last succeeded, carried from attempt to attempt.
    pub last_success_at_ms: Option<i64>,
    /// Retries of the refresh call after its first attempt.
    #[serde(default)]
    pub retries: usize,
}
