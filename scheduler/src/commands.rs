//! Operator commands of the `scheduler` binary: `rotate-now` and `token-status`.
//!
//! They talk to NATS and Khoros directly, with the service's configuration, and go through
//! the same fences as the service (a rotation claimed by a running scheduler is never
//! doubled). They open the buckets but never create them: the service does that at start-up.

use std::time::Duration;

use serde::Serialize;
use shared::token::TokenRecord;

use crate::config::SchedulerConfig;
use crate::lease::{Lease, LeaseRecord};
use crate::records::{AttemptStatus, RotationState};
use crate::rotation::{CheckOutcome, RotationReport, Rotator};
use crate::schedule::Decision;
use crate::service::{OpenError, Stores};
use crate::verify::{self, Verdict};
use shared::khoros::KhorosApi;
use shared::kv::{KvError, Versioned};

/// How long a command waits for NATS before giving up.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("nats: no answer from {url} within {NATS_TIMEOUT:?}")]
    NatsTimeout { url: String },
    #[error("nats: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("nats: {0} (buckets are created by the scheduler service at start-up)")]
    Buckets(#[from] OpenError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("no Bot API token in KV and none configured (KHOROS_TOKEN or KHOROS_TOKEN_FILE)")]
    NoToken,
    #[error("scheduler {holder} is rotating the token right now; try again in a minute")]
    Busy { holder: String },
    #[error("NATS answered with a token older than the last rotation (a replica catching up); try again in a few seconds")]
    StaleRead,
}

/// Connects and opens the buckets, within [`NATS_TIMEOUT`].
async fn open(config: &SchedulerConfig) -> Result<Stores, CommandError> {
    let attempt = async {
        let client = shared::topology::connect(&config.nats).await?;
        Ok(Stores::open(&async_nats::jetstream::new(client)).await?)
    };
    tokio::time::timeout(NATS_TIMEOUT, attempt)
        .await
        .map_err(|_| CommandError::NatsTimeout {
            url: config.nats.url.clone(),
        })?
}

fn rotator(config: &SchedulerConfig, stores: &Stores, holder: String) -> Rotator {
    Rotator::new(
        stores.tokens.clone(),
        KhorosApi::new(&config.khoros_api_url, config.khoros_timeout),
        config.app_id.clone(),
        config.retry,
        config.schedule,
        holder,
        config.clock.clone(),
    )
}

/// Rotates once, now, whatever the schedule says (seeding `KHOROS_TOKEN` first if KV has
/// none). A report is returned for failures from Khoros too; the caller checks its status.
pub async fn rotate_now(config: &SchedulerConfig) -> Result<RotationReport, CommandError> {
    let stores = open(config).await?;
    let rotator = rotator(
        config,
        &stores,
        format!("rotate-now:{}", config.scheduler_id),
    );
    rotator
        .seed_if_absent(config.seed_token.as_ref(), config.seed_expires_at_ms)
        .await?;
    match rotator.check(true).await? {
        CheckOutcome::Attempted(report) => Ok(report),
        CheckOutcome::Idle(Decision::InProgress { holder }) => Err(CommandError::Busy { holder }),
        CheckOutcome::Idle(Decision::StaleToken { .. }) => Err(CommandError::StaleRead),
        CheckOutcome::Idle(_) => Err(CommandError::NoToken),
    }
}

/// What `token-status` prints. The token itself is never part of it.
#[derive(Clone, Debug, Serialize)]
pub struct TokenStatus {
    pub now_ms: i64,
    pub token: Option<TokenView>,
    pub last_rotation: Option<RotationState>,
    pub lease: Option<LeaseView>,
    /// What Khoros says about the stored token (bot health with it); `None` without a token.
    pub check: Option<Verdict>,
    /// Set when the token is lost: the likely cause and what the operator must do.
    pub lost: Option<LostToken>,
}

/// Why the token is lost and how to recover.
#[derive(Clone, Debug, Serialize)]
pub struct LostToken {
    pub cause: String,
    pub recovery: Vec<&'static str>,
}

impl TokenStatus {
    /// The token in KV is lost (the binary then exits 1).
    pub fn is_lost(&self) -> bool {
        self.lost.is_some()
    }
}

/// The stored token, without the token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenView {
    /// `seed` or `rotation`.
    pub source: String,
    /// KV revision of the record.
    pub revision: u64,
    pub rotated_at_ms: i64,
    pub rotated_at: String,
    pub age_seconds: i64,
    /// 0 when unknown.
    pub expires_at_ms: i64,
    pub expires_at: Option<String>,
    pub expires_in_seconds: Option<i64>,
    pub next_rotation_at_ms: i64,
    pub next_rotation_at: String,
}

