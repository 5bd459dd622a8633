//! The Bot API token table (`docs/vendors/khoros-bot-api-v3.md`, "Tokens"): which bearer tokens are
//! valid, for which appId, until when.
//!
//! Tokens are minted as HS512 JWTs shaped like Khoros' (claims `companyKey`, `userName`,
//! `awsRegion`, `exp`), but validity is decided here, never by the JWT's own `exp`: refresh
//! puts the presented token into a 10-minute grace, DELETE revokes every token of the appId.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use shared::Secret;

/// A token lives 90 days from issue (`docs/vendors/khoros-bot-api-v3.md`, "Tokens").
pub const TOKEN_LIFETIME_MS: i64 = 90 * 24 * 60 * 60 * 1000;
/// A refreshed token keeps working this long after it was submitted for refresh
/// (`docs/vendors/khoros-bot-api-v3.md`, "Refresh a token").
pub const REFRESH_GRACE_MS: i64 = 10 * 60 * 1000;

/// Where a token stands at a given sim time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TokenState {
    Active,
    /// Superseded by a refresh but still accepted until `graceUntilMillis`.
    Grace,
    /// Superseded and past its grace.
    Superseded,
    Expired,
    Revoked,
}

/// One row of the table, as `GET /sim/tokens` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub token: String,
    pub app_id: String,
    pub state: TokenState,
    pub issued_at_millis: i64,
    pub expires_at_millis: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_until_millis: Option<i64>,
    /// True for the configured opaque token, false for minted JWTs.
    pub configured: bool,
}

/// A freshly issued token (the `data` of the create and refresh answers in
/// `docs/vendors/khoros-bot-api-v3.md`, "Tokens").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    pub expires_at_millis: i64,
}

/// Why a bearer token is refused; the caller only ever sees a bare 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    #[error("unknown token")]
    Unknown,
    #[error("token {0:?}")]
    NotValid(TokenState),
}

/// Why a create (`docs/vendors/khoros-bot-api-v3.md`, "Create the first token") is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateRefused {
    #[error("a token already exists for this ownerId")]
    AlreadyExists,
}

#[derive(Clone, Debug)]
struct Entry {
    token: String,
    app_id: String,
    issued_at_ms: i64,
    expires_at_ms: i64,
    /// Set when the token was submitted for refresh.
    grace_until_ms: Option<i64>,
    revoked: bool,
    configured: bool,
}

impl Entry {
    fn state(&self, now_ms: i64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if now_ms >= self.expires_at_ms {
            TokenState::Expired
        } else {
            match self.grace_until_ms {
                None => TokenState::Active,
                Some(until) if now_ms <= until => TokenState::Grace,
                Some(_) => TokenState::Superseded,
            }
        }
    }

    fn view(&self, now_ms: i64) -> TokenView {
        TokenView {
            token: self.token.clone(),
            app_id: self.app_id.clone(),
            state: self.state(now_ms),
            issued_at_millis: self.issued_at_ms,
            expires_at_millis: self.expires_at_ms,
            grace_until_millis: self.grace_until_ms,
            configured: self.configured,
        }
    }
}

/// Claims of a minted token; `jti` only makes two tokens minted in the same second differ.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Claims<'a> {
    company_key: &'a str,
    user_name: &'a str,
    aws_region: &'a str,
    exp: i64,
    jti: String,
}

/// Every token ever issued, newest last.
#[derive(Debug)]
pub struct TokenTable {
    entries: Vec<Entry>,
    signing_key: Secret,
    company_key: String,
    aws_region: String,
}

impl TokenTable {
    pub fn new(signing_key: Secret, company_key: &str, aws_region: &str) -> Self {
        Self {
            entries: Vec::new(),
            signing_key,
            company_key: company_key.to_string(),
            aws_region: aws_region.to_string(),
        }
    }

    /// Registers an operator-supplied opaque token, valid for 90 days from `now_ms`.
    pub fn insert_configured(&mut self, token: &str, app_id: &str, now_ms: i64) {
        self.entries.push(Entry {
            token: token.to_string(),
            app_id: app_id.to_string(),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(TOKEN_LIFETIME_MS),
            grace_until_ms: None,
            revoked: false,
            configured: true,
        });
    }

    /// Issues a new active token for `app_id`; any other active token of it enters its grace.
    pub fn mint(&mut self, app_id: &str, now_ms: i64) -> IssuedToken {
        for entry in self.entries.iter_mut() {
            if entry.app_id == app_id && entry.state(now_ms) == TokenState::Active {
                entry.grace_until_ms = Some(now_ms + REFRESH_GRACE_MS);
            }
        }
        let expires_at_ms = now_ms.saturating_add(TOKEN_LIFETIME_MS);
        let token = self.encode(expires_at_ms);
        self.entries.push(Entry {
            token: token.clone(),
            app_id: app_id.to_string(),
            issued_at_ms: now_ms,
            expires_at_ms,
            grace_until_ms: None,
            revoked: false,
            configured: false,
        });
        IssuedToken {
            token,
            expires_at_millis: expires_at_ms,
        }
    }

