//! The token record's life: seeding the first token, deciding (through [`crate::schedule`]),
//! and rotating it exactly once per period.
//!
//! # How two schedulers never rotate the same token
//! Besides the lease, every attempt is fenced in KV. The record of the last attempt
//! ([`RotationState`], key [`STATE_KEY`] in the tokens bucket) names the token revision it
//! started from. An attempt (1) reads that record, then the token; (2) claims the rotation by
//! writing an `in_progress` record with compare-and-set on the record it read; only then
//! (3) calls Khoros; and (4) writes the new token with compare-and-set on the token revision
//! it read, retrying until NATS takes it (after a 2xx the grant is the only copy). A
//! scheduler that read before the claim loses step 2; one that reads after it sees the claim
//! (or the new token) and waits. So Khoros sees at most one refresh per token, as long as
//! the refresh ends within the claim timeout, which covers the whole retry budget
//! (`Retry-After` included, see [`shared::retry`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use serde::Serialize;
use shared::auth::Clock;
use shared::retry::{retry, RetryPolicy};
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::upstream::{self, UpstreamError};
use shared::Secret;

use crate::records::{AttemptStatus, Reason, RotationState, STATE_KEY};
use crate::schedule::{Decision, SchedulePolicy};
use crate::telemetry;
use shared::khoros::{KhorosApi, Refreshed};
use shared::kv::{self, KvError, Versioned};

/// What KV holds, read in fence order: the attempt record first, then the token.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub last: Option<Versioned<RotationState>>,
    pub token: Option<Versioned<TokenRecord>>,
}

/// The result of one attempt, as logged, counted and printed by `rotate-now`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RotationReport {
    pub status: AttemptStatus,
    pub reason: Reason,
    /// Expiry of the new token (success only).
    pub expires_at_ms: Option<i64>,
    pub error: Option<String>,
    /// Retries of the refresh call after its first attempt.
    pub retries: usize,
}

/// What [`Rotator::check`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckOutcome {
    /// Nothing to do now.
    Idle(Decision),
    /// A rotation was attempted.
    Attempted(RotationReport),
}

/// Rotates the token of one app when due. Cheap to clone.
#[derive(Clone)]
pub struct Rotator {
    /// The `bridge_tokens` bucket.
    tokens: Store,
    api: KhorosApi,
    app_id: String,
    retry: RetryPolicy,
    schedule: SchedulePolicy,
    /// Written into claims, so `token-status` says who rotated.
    holder: String,
    clock: Arc<dyn Clock>,
}

/// Backoff of the KV write that carries a fresh token: short steps, so the token lands
/// within a second or two of NATS coming back; no limit, since giving up loses the token.
const STORE_MIN_DELAY: Duration = Duration::from_millis(100);
const STORE_MAX_DELAY: Duration = Duration::from_secs(1);

/// Khoros' tokens live 90 days (`docs/vendors/khoros-bot-api-v3.md`, "Tokens"): assumed when
/// a grant's expiry is missing or not plausible.
const TOKEN_LIFE_MS: i64 = 90 * 86_400_000;

