//! Is the stored token still accepted? A cheap authenticated read (bot health) with the token
//! from KV; a 401 that no refresh grace can explain means the token is lost: rotation cannot
//! recover it, only an operator can (see [`RECOVERY`]).

use serde::Serialize;
use shared::khoros::KhorosApi;
use shared::token::TokenRecord;
use shared::upstream::UpstreamError;

use crate::telemetry;

/// Khoros keeps a refreshed token working this long (`docs/vendors/khoros-bot-api-v3.md`,
/// "Refresh a token"); a 401 this soon after a write may still be propagation.
pub const GRACE_MS: i64 = 10 * 60_000;

/// What the operator must do once the token is lost.
pub const RECOVERY: &[&str] = &[
    "1. Read the app's current token on the Care instance: GET https://<instance>.response.lithium.com/api/v2/tokens/khorosapi/ownerId/<KHOROS_APP_ID> with HTTP Basic of a user with the Bot API role; if there is none (404), create one with POST on the same path (docs/vendors/khoros-bot-api-v3.md, \"Create the first token\").",
    "2. Put it in the deployment's KHOROS_TOKEN secret (KHOROS_TOKEN_FILE) and set KHOROS_TOKEN_EXPIRES_AT_MS to its expiresAtMillis.",
    "3. Delete the stale record: nats kv del bridge_tokens khoros.bot-api",
    "4. Restart the scheduler: it seeds KV from KHOROS_TOKEN and the workers pick the token up from KV.",
];

/// The verdict on the stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Verdict {
    /// Khoros accepted it.
    Accepted,
    /// 401, but the token was written less than [`GRACE_MS`] ago.
    RejectedInGrace,
    /// 401 past every grace: the token is lost.
    Lost,
    /// Khoros could not be asked (not a 401); says nothing about the token.
    Unknown { reason: String },
}

/// Asks Khoros about `token` at `now_ms` (the clock of the schedule).
pub async fn check(api: &KhorosApi, app_id: &str, token: &TokenRecord, now_ms: i64) -> Verdict {
    match api.health(&token.secret(), app_id).await {
        Ok(()) => Verdict::Accepted,
        Err(UpstreamError::Status { status: 401, .. })
            if now_ms < token.rotated_at_ms + GRACE_MS =>
        {
            Verdict::RejectedInGrace
        }
        Err(UpstreamError::Status { status: 401, .. }) => Verdict::Lost,
        Err(e) => Verdict::Unknown {
            reason: e.to_string(),
        },
    }
}

/// Sets `scheduler_token_lost` from a verdict and says so loudly when it changes.
pub fn record(verdict: &Verdict, previous: Option<&Verdict>) {
    match verdict {
        Verdict::Lost => {
            metrics::gauge!(telemetry::TOKEN_LOST).set(1.0);
            if previous != Some(&Verdict::Lost) {
                tracing::error!(
                    recovery = RECOVERY.join(" "),
                    "the Bot API token in KV is LOST: Khoros answers 401 and no refresh grace \
                     explains it; every Bot API call fails until an operator replaces it"
                );
            }
        }
        Verdict::Accepted | Verdict::RejectedInGrace => {
            metrics::gauge!(telemetry::TOKEN_LOST).set(0.0)
        }
        Verdict::Unknown { reason } => {
            tracing::warn!(%reason, "could not check the stored token with Khoros")
        }
    }
}