    /// The appId a presented bearer token acts for, if it is accepted at `now_ms`.
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<String, TokenRejected> {
        // Newest first: a token string can only be minted once, but be exact anyway.
        let entry = self
            .entries
            .iter()
            .rev()
            .find(|e| e.token == token)
            .ok_or(TokenRejected::Unknown)?;
        match entry.state(now_ms) {
            TokenState::Active | TokenState::Grace => Ok(entry.app_id.clone()),
            other => Err(TokenRejected::NotValid(other)),
        }
    }

    /// `docs/vendors/khoros-bot-api-v3.md`, "Refresh a token": a new token for the appId; the
    /// presented one (and any other active one) keeps
    /// working for the grace period. A token already in grace keeps its original deadline.
    pub fn refresh(&mut self, app_id: &str, now_ms: i64) -> IssuedToken {
        self.mint(app_id, now_ms)
    }

    /// `docs/vendors/khoros-bot-api-v3.md`, "Invalidate every token": kills every token of the
    /// appId at once, no grace. Returns how many were live.
    pub fn revoke_all(&mut self, app_id: &str, now_ms: i64) -> usize {
        let mut live = 0;
        for entry in self.entries.iter_mut().filter(|e| e.app_id == app_id) {
            if matches!(entry.state(now_ms), TokenState::Active | TokenState::Grace) {
                live += 1;
            }
            entry.revoked = true;
        }
        live
    }

    /// `docs/vendors/khoros-bot-api-v3.md`, "Create the first token": one-shot while an active
    /// token exists (409), allowed again after DELETE.
    pub fn create(&mut self, app_id: &str, now_ms: i64) -> Result<IssuedToken, CreateRefused> {
        if self.active(app_id, now_ms).is_some() {
            return Err(CreateRefused::AlreadyExists);
        }
        Ok(self.mint(app_id, now_ms))
    }

    /// The current (non-grace) token of the appId, as the GET of
    /// `docs/vendors/khoros-bot-api-v3.md`, "Create the first token", reports it.
    pub fn active(&self, app_id: &str, now_ms: i64) -> Option<IssuedToken> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.app_id == app_id && e.state(now_ms) == TokenState::Active)
            .map(|e| IssuedToken {
                token: e.token.clone(),
                expires_at_millis: e.expires_at_ms,
            })
    }

    pub fn views(&self, now_ms: i64) -> Vec<TokenView> {
        self.entries.iter().map(|e| e.view(now_ms)).collect()
    }

    fn encode(&self, expires_at_ms: i64) -> String {
        let mut header = Header::new(Algorithm::HS512);
        // Khoros' sample header is exactly {"alg":"HS512"}.
        header.typ = None;
        let claims = Claims {
            company_key: &self.company_key,
            user_name: "API System User",
            aws_region: &self.aws_region,
            exp: expires_at_ms / 1000,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let key = EncodingKey::from_secret(self.signing_key.expose().as_bytes());
        // HMAC signing of plain claims cannot fail; an opaque token is still a valid token
        // for this table, so fall back rather than fail the request.
        jsonwebtoken::encode(&header, &claims, &key)
            .unwrap_or_else(|_| format!("opaque-{}", uuid::Uuid::new_v4().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TokenTable {
        TokenTable::new(Secret::new("khoros-fake-signing-key"), "acme", "us-west-2")
    }

    #[test]
    fn refresh_grace_then_superseded() {
        let mut t = table();
        t.insert_configured("initial", "bot", 0);
        let new = t.refresh("bot", 1_000);
        assert_eq!(new.expires_at_millis, 1_000 + TOKEN_LIFETIME_MS);
        assert_eq!(
            t.authenticate("initial", 1_000 + REFRESH_GRACE_MS),
            Ok("bot".into())
        );
        assert_eq!(
            t.authenticate("initial", 1_001 + REFRESH_GRACE_MS),
            Err(TokenRejected::NotValid(TokenState::Superseded))
        );
        assert!(t.authenticate(&new.token, 2_000_000).is_ok());
        assert_eq!(t.revoke_all("bot", 2_000), 2);
        assert!(t.authenticate(&new.token, 2_000).is_err());
        assert!(t.create("bot", 3_000).is_ok());
        assert_eq!(t.create("bot", 3_000), Err(CreateRefused::AlreadyExists));
    }

    #[test]
    fn minted_tokens_are_hs512_jwts_with_khoros_claims() {
        let mut t = table();
        let issued = t.mint("bot", 1_700_000_000_000);
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS512);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &issued.token,
            &jsonwebtoken::DecodingKey::from_secret(b"khoros-fake-signing-key"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["companyKey"], "acme");
        assert_eq!(data.claims["awsRegion"], "us-west-2");
        assert_eq!(
            data.claims["exp"],
            (1_700_000_000_000 + TOKEN_LIFETIME_MS) / 1000
        );
        assert_eq!(t.authenticate("garbage", 0), Err(TokenRejected::Unknown));
        assert!(t
            .authenticate(&issued.token, issued.expires_at_millis)
            .is_err());
    }
}
