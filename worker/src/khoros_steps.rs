//! Executes planned Bot API calls: retries (`docs/vendors/khoros-bot-api-v3.md`,
//! "Status codes and retries"), one token reload on 401, and the
//! exactly-once check for a `/respond` whose outcome a crash made unknown.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use shared::khoros::KhorosApi;
use shared::retry::{retry, RetryPolicy};
use shared::upstream::{count_retry, UpstreamError};

use crate::reply::Step;
use crate::token::TokenSource;

/// A step that finally failed, with what the dead letter needs.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub step: &'static str,
    pub status: String,
    pub error: String,
    pub body_excerpt: String,
    pub attempts: u64,
}

impl StepFailure {
    fn from_upstream(step: &'static str, e: &UpstreamError, attempts: u64) -> Self {
        Self {
            step,
            status: e.status_label(),
            error: e.to_string(),
            body_excerpt: e.body_excerpt().to_string(),
            attempts,
        }
    }
}

/// Runs steps against the Bot API.
#[derive(Clone)]
pub struct StepRunner {
    pub api: KhorosApi,
    pub token: TokenSource,
    pub retry: RetryPolicy,
    pub app_id: String,
}

impl StepRunner {
    pub async fn run(&self, step: &Step) -> Result<(), StepFailure> {
        let name = step.name();
        let attempts = AtomicU64::new(0);
        let mut reloaded = false;
        loop {
            let Some(token) = self.token.current() else {
                return Err(StepFailure {
                    step: name,
                    status: "-".into(),
                    error: "no Bot API token in KV (seed KHOROS_TOKEN or run the scheduler)".into(),
                    body_excerpt: String::new(),
                    attempts: attempts.load(Ordering::Relaxed),
                });
            };
            let call = || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                match step {
                    Step::Respond(body) => self.api.respond(&token, body).await.map(|_| ()),
                    Step::Handoff(body) => self.api.control(&token, body).await,
                    Step::Tag(body) => self.api.tag(&token, body).await,
                }
            };
            let result = retry(self.retry, call, |e: &UpstreamError, wait| {
                count_retry("khoros", name);
                tracing::warn!(step = name, error = %e, retry_in = ?wait, "bot api call failed; retrying");
            })
            .await;
            match result {
                Ok(()) => return Ok(()),
                // The scheduler may have rotated the token; read KV once and try again.
                Err(e) if e.status() == Some(401) && !reloaded => {
                    reloaded = true;
                    let changed = self.token.reload().await.unwrap_or(false);
                    tracing::warn!(
                        step = name,
                        token_changed = changed,
                        "bot api answered 401; token reloaded"
                    );
                }
                Err(e) => {
                    return Err(StepFailure::from_upstream(
                        name,
                        &e,
                        attempts.load(Ordering::Relaxed),
                    ));
                }
            }
        }
    }

    /// Whether Khoros' request log shows this exact `/respond` body as sent in the last hour.
    /// `None` when the log cannot be read.
    pub async fn already_sent(&self, body: &Value) -> Option<bool> {
        let token = self.token.current()?;
        let records = self
            .api
            .recent_bot_requests(&token, &self.app_id, "1h")
            .await
            .ok()?;
        Some(records.iter().any(|record| {
            let payload = record
                .get("payload")
                .and_then(Value::as_str)
                .and_then(|p| serde_json::from_str::<Value>(p).ok());
            let failed = record.get("state").and_then(Value::as_str) == Some("ERROR");
            !failed && payload.as_ref() == Some(body)
        }))
    }
}
