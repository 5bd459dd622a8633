//! The JWT checks of `docs/vendors/kore-webhook-channel.md`, "What Kore checks", done for real with
//! `jsonwebtoken`, plus token minting for
//! tests and a signature-free decoder for the inspection log.
//!
//! Expiry is checked against a `now` passed in by the caller (the server passes the wall
//! clock), so the fixed test vectors of `docs/vendors/kore-webhook-channel.md` ("Test vectors") can
//! be verified at a chosen instant.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use super::config::JwtAlg;

/// Kore's limit on `exp - iat` when JTI enforcement is on.
pub const MAX_JTI_LIFETIME_SECS: u64 = 3600;

/// Why a token was refused; every variant is answered with 401.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JwtError {
    #[error("no Authorization header")]
    MissingHeader,
    #[error("Authorization is not `bearer <jwt>`")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {found} is not the app's {expected:?}")]
    WrongAlgorithm { found: String, expected: JwtAlg },
    #[error("bad signature")]
    BadSignature,
    #[error("appId claim missing or not the app's Client ID")]
    WrongAppId,
    #[error("sub claim missing")]
    MissingSub,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("error verifying the jwt: {0}")]
    Jti(&'static str),
    #[error("userIdentity {claim:?} does not match from.id {from:?}")]
    UserIdentityMismatch { claim: String, from: String },
}

impl JwtError {
    /// The `msg` of the 401 envelope: JTI violations use Kore's "error verifying the jwt:"
    /// wording (`docs/vendors/kore-webhook-channel.md`, "Errors, limits and timeouts"), everything
    /// else "Invalid Access token".
    pub fn envelope_msg(&self) -> String {
        match self {
            JwtError::Jti(_) => self.to_string(),
            _ => "Invalid Access token".into(),
        }
    }
}

/// The app's key material and rules.
#[derive(Clone)]
pub struct JwtPolicy<'a> {
    pub alg: JwtAlg,
    pub client_id: &'a str,
    pub secret: &'a [u8],
    pub enforce_jti: bool,
}

/// A token that passed the checks; claims kept for the V2 user-identity rule.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
}

impl VerifiedToken {
    /// The V2 `userIdentity` claim, if any.
    pub fn user_identity(&self) -> Option<&str> {
        self.claims.get("userIdentity").and_then(Value::as_str)
    }

    /// `jti` with its expiry, for the replay check (only when enforcement is on).
    pub fn jti(&self) -> Option<(&str, u64)> {
        let jti = self.claims.get("jti")?.as_str()?;
        let exp = self.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Some((jti, exp))
    }

    /// The V2 rule of `docs/vendors/kore-webhook-channel.md`, "Claims": a `userIdentity` claim must
    /// equal `from.id`.
    pub fn check_user(&self, from_id: &str) -> Result<(), JwtError> {
        match self.user_identity() {
            Some(claim) if claim != from_id => Err(JwtError::UserIdentityMismatch {
                claim: claim.into(),
                from: from_id.into(),
            }),
            _ => Ok(()),
        }
    }
}

/// Extracts the token from `bearer <jwt>` (scheme case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Result<&str, JwtError> {
    let header = header.ok_or(JwtError::MissingHeader)?.trim();
    let (scheme, token) = header
        .split_once(char::is_whitespace)
        .ok_or(JwtError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(JwtError::NotBearer);
    }
    Ok(token)
}

impl JwtPolicy<'_> {
    /// Checks signature, algorithm, `appId`, `sub`, `exp` (against `now`, seconds since the
    /// epoch) and, when enforced, the JTI rules except reuse (the caller owns the seen set).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if header.alg != self.alg.algorithm() {
            return Err(JwtError::WrongAlgorithm {
                found: format!("{:?}", header.alg),
                expected: self.alg,
            });
        }
        let mut validation = Validation::new(self.alg.algorithm());
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &DecodingKey::from_secret(self.secret),
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm => JwtError::WrongAlgorithm {
                found: format!("{:?}", header.alg),
                expected: self.alg,
            },
            _ => JwtError::Malformed(e.to_string()),
        })?;
        let claims = data.claims;
        if claims.get("appId").and_then(Value::as_str) != Some(self.client_id) {
            return Err(JwtError::WrongAppId);
        }
        if claims.get("sub").is_none_or(Value::is_null) {
            return Err(JwtError::MissingSub);
        }
        let exp = match claims.get("exp") {
            None => None,
            Some(v) => {
                Some(number(v).ok_or_else(|| JwtError::Malformed("exp is not a number".into()))?)
            }
        };
        if let Some(exp) = exp {
            if exp <= now {
                return Err(JwtError::Expired { exp, now });
            }
        }
        if self.enforce_jti {
            if claims.get("jti").and_then(Value::as_str).is_none() {
                return Err(JwtError::Jti("jti is required"));
            }
            let iat = claims.get("iat").and_then(number);
            match (iat, exp) {
                (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= MAX_JTI_LIFETIME_SECS => {}
                (Some(_), Some(_)) => return Err(JwtError::Jti("token lifetime exceeds 1 hour")),
                _ => return Err(JwtError::Jti("iat and exp are required with jti")),
            }
        }
        Ok(VerifiedToken { claims })
    }
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Seconds since the epoch by the wall clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims for minting test tokens; `Default` is a valid token for the default app.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    #[serde(rename = "appId")]
    pub app_id: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(rename = "userIdentity", skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<String>,
}

impl Claims {
    /// `appId` = `client_id`, `sub` = `bridge-test`, valid for five minutes from now.
    pub fn for_app(client_id: &str) -> Self {
        let now = unix_now();
        Self {
            app_id: client_id.into(),
            sub: "bridge-test".into(),
            iat: Some(now),
            exp: Some(now + 300),
            jti: None,
            user_identity: None,
        }
    }
}

