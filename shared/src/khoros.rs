//! Client of the Khoros Bot API v3 (`docs/vendors/khoros-bot-api-v3.md`): respond, control, tags,
//! token refresh, request log.
//!
//! The client does one attempt per call; retrying is the caller's choice through
//! [`crate::retry`], with each error already classified (`docs/vendors/khoros-bot-api-v3.md`,
//! "Status codes and retries": 5xx/429/timeouts retry,
//! `/control` 409 and 404 retry, other 4xx do not).

use std::time::Duration;

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

/// A new token from `PUT /bots/v3/tokens/appId/{appId}`: only what the bridge needs, read
/// leniently, because after a 2xx the old token is already in its 10-minute grace and this
/// grant is the only copy of the new one (`docs/vendors/khoros-bot-api-v3.md`, "Refresh a token").
#[derive(Clone, Debug)]
pub struct TokenGrant {
    /// The new bearer token (a `Secret`: never printed).
    pub token: Secret,
    /// Khoros' expiry, epoch ms, when the grant carries a number under a known name; the
    /// caller decides whether it is sane.
    pub expires_at_ms: Option<i64>,
}

/// Why a 2xx grant could not be used. Never carries any part of the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the token endpoint answered 2xx with a body that is not JSON")]
    NotJson,
    #[error("the token endpoint answered 2xx without a token string at data.token")]
    NoToken,
}

impl TokenGrant {
    /// Reads `data.token` (or a top-level `token`) and an expiry under any known spelling.
    pub fn parse(body: &[u8]) -> Result<Self, GrantError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| GrantError::NotJson)?;
        let data = value.get("data").unwrap_or(&value);
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or(GrantError::NoToken)?;
        let expires_at_ms = ["expiresAtMillis", "expiresAtMs", "expiresAt"]
            .iter()
            .find_map(|k| data.get(*k).and_then(Value::as_i64));
        Ok(Self {
            token: Secret::new(token.to_string()),
            expires_at_ms,
        })
    }
}

/// What a refresh call produced.
#[derive(Clone, Debug)]
pub enum Refreshed {
    Grant(TokenGrant),
    /// Khoros answered 2xx (so the old token is now in its grace) but the body held no token.
    Unreadable(GrantError),
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
    /// A 2xx is never an error. Error bodies are dropped: nothing from this endpoint may
    /// end up in a log or a stored record.
    pub async fn refresh_token(
        &self,
        token: &Secret,
        app_id: &str,
    ) -> Result<Refreshed, UpstreamError> {
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
            .await
            .map_err(|mut e| {
                if let UpstreamError::Status { body, .. } = &mut e {
                    body.clear();
                }
                e
            })?;
        Ok(match TokenGrant::parse(&bytes) {
            Ok(grant) => Refreshed::Grant(grant),
            Err(e) => Refreshed::Unreadable(e),
        })
    }

    /// `GET /bots/v3/health/appId/{appId}`: a cheap authenticated read, used to learn whether
    /// Khoros still accepts a token (`docs/vendors/khoros-bot-api-v3.md`, "Bot health").
    pub async fn health(&self, token: &Secret, app_id: &str) -> Result<(), UpstreamError> {
        let path = format!("/bots/v3/health/appId/{}", encode(app_id));
        self.call(
            "health",
            reqwest::Method::GET,
            &path,
            token,
            None,
            transient,
        )
        .await
        .map(|_| ())
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
    fn the_grant_reads_the_documented_field_and_other_spellings() {
        for body in [
            r#"{"data":{"token":"t","expiresAtMillis":1723327200000}}"#,
            r#"{"data":{"token":"t","expiresAtMs":1723327200000}}"#,
            r#"{"token":"t","expiresAt":1723327200000}"#,
        ] {
            let grant = TokenGrant::parse(body.as_bytes()).unwrap();
            assert_eq!(grant.token.expose(), "t");
            assert_eq!(grant.expires_at_ms, Some(1_723_327_200_000));
        }
        let renamed = TokenGrant::parse(br#"{"data":{"token":"t","expiry":"soon"}}"#).unwrap();
        assert_eq!(renamed.expires_at_ms, None);
    }

    #[test]
    fn an_unusable_grant_never_quotes_the_body() {
        let e = TokenGrant::parse(br#"{"data":{"tok":"secret-jwt"}}"#).unwrap_err();
        assert_eq!(e, GrantError::NoToken);
        assert!(!e.to_string().contains("secret-jwt"));
        assert_eq!(
            TokenGrant::parse(b"secret-jwt").unwrap_err(),
            GrantError::NotJson
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("urn:mbid:AQ/+="), "urn%3Ambid%3AAQ%2F%2B%3D");
        assert_eq!(encode("kore-bridge"), "kore-bridge");
    }
}