/// The rotation lease as stored.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseView {
    pub holder: String,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    /// Whether the holder renewed it recently enough to still hold it.
    pub live: bool,
}

/// Reads the token record, the last attempt and the lease.
pub async fn token_status(config: &SchedulerConfig) -> Result<TokenStatus, CommandError> {
    let stores = open(config).await?;
    let snapshot = rotator(config, &stores, config.scheduler_id.clone())
        .snapshot()
        .await?;
    let lease = Lease::current(&stores.leases).await?;
    let check = match &snapshot.token {
        Some(token) => {
            let api = KhorosApi::new(&config.khoros_api_url, config.khoros_timeout);
            Some(verify::check(&api, &config.app_id, &token.value, config.clock.now_ms()).await)
        }
        None => None,
    };
    let mut status = describe(
        config,
        config.clock.now_ms(),
        snapshot.token,
        snapshot.last.map(|l| l.value),
        lease.map(|l| l.value),
    );
    if check == Some(Verdict::Lost) {
        status.lost = Some(LostToken {
            cause: lost_cause(status.last_rotation.as_ref()),
            recovery: verify::RECOVERY.to_vec(),
        });
    }
    status.check = check;
    Ok(status)
}

/// The most likely reason Khoros refuses the stored token.
fn lost_cause(last: Option<&RotationState>) -> String {
    let base = "Khoros answers 401 to the token stored in KV and its 10-minute refresh grace is \
                over, so rotation cannot recover it";
    match last {
        Some(l) if l.status != AttemptStatus::Success => format!(
            "{base}. The last rotation attempt ({}, {}) may have been answered by Khoros \
             without the new token reaching KV, or the token was refreshed or revoked \
             outside the bridge.",
            l.status.label(),
            l.error.as_deref().unwrap_or("no error recorded")
        ),
        _ => format!(
            "{base}. The token was refreshed or revoked outside the bridge (another system \
             using the same app id, or DELETE on the tokens endpoint)."
        ),
    }
}

fn describe(
    config: &SchedulerConfig,
    now_ms: i64,
    token: Option<Versioned<TokenRecord>>,
    last_rotation: Option<RotationState>,
    lease: Option<LeaseRecord>,
) -> TokenStatus {
    let token = token.map(|t| {
        let next = config.schedule.due_at_ms(&t.value);
        let known = (t.value.expires_at_ms > 0).then_some(t.value.expires_at_ms);
        TokenView {
            source: t.value.source,
            revision: t.revision,
            rotated_at_ms: t.value.rotated_at_ms,
            rotated_at: rfc3339(t.value.rotated_at_ms),
            age_seconds: (now_ms - t.value.rotated_at_ms) / 1000,
            expires_at_ms: t.value.expires_at_ms,
            expires_at: known.map(rfc3339),
            expires_in_seconds: known.map(|e| (e - now_ms) / 1000),
            next_rotation_at_ms: next,
            next_rotation_at: rfc3339(next),
        }
    });
    TokenStatus {
        now_ms,
        token,
        last_rotation,
        lease: lease.map(|l| LeaseView {
            live: l.is_live(now_ms),
            holder: l.holder,
            acquired_at_ms: l.acquired_at_ms,
            expires_at_ms: l.expires_at_ms,
        }),
        check: None,
        lost: None,
    }
}

pub use shared::auth::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::Env;

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_715_551_200_000), "2024-05-12T22:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn the_status_never_contains_the_token() {
        let config =
            SchedulerConfig::from_env(&Env::from_pairs([("KHOROS_APP_ID", "bot")])).unwrap();
        let token = Versioned {
            value: TokenRecord {
                token: "very-secret-jwt".into(),
                expires_at_ms: 1_000_000 + 90 * 86_400_000,
                rotated_at_ms: 1_000_000,
                source: "rotation".into(),
            },
            revision: 7,
        };
        let lease = LeaseRecord {
            holder: "a".into(),
            acquired_at_ms: 0,
            expires_at_ms: 1_000_500,
        };
        let status = describe(&config, 1_001_000, Some(token), None, Some(lease));
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains("very-secret-jwt"), "{json}");
        let view = status.token.unwrap();
        assert_eq!(view.age_seconds, 1);
        assert_eq!(view.expires_in_seconds, Some(90 * 86_400 - 1));
        assert_eq!(view.next_rotation_at_ms, 1_000_000 + 7 * 86_400_000);
        assert!(!status.lease.unwrap().live);
    }
}
