//! What the Khoros and Kore.ai clients share: the error type, its retry class, and metrics.

use std::time::{Duration, Instant};

use crate::retry::RetryClass;

/// Counter, labels `api`, `endpoint`, `status` (HTTP code, `timeout` or `connect`).
pub const UPSTREAM_REQUESTS: &str = "upstream_requests_total";
/// Histogram, labels `api`, `endpoint`: call latency in seconds.
pub const UPSTREAM_SECONDS: &str = "upstream_request_duration_seconds";
/// Counter, labels `api`, `endpoint`: retries scheduled.
pub const UPSTREAM_RETRIES: &str = "upstream_retries_total";

/// Longest body excerpt kept in errors and dead letters.
const EXCERPT: usize = 512;

/// A failed upstream call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{endpoint} answered {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
        retryable: bool,
    },
    /// No answer in time after the request may have left: retryable only where resending is
    /// harmless ([`OnLostAnswer`]).
    #[error("{endpoint} timed out")]
    Timeout {
        endpoint: &'static str,
        retryable: bool,
    },
    #[error("{endpoint} connection failed: {reason}")]
    Connect {
        endpoint: &'static str,
        reason: String,
    },
    #[error("{endpoint} answered something unreadable: {reason}")]
    Decode {
        endpoint: &'static str,
        reason: String,
    },
}

impl UpstreamError {
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn body_excerpt(&self) -> &str {
        match self {
            UpstreamError::Status { body, .. } => body,
            _ => "",
        }
    }

    /// Label value for metrics and dead letters.
    pub fn status_label(&self) -> String {
        match self {
            UpstreamError::Status { status, .. } => status.to_string(),
            UpstreamError::Timeout { .. } => "timeout".into(),
            UpstreamError::Connect { .. } => "connect".into(),
            UpstreamError::Decode { .. } => "decode".into(),
        }
    }
}

impl RetryClass for UpstreamError {
    fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Status { retryable, .. } | UpstreamError::Timeout { retryable, .. } => {
                *retryable
            }
            UpstreamError::Connect { .. } => true,
            UpstreamError::Decode { .. } => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a call whose answer was lost (a timeout once the request may have left) may have
/// done, and so whether it is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLostAnswer {
    /// Sending again is harmless: the timeout is retried.
    Resend,
    /// The call may have acted (a Kore.ai turn): the timeout is final. A connection that
    /// could not even be opened is still retried.
    GiveUp,
}

/// [`send_with`] for endpoints whose timeouts are retried ([`OnLostAnswer::Resend`]).
pub async fn send(
    api: &'static str,
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
    retryable: impl Fn(u16) -> bool,
) -> Result<(u16, bytes::Bytes), UpstreamError> {
    send_with(api, endpoint, request, OnLostAnswer::Resend, retryable).await
}

/// Sends a request, records metrics, and turns a non-2xx into [`UpstreamError::Status`]
/// whose retryability `retryable(status)` decides; a timeout is retryable as `on_lost` says.
pub async fn send_with(
    api: &'static str,
    endpoint: &'static str,
    request: reqwest::RequestBuilder,
    on_lost: OnLostAnswer,
    retryable: impl Fn(u16) -> bool,
) -> Result<(u16, bytes::Bytes), UpstreamError> {
    let started = Instant::now();
    let result = async {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(endpoint, on_lost, &e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(endpoint, on_lost, &e))?;
        if (200..300).contains(&status) {
            Ok((status, body))
        } else {
            Err(UpstreamError::Status {
                endpoint,
                status,
                body: excerpt(&body),
                retry_after,
                retryable: retryable(status),
            })
        }
    }
    .await;
    let status = match &result {
        Ok((status, _)) => status.to_string(),
        Err(e) => e.status_label(),
    };
    metrics::counter!(UPSTREAM_REQUESTS, "api" => api, "endpoint" => endpoint, "status" => status)
        .increment(1);
    metrics::histogram!(UPSTREAM_SECONDS, "api" => api, "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    result
}

fn transport_error(
    endpoint: &'static str,
    on_lost: OnLostAnswer,
    e: &reqwest::Error,
) -> UpstreamError {
    // A connect failure, timed out or not, means the request never left.
    if e.is_timeout() && !e.is_connect() {
        UpstreamError::Timeout {
            endpoint,
            retryable: on_lost == OnLostAnswer::Resend,
        }
    } else {
        UpstreamError::Connect {
            endpoint,
            reason: e.to_string(),
        }
    }
}

/// At most [`EXCERPT`] bytes of a body, lossily decoded.
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(EXCERPT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// 5xx and 429: the retryable statuses of every upstream (`docs/decisions.md`,
/// "Retry what can succeed, dead-letter what cannot").
pub fn transient(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Counts a scheduled retry.
pub fn count_retry(api: &'static str, endpoint: &'static str) {
    metrics::counter!(UPSTREAM_RETRIES, "api" => api, "endpoint" => endpoint).increment(1);
}