impl Rotator {
    pub fn new(
        tokens: Store,
        api: KhorosApi,
        app_id: String,
        retry: RetryPolicy,
        schedule: SchedulePolicy,
        holder: String,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tokens,
            api,
            app_id,
            retry,
            schedule,
            holder,
            clock,
        }
    }

    pub fn schedule(&self) -> &SchedulePolicy {
        &self.schedule
    }

    /// Writes the configured token when KV has none; `true` when it did.
    pub async fn seed_if_absent(
        &self,
        seed: Option<&Secret>,
        expires_at_ms: i64,
    ) -> Result<bool, KvError> {
        let Some(seed) = seed else { return Ok(false) };
        let record = TokenRecord {
            token: seed.expose().to_string(),
            expires_at_ms,
            rotated_at_ms: self.clock.now_ms(),
            source: "seed".into(),
        };
        match kv::write(&self.tokens, TOKEN_KEY, &record, None).await {
            Ok(revision) => {
                tracing::info!(
                    revision,
                    expires_at_ms,
                    "seeded the Bot API token from configuration"
                );
                Ok(true)
            }
            Err(KvError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads the attempt record, then the token (the order the fence relies on), both from
    /// the bucket's leader: a lagging replica could pair a fresh record with a stale token.
    pub async fn snapshot(&self) -> Result<Snapshot, KvError> {
        let last = kv::read_from_leader::<RotationState>(&self.tokens, STATE_KEY).await?;
        let token = kv::read_from_leader::<TokenRecord>(&self.tokens, TOKEN_KEY).await?;
        Ok(Snapshot { last, token })
    }

    /// Updates the token gauges from KV without rotating (replicas that do not lead).
    pub async fn observe(&self) -> Result<Snapshot, KvError> {
        let snapshot = self.snapshot().await?;
        record_token_gauges(&snapshot, self.clock.now_ms(), &self.schedule);
        Ok(snapshot)
    }

    /// Rotates if due (or if `force`), respecting other schedulers' claims.
    pub async fn check(&self, force: bool) -> Result<CheckOutcome, KvError> {
        let snapshot = self.observe().await?;
        let decision = self.schedule.decide(
            snapshot.token.as_ref().map(|t| (&t.value, t.revision)),
            snapshot.last.as_ref().map(|l| &l.value),
            self.clock.now_ms(),
            force,
        );
        match decision {
            Decision::Rotate(reason) => {
                Ok(CheckOutcome::Attempted(self.rotate(snapshot, reason).await))
            }
            other => Ok(CheckOutcome::Idle(other)),
        }
    }

    /// Writes a freshly granted token until KV takes it, however long NATS is away: Khoros
    /// already put the old token into its grace, so this record is the only copy of the new
    /// one. A conflict means someone wrote the key since the claim; the fresh grant still
    /// wins, as Khoros invalidated every other token of the app when it issued this one.
    async fn store_until_done(&self, record: &TokenRecord, base_revision: u64) -> u64 {
        let mut expected = Some(base_revision);
        let mut delay = STORE_MIN_DELAY;
        let mut failures = 0u64;
        loop {
            match kv::write(&self.tokens, TOKEN_KEY, record, expected).await {
                Ok(revision) => {
                    metrics::gauge!(telemetry::TOKEN_UNSTORED).set(0.0);
                    if failures > 0 {
                        tracing::info!(failures, "the new token is stored after all");
                    }
                    return revision;
                }
                Err(KvError::Conflict { .. }) => {
                    tracing::warn!("the token record changed during the rotation; storing the new token over it");
                }
                Err(error) => {
                    failures += 1;
                    metrics::gauge!(telemetry::TOKEN_UNSTORED).set(1.0);
                    tracing::error!(%error, failures, retry_in = ?delay,
                        "storing the new token failed; holding it and retrying until NATS takes it");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STORE_MAX_DELAY);
                }
            }
            // The bucket may have been recreated or rewritten: fence on what is there now.
            expected = match kv::revision(&self.tokens, TOKEN_KEY).await {
                Ok(revision) => revision,
                Err(_) => expected,
            };
        }
    }

    async fn rotate(&self, snapshot: Snapshot, reason: Reason) -> RotationReport {
        let Some(token) = snapshot.token else {
            unreachable!("decide() only rotates a stored token");
        };
        let previous_success = snapshot
            .last
            .as_ref()
            .and_then(|l| l.value.last_success_at_ms);
        let mut state = RotationState {
            base_revision: token.revision,
            holder: self.holder.clone(),
            status: AttemptStatus::InProgress,
            reason,
            started_at_ms: self.clock.now_ms(),
            finished_at_ms: None,
            error: None,
            last_success_at_ms: previous_success,
            retries: 0,
        };
        let report = |status, expires_at_ms, error: Option<String>, retries| RotationReport {
            status,
            reason,
            expires_at_ms,
            error,
            retries,
        };

        // (2) Claim.
        let expected = snapshot.last.as_ref().map(|l| l.revision);
        let claim_revision = match kv::write(&self.tokens, STATE_KEY, &state, expected).await {
            Ok(revision) => revision,
            Err(e) => {
                let status = match e {
                    KvError::Conflict { .. } => AttemptStatus::Conflict,
                    _ => AttemptStatus::StoreError,
                };
                let r = report(status, None, Some(e.to_string()), 0);
                finish_log(&r, token.revision);
                return r;
            }
        };

        // (3) Refresh, retrying only what can succeed.
        tracing::info!(
            reason = reason.label(),
            base_revision = token.revision,
            "rotating the Bot API token"
        );
        let current = token.value.secret();
        let mut retries = 0;
        let result = retry(
            self.retry,
            || self.api.refresh_token(&current, &self.app_id),
            |e: &UpstreamError, wait| {
                retries += 1;
                upstream::count_retry("khoros", "tokens");
                tracing::warn!(error = %e, retry_in = ?wait, "token refresh failed, retrying");
            },
        )
        .await;

        // (4) Store the new token first, before anything else can fail.
        let r = match result {
            Ok(Refreshed::Grant(grant)) => {
                let now = self.clock.now_ms();
                let record = TokenRecord {
                    token: grant.token.expose().to_string(),
                    expires_at_ms: sane_expiry(grant.expires_at_ms, now),
                    rotated_at_ms: now,
                    source: "rotation".into(),
                };
                let revision = self.store_until_done(&record, token.revision).await;
                state.last_success_at_ms = Some(now);
                if self.schedule.due_at_ms(&record) <= now {
                    tracing::warn!(
                        expires_at_ms = record.expires_at_ms,
                        "the new token already expires within TOKEN_EXPIRY_MARGIN; \
                         the margin is longer than the token's life"
                    );
                }
                record_token_gauges(
                    &Snapshot {
                        last: None,
                        token: Some(Versioned {
                            value: record.clone(),
                            revision,
                        }),
                    },
                    now,
                    &self.schedule,
                );
                report(
                    AttemptStatus::Success,
                    Some(record.expires_at_ms),
                    None,
                    retries,
                )
            }
            Ok(Refreshed::Unreadable(e)) => report(
                AttemptStatus::GrantUnreadable,
                None,
                Some(format!(
                    "{e}; the old token is in its 10-minute grace, retrying"
                )),
                retries,
            ),
            Err(e) => report(AttemptStatus::of(&e), None, Some(e.to_string()), retries),
        };

        state.status = r.status;
        state.finished_at_ms = Some(self.clock.now_ms());
        state.error.clone_from(&r.error);
        state.retries = r.retries;
        if let Err(e) = kv::write(&self.tokens, STATE_KEY, &state, Some(claim_revision)).await {
            tracing::warn!(error = %e, "could not record the rotation result");
        }
        finish_log(&r, token.revision);
        r
    }
}

/// Khoros' expiry when plausible (in the future, within a year and a day), else 90 days.
fn sane_expiry(granted: Option<i64>, now_ms: i64) -> i64 {
    match granted {
        Some(at) if at > now_ms && at <= now_ms + 366 * 86_400_000 => at,
        _ => {
            tracing::warn!("the grant has no plausible expiry; assuming the documented 90 days");
            now_ms + TOKEN_LIFE_MS
        }
    }
}

/// Logs and counts the end of an attempt.
fn finish_log(r: &RotationReport, base_revision: u64) {
    metrics::counter!(telemetry::ROTATIONS, "result" => r.status.label()).increment(1);
    let error = r.error.as_deref().unwrap_or("");
    let (reason, status) = (r.reason.label(), r.status.label());
    match r.status {
        AttemptStatus::Success => tracing::info!(
            reason,
            base_revision,
            expires_at_ms = r.expires_at_ms,
            retries = r.retries,
            "Bot API token rotated"
        ),
        AttemptStatus::Conflict => tracing::warn!(
            reason,
            base_revision,
            error,
            "another scheduler is rotating this token"
        ),
        _ => tracing::error!(
            reason,
            base_revision,
            result = status,
            retries = r.retries,
            error,
            "Bot API token rotation failed; the current token is kept"
        ),
    }
}

/// Sets the token gauges from what KV holds.
pub fn record_token_gauges(snapshot: &Snapshot, now_ms: i64, schedule: &SchedulePolicy) {
    let Some(token) = snapshot.token.as_ref().map(|t| &t.value) else {
        metrics::gauge!(telemetry::TOKEN_PRESENT).set(0.0);
        return;
    };
    let secs = |ms: i64| ms as f64 / 1000.0;
    let last_success = snapshot
        .last
        .as_ref()
        .and_then(|l| l.value.last_success_at_ms)
        .unwrap_or(token.rotated_at_ms)
        .max(token.rotated_at_ms);
    metrics::gauge!(telemetry::TOKEN_PRESENT).set(1.0);
    metrics::gauge!(telemetry::TOKEN_EXPIRY).set(secs(token.expires_at_ms.max(0)));
    metrics::gauge!(telemetry::TOKEN_AGE).set(secs(now_ms - token.rotated_at_ms));
    metrics::gauge!(telemetry::SINCE_LAST_ROTATION).set(secs(now_ms - last_success));
    metrics::gauge!(telemetry::NEXT_ROTATION).set(secs(schedule.due_at_ms(token)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::retry::RetryClass;

    fn status(code: u16) -> UpstreamError {
        UpstreamError::Status {
            endpoint: "tokens",
            status: code,
            body: String::new(),
            retry_after: None,
            retryable: upstream::transient(code),
        }
    }

    #[test]
    fn errors_are_classified_as_the_vendor_rule_says() {
        assert_eq!(AttemptStatus::of(&status(400)), AttemptStatus::ClientError);
        assert_eq!(AttemptStatus::of(&status(401)), AttemptStatus::ClientError);
        assert_eq!(AttemptStatus::of(&status(503)), AttemptStatus::ServerError);
        assert_eq!(AttemptStatus::of(&status(429)), AttemptStatus::ServerError);
        let timeout = UpstreamError::Timeout {
            endpoint: "tokens",
            retryable: true,
        };
        assert_eq!(AttemptStatus::of(&timeout), AttemptStatus::TransportError);
        // 4xx never reach a second attempt, 5xx and transport errors do.
        assert!(!status(400).is_retryable());
        assert!(status(503).is_retryable());
        assert!(timeout.is_retryable());
    }

    #[test]
    fn the_state_record_round_trips_as_snake_case_json() {
        let state = RotationState {
            base_revision: 3,
            holder: "a".into(),
            status: AttemptStatus::ClientError,
            reason: Reason::ExpiringSoon,
            started_at_ms: 1,
            finished_at_ms: Some(2),
            error: Some("tokens answered 400".into()),
            last_success_at_ms: None,
            retries: 1,
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["status"], "client_error");
        assert_eq!(json["reason"], "expiring_soon");
        assert_eq!(
            serde_json::from_value::<RotationState>(json).unwrap(),
            state
        );
    }

    #[test]
    fn implausible_expiries_become_90_days() {
        let now = 1_700_000_000_000;
        assert_eq!(sane_expiry(Some(now + 5), now), now + 5);
        assert_eq!(sane_expiry(None, now), now + TOKEN_LIFE_MS);
        assert_eq!(sane_expiry(Some(1_723), now), now + TOKEN_LIFE_MS);
        assert_eq!(sane_expiry(Some(i64::MAX), now), now + TOKEN_LIFE_MS);
    }

    #[test]
    fn only_khoros_failures_back_off() {
        assert!(!AttemptStatus::GrantUnreadable.is_failure());
        assert!(AttemptStatus::ClientError.is_failure());
        assert!(AttemptStatus::TransportError.is_failure());
        assert!(!AttemptStatus::StoreError.is_failure());
        assert!(!AttemptStatus::Conflict.is_failure());
        assert!(!AttemptStatus::Success.is_failure());
    }
}