/// Signs `claims` with `alg` and `secret` (header `{"alg":..,"typ":"JWT"}`).
pub fn mint(claims: &Claims, alg: JwtAlg, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(alg.algorithm()),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Header and claims of a token without checking anything, for the inspection log.
pub fn peek(token: &str) -> Value {
    let mut parts = token.split('.');
    let mut segment = || {
        parts
            .next()
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or(Value::Null)
    };
    let header = segment();
    let claims = segment();
    serde_json::json!({ "header": header, "claims": claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"kore-test-client-secret-123";
    const V1: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhcHBJZCI6ImNzLTAwMDAwMDAwLXRlc3QtYXBwIiwic3ViIjoiYnJpZGdlLTc3ODgifQ.JnUlhb0RzRr5x-jwtnQ0DKSf5GQdcxIzJgLuT3H09QE";
    const V2: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhcHBJZCI6ImNzLTAwMDAwMDAwLXRlc3QtYXBwIiwic3ViIjoiYnJpZGdlLTc3ODgiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMH0.DNQ9daYsgASJSuR_04H6hzUWeDCSBaXJQRFB54dQbIo";
    const V3: &str = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJhcHBJZCI6ImNzLTAwMDAwMDAwLXRlc3QtYXBwIiwic3ViIjoiYnJpZGdlLTc3ODgiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMH0.hZxCwmmrG5Ho8ZO9BT26EAso0DouVg3x0-kmH_QaCEDRBVj6ZEeRlnM-I8RePlx_Ju4Eydgtnd5ABoO34xp6UA";
    /// Inside the vectors' validity window (iat 1700000000, exp 1700003600).
    const THEN: u64 = 1_700_000_100;

    fn policy(alg: JwtAlg) -> JwtPolicy<'static> {
        JwtPolicy {
            alg,
            client_id: "cs-00000000-test-app",
            secret: SECRET,
            enforce_jti: false,
        }
    }

    #[test]
    fn spec_test_vectors_verify() {
        assert!(policy(JwtAlg::HS256).verify(V1, THEN).is_ok());
        assert!(policy(JwtAlg::HS256).verify(V2, THEN).is_ok());
        assert!(policy(JwtAlg::HS512).verify(V3, THEN).is_ok());
    }

    #[test]
    fn vectors_fail_when_expired_or_wrong_alg_or_secret() {
        assert!(matches!(
            policy(JwtAlg::HS256).verify(V2, 1_700_003_600),
            Err(JwtError::Expired { .. })
        ));
        // No exp: never expires.
        assert!(policy(JwtAlg::HS256).verify(V1, u64::MAX / 2).is_ok());
        assert!(matches!(
            policy(JwtAlg::HS256).verify(V3, THEN),
            Err(JwtError::WrongAlgorithm { .. })
        ));
        assert!(matches!(
            policy(JwtAlg::HS512).verify(V2, THEN),
            Err(JwtError::WrongAlgorithm { .. })
        ));
        let other = JwtPolicy {
            secret: b"another-secret",
            ..policy(JwtAlg::HS256)
        };
        assert_eq!(other.verify(V1, THEN).unwrap_err(), JwtError::BadSignature);
        let other_app = JwtPolicy {
            client_id: "cs-other",
            ..policy(JwtAlg::HS256)
        };
        assert_eq!(
            other_app.verify(V1, THEN).unwrap_err(),
            JwtError::WrongAppId
        );
        assert!(matches!(
            policy(JwtAlg::HS256).verify("not.a.jwt", THEN),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn minted_tokens_match_the_vector_encoding() {
        let claims = Claims {
            app_id: "cs-00000000-test-app".into(),
            sub: "bridge-7788".into(),
            iat: Some(1_700_000_000),
            exp: Some(1_700_003_600),
            jti: None,
            user_identity: None,
        };
        // jsonwebtoken writes `{"typ":"JWT","alg":..}`, so only the claims segment and
        // verifiability are compared.
        let token = mint(&claims, JwtAlg::HS256, SECRET);
        assert_eq!(token.split('.').nth(1), V2.split('.').nth(1));
        assert!(policy(JwtAlg::HS256).verify(&token, THEN).is_ok());
    }

    #[test]
    fn jti_rules_when_enforced() {
        let strict = JwtPolicy {
            enforce_jti: true,
            ..policy(JwtAlg::HS256)
        };
        assert!(matches!(strict.verify(V2, THEN), Err(JwtError::Jti(_))));
        let mut claims = Claims::for_app("cs-00000000-test-app");
        claims.jti = Some("j-1".into());
        let ok = mint(&claims, JwtAlg::HS256, SECRET);
        assert!(strict.verify(&ok, unix_now()).is_ok());
        claims.exp = claims.iat.map(|iat| iat + 7200);
        let long = mint(&claims, JwtAlg::HS256, SECRET);
        let err = strict.verify(&long, unix_now()).unwrap_err();
        assert!(
            err.envelope_msg().starts_with("error verifying the jwt:"),
            "{err}"
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("Bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("BEARER abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), Err(JwtError::NotBearer));
        assert_eq!(bearer_token(Some("bearer")), Err(JwtError::NotBearer));
        assert_eq!(bearer_token(None), Err(JwtError::MissingHeader));
    }

    #[test]
    fn peek_shows_header_and_claims_only() {
        let view = peek(V3);
        assert_eq!(view["header"]["alg"], "HS512");
        assert_eq!(view["claims"]["sub"], "bridge-7788");
        assert!(!view.to_string().contains("hZxCwmm"));
    }
}
