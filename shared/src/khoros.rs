//! Client of the Khoros Bot API v3 (`docs/vendors/khoros-bot-api-v3.md`): respond, control, tags,
//! token refresh, request log.
//!
//! The client does one attempt per call; retrying is the caller's choice through
//! [`crate::retry`], with each error already classified (`docs/vendors/khoros-bot-api-v3.md`,
//! "Status codes and retries": 5xx/429/timeouts retry,
//! `/control` 409 and 404 retry, other 4xx do not).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::upstream::{self, transient, UpstreamError};
use crate::Secret;

const API: &str = "khoros";

/// Where the Bot API lives and how long a call may take.
#[derive(Clone, Debug)]
pub struct KhorosApi {
    http: reqwest::Client,
    base_url: String,
}

/// A new token from `PUT /bots/v3/tokens/appId/{appId}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenGrant {
    pub token: String,
    #[serde(rename = "expiresAtMillis", alias = "expiresAtMs")]
    pub expires_at_ms: i64,
}

impl KhorosApi {
    /// `base_url` is the regional gateway, e.g. `https://api.app.lithium.com`.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn call(
        &self,
        endpoint: &'static str,
        method: reqwest::Method,
        path: &str,
        token: &Secret,
        body: Option<&Value>,
        retryable: impl Fn(u16) -> bool,
    ) -> Result<(u16, bytes::Bytes), UpstreamError> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token.expose());
        if let Some(body) = body {
            request = request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(serde_json::to_vec(body).expect("a JSON value serialises"));
        }
        upstream::send(API, endpoint, request, retryable).await
    }

    /// `POST /bots/v3/respond`. Returns Khoros' `requestId` when the body carries one.
    pub async fn respond(
        &self,
        token: &Secret,
        body: &Value,
    ) -> Result<Option<String>, UpstreamError> {
        let (_, bytes) = self
            .call(
                "respond",
                reqwest::Method::POST,
                "/bots/v3/respond",
                token,
                Some(body),
                transient,
            )
            .await?;
        Ok(serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            v.get("requestId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }))
    }

    /// `PUT /bots/v3/control`; 409 is documented as safe to retry, 404 happens right after a
    /// conversation's first message (`docs/vendors/khoros-bot-api-v3.md`, "Control (hand-off)"), so
    /// both retry.
    pub async fn control(&self, token: &Secret, body: &Value) -> Result<(), UpstreamError> {
        self.call(
            "control",
            reqwest::Method::PUT,
            "/bots/v3/control",
            token,
            Some(body),
            |s| transient(s) || s == 409 || s == 404,
        )
        .await
        .map(|_| ())
    }

    /// `PUT /bots/v3/tag`.
    pub async fn tag(&self, token: &Secret, body: &Value) -> Result<(), UpstreamError> {
        self.call(
            "tag",
            reqwest::Method::PUT,
            "/bots/v3/tag",
            token,
            Some(body),
            transient,
        )
        .await
        .map(|_| ())
    }

    /// `PUT /bots/v3/tokens/appId/{appId}`: a new token; the old one works 10 more minutes.
    pub async fn refresh_token(
        &self,
        token: &Secret,
        app_id: &str,
    ) -> Result<TokenGrant, UpstreamError> {
        #[derive(Deserialize)]
        struct Envelope {
            data: TokenGrant,
        }
        let path = format!("/bots/v3/tokens/appId/{}", encode(app_id));
        let (_, bytes) = self
            .call(
                "tokens",
                reqwest::Method::PUT,
                &path,
                token,
                None,
                transient,
            )
            .await?;
        serde_json::from_slice::<Envelope>(&bytes)
            .map(|e| e.data)
            .map_err(|e| UpstreamError::Decode {
                endpoint: "tokens",
                reason: e.to_string(),
            })
    }

    /// `GET /bots/v3/request/appId/{appId}?from=..&origin=BOT`: recent calls of this bot,
    /// used to learn whether a `/respond` whose answer was lost actually went through.
    pub async fn recent_bot_requests(
        &self,
        token: &Secret,
        app_id: &str,
        from: &str,
    ) -> Result<Vec<Value>, UpstreamError> {
        let path = format!(
            "/bots/v3/request/appId/{}?from={from}&origin=BOT",
            encode(app_id)
        );
        let (_, bytes) = self
            .call(
                "request_log",
                reqwest::Method::GET,
                &path,
                token,
                None,
                transient,
            )
            .await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Decode {
            endpoint: "request_log",
            reason: e.to_string(),
        })?;
        Ok(value
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }
}

/// Percent-encodes a path segment (author ids contain `:`, `/`, `+`, `=`).
pub fn encode(segment: &str) -> String {
    use std::fmt::Write;
    segment.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_reads_the_documented_field_and_the_old_spelling() {
        for body in [
            r#"{"token":"t","expiresAtMillis":1723327200000}"#,
            r#"{"token":"t","expiresAtMs":1723327200000}"#,
        ] {
            let grant: TokenGrant = serde_json::from_str(body).unwrap();
            assert_eq!(grant.expires_at_ms, 1_723_327_200_000);
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("urn:mbid:AQ/+="), "urn%3Ambid%3AAQ%2F%2B%3D");
        assert_eq!(encode("kore-bridge"), "kore-bridge");
    }
}
