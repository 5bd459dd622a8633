//! HTTP Basic authentication of webhook calls (`docs/vendors/khoros-webhooks.md`).

use base64::Engine;
use http::HeaderMap;

use super::{constant_time_eq, AuthFailure, Verified};
use crate::Secret;

/// Accepts exactly one identity and password.
#[derive(Clone, Debug)]
pub struct BasicVerifier {
    /// The full expected header value, `Basic base64(user:password)`, kept secret.
    expected: Secret,
}

impl BasicVerifier {
    pub fn new(user: &str, password: &Secret) -> Self {
        Self {
            expected: Secret::new(header_value(user, password.expose())),
        }
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<Verified, AuthFailure> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthFailure::MissingHeader)?
            .as_bytes();
        if presented.len() < 6 || !presented[..6].eq_ignore_ascii_case(b"basic ") {
            return Err(AuthFailure::Malformed);
        }
        // Compare the credentials part only; the scheme is case-insensitive.
        let expected = &self.expected.expose().as_bytes()[6..];
        if constant_time_eq(presented[6..].trim_ascii(), expected) {
            Ok(Verified { signature: None })
        } else {
            Err(AuthFailure::BadCredentials)
        }
    }
}

/// `Basic base64(user:password)`, as Khoros sends it.
pub fn header_value(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn spec_vector_passes() {
        assert_eq!(
            header_value("khoros-cb", "cb-pass-123"),
            "Basic a2hvcm9zLWNiOmNiLXBhc3MtMTIz"
        );
        let v = BasicVerifier::new("khoros-cb", &Secret::new("cb-pass-123"));
        assert!(v
            .verify(&headers("Basic a2hvcm9zLWNiOmNiLXBhc3MtMTIz"))
            .is_ok());
        assert!(v
            .verify(&headers("basic a2hvcm9zLWNiOmNiLXBhc3MtMTIz"))
            .is_ok());
    }

    #[test]
    fn wrong_or_missing_credentials_fail() {
        let v = BasicVerifier::new("khoros-cb", &Secret::new("cb-pass-123"));
        assert_eq!(
            v.verify(&headers(&header_value("khoros-cb", "nope"))),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(
            v.verify(&headers("Bearer abc")),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(v.verify(&HeaderMap::new()), Err(AuthFailure::MissingHeader));
    }
}
