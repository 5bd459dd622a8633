//! Webhook authentication: which check a request must pass before anything is stored.
//!
//! [`hmac`] implements Khoros signature v2, [`basic`] HTTP Basic (both described in
//! `docs/vendors/khoros-webhooks.md`).
//! Both compare secrets in constant time and report a [`AuthFailure`] whose reason is logged
//! and counted but never sent back to the caller.

pub mod basic;
pub mod clock;
pub mod hmac;

use http::HeaderMap;

pub use self::basic::BasicVerifier;
pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::hmac::{HmacKeys, HmacVerifier, SignatureHeaders};

/// Why a request was refused. The caller only ever sees a bare 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing authentication header")]
    MissingHeader,
    #[error("malformed authentication header")]
    Malformed,
    #[error("unknown api key")]
    UnknownKey,
    #[error("signature mismatch")]
    BadSignature,
    #[error("timestamp outside the allowed skew")]
    StaleTimestamp,
    #[error("wrong credentials")]
    BadCredentials,
}

impl AuthFailure {
    /// Label for the `reason` of auth-failure metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader => "missing_header",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::StaleTimestamp => "stale_timestamp",
            AuthFailure::BadCredentials => "bad_credentials",
        }
    }
}

/// What a verified request proved about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The decoded HMAC signature, used to refuse replays under a new request id; `None` for
    /// Basic.
    pub signature: Option<[u8; 32]>,
}

/// The request parts authentication looks at.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Host as received (may carry a port); ignored when the verifier pins a public host.
    pub host: &'a str,
    /// Raw path plus `?query` when present, exactly as received.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The configured authentication method of the webhook.
#[derive(Clone, Debug)]
pub enum Authenticator {
    Hmac(HmacVerifier),
    Basic(BasicVerifier),
}

impl Authenticator {
    /// What can be checked before the body is read (all of Basic; HMAC's key and timestamp).
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        match self {
            Authenticator::Hmac(v) => v.precheck(headers),
            Authenticator::Basic(v) => v.verify(headers).map(drop),
        }
    }

    /// Whether [`Self::precheck`] already proved everything (Basic needs no body).
    pub fn needs_body(&self) -> bool {
        matches!(self, Authenticator::Hmac(_))
    }

    pub fn verify(&self, request: &RequestParts<'_>) -> Result<Verified, AuthFailure> {
        match self {
            Authenticator::Hmac(v) => v.verify(request),
            Authenticator::Basic(v) => v.verify(request.headers),
        }
    }
}

/// Constant-time equality of two byte strings of any length (compares SHA-256 digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.as_slice().ct_eq(db.as_slice()).into()
}
