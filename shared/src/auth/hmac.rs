//! Khoros HMAC signature v2 (`docs/vendors/khoros-webhooks.md`): signing for senders, verification for the ingress.
//!
//! Fingerprint = `ts|METHOD|host/path?query|raw body|sorted x-smm-* headers`, signed with
//! HMAC-SHA256 and sent as standard base64 in `x-auth-signature-v2`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use super::{AuthFailure, Clock, RequestParts, SystemClock, Verified};
use crate::Secret;

pub const HEADER_API_KEY: &str = "x-auth-apikey";
pub const HEADER_TIMESTAMP: &str = "x-auth-timestamp";
pub const HEADER_SIGNATURE: &str = "x-auth-signature-v2";

/// The api keys accepted at once, so a secret can be rotated without downtime.
#[derive(Clone, Debug, Default)]
pub struct HmacKeys(HashMap<String, Secret>);

impl HmacKeys {
    /// Parses `key=secret,key2=secret2` (a secret may contain `=`, not `,`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, secret) = pair
                .split_once('=')
                .ok_or_else(|| "each entry must be key=secret".to_string())?;
            let (key, secret) = (key.trim(), secret.trim());
            if key.is_empty() || secret.is_empty() {
                return Err("api key and secret must not be empty".into());
            }
            keys.insert(key.to_string(), Secret::new(secret));
        }
        if keys.is_empty() {
            return Err("at least one key=secret is required".into());
        }
        Ok(Self(keys))
    }

    pub fn single(key: &str, secret: &Secret) -> Self {
        Self(HashMap::from([(key.to_string(), secret.clone())]))
    }

    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.0.get(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Verifies signature v2 against a set of keys, a clock and an allowed skew.
#[derive(Clone, Debug)]
pub struct HmacVerifier {
    keys: HmacKeys,
    max_skew: Duration,
    /// The public callback host to sign with, when the listener sees an internal Host.
    pinned_host: Option<String>,
    clock: Arc<dyn Clock>,
}

impl HmacVerifier {
    pub fn new(keys: HmacKeys, max_skew: Duration, pinned_host: Option<String>) -> Self {
        Self {
            keys,
            max_skew,
            pinned_host: pinned_host.map(|h| host_without_port(&h)),
            clock: Arc::new(SystemClock),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The checks that need no body: the three headers are there, the key is known and the
    /// timestamp is inside the skew. The ingress runs them before reading a body, so a request
    /// that cannot pass costs no upload.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let api_key = header_str(headers, HEADER_API_KEY)?;
        let timestamp = header_str(headers, HEADER_TIMESTAMP)?;
        header_str(headers, HEADER_SIGNATURE)?;
        self.keys.get(api_key).ok_or(AuthFailure::UnknownKey)?;
        self.check_timestamp(timestamp)
    }

    fn check_timestamp(&self, timestamp: &str) -> Result<(), AuthFailure> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| AuthFailure::Malformed)?;
        let skew = self.clock.now_ms().abs_diff(ts);
        if u128::from(skew) > self.max_skew.as_millis() {
            return Err(AuthFailure::StaleTimestamp);
        }
        Ok(())
    }

    /// Khoros' order: key, then signature, then timestamp (see `docs/vendors/khoros-webhooks.md`).
    pub fn verify(&self, request: &RequestParts<'_>) -> Result<Verified, AuthFailure> {
        let headers = request.headers;
        let api_key = header_str(headers, HEADER_API_KEY)?;
        let timestamp = header_str(headers, HEADER_TIMESTAMP)?;
        let presented = header_str(headers, HEADER_SIGNATURE)?;
        let secret = self.keys.get(api_key).ok_or(AuthFailure::UnknownKey)?;

        let received_host;
        let host = match &self.pinned_host {
            Some(pinned) => pinned.as_str(),
            None => {
                received_host = host_without_port(request.host);
                received_host.as_str()
            }
        };
        // The fingerprint is fed to the MAC piece by piece (no copy of the body), and the
        // presented signature is decoded and compared in constant time by the MAC itself.
        let mut mac = new_mac(secret);
        mac.update(timestamp.as_bytes());
        mac.update(b"|");
        for byte in request.method.bytes() {
            mac.update(&[byte.to_ascii_uppercase()]);
        }
        mac.update(b"|");
        mac.update(host.as_bytes());
        mac.update(request.path_and_query.as_bytes());
        mac.update(b"|");
        mac.update(request.body);
        mac.update(b"|");
        if headers
            .keys()
            .any(|name| name.as_str().starts_with("x-smm-"))
        {
            mac.update(smm_headers(headers).as_bytes());
        }
        let mut decoded = [0u8; 32];
        let matches = base64::engine::general_purpose::STANDARD
            .decode_slice(presented.trim(), &mut decoded)
            .is_ok_and(|n| n == decoded.len());
        if !matches || mac.verify_slice(&decoded).is_err() {
            return Err(AuthFailure::BadSignature);
        }
        self.check_timestamp(timestamp)?;
        Ok(Verified {
            signature: Some(decoded),
        })
    }
}

fn new_mac(secret: &Secret) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length")
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, AuthFailure> {
    headers
        .get(name)
        .ok_or(AuthFailure::MissingHeader)?
        .to_str()
        .map_err(|_| AuthFailure::Malformed)
}

/// Host name without scheme or port, lower-cased (`Bridge.Example.com:8443` -> `bridge.example.com`).
pub fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let host = host.split_once("://").map_or(host, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    let bare = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    bare.to_ascii_lowercase()
}

/// `:name:value` for every `x-smm-*` value (comma-split, trimmed), sorted and concatenated.
pub fn smm_headers(headers: &HeaderMap) -> String {
    let mut parts: Vec<String> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-smm-"))
        .flat_map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            value
                .split(',')
                .map(|v| format!(":{}:{}", name.as_str(), v.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    parts.sort();
    parts.concat()
}

/// The bytes that get signed. The body is used exactly as received.
pub fn fingerprint(
    timestamp: &str,
    method: &str,
    host: &str,
    path_and_query: &str,
    body: &[u8],
    smm: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + host.len() + path_and_query.len() + 64);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b'|');
    out.extend_from_slice(method.to_ascii_uppercase().as_bytes());
    out.push(b'|');
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(path_and_query.as_bytes());
    out.push(b'|');
    out.extend_from_slice(body);
    out.push(b'|');
    out.extend_from_slice(smm.as_bytes());
    out
}

/// base64(HMAC-SHA256(secret, fingerprint)).
pub fn signature(secret: &Secret, fingerprint: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(fingerprint);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The three headers a sender adds (the simulator, the load generator, operators' tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub api_key: String,
    pub timestamp: String,
    pub signature: String,
}

impl SignatureHeaders {
    /// Signs a request to `url` (`http(s)://host[:port]/path[?query]`) with the given body.
    pub fn sign(
        api_key: &str,
        secret: &Secret,
        timestamp_ms: i64,
        method: &str,
        url: &str,
        body: &[u8],
        smm: &HeaderMap,
    ) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let timestamp = timestamp_ms.to_string();
        let fp = fingerprint(
            &timestamp,
            method,
            &host_without_port(authority),
            path,
            body,
            &smm_headers(smm),
        );
        Self {
            api_key: api_key.to_string(),
            timestamp,
            signature: signature(secret, &fp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ManualClock;

    const SECRET: &str = "k7Qp-test-secret-9f2e";
    const KEY: &str = "bridge-hmac-key";
    const TS: i64 = 1_700_000_000_000;
    const BODY_A: &str = r#"{"type":"message","text":"Hi there","coordinate":{"companyKey":"acme","networkKey":"brandmessenger","externalId":"ext-1","messageId":"m-1","botId":"kore-bridge","scope":"PRIVATE"},"author":{"id":"user-42","fullName":"Test User"},"owner":{"type":"BOT","appId":"kore-bridge"}}"#;
    const SIG_A: &str = "voqv1mKnStfAVOX/Q6IS/7sFIRhrBcnRWp8PhxTIQiA=";
    const SIG_B: &str = "Boq3TrmfMMQVfwL6gfF3q6IPFyhi8E/W8sGGYEnGmzc=";
    const SIG_C: &str = "e+Sz4uXT0T9ilJM+oOHKAHnclO6M6sBwTWMtFxHB3n8=";

    fn verifier(now: i64) -> HmacVerifier {
        HmacVerifier::new(
            HmacKeys::parse(&format!("old-key=old-secret,{KEY}={SECRET}")).unwrap(),
            Duration::from_secs(60),
            None,
        )
        .with_clock(Arc::new(ManualClock::at(now)))
    }

    fn signed_headers(sig: &str, ts: i64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("X-Auth-ApiKey", KEY.parse().unwrap());
        h.insert("X-Auth-Timestamp", ts.to_string().parse().unwrap());
        h.insert("X-Auth-Signature-V2", sig.parse().unwrap());
        h
    }

    fn parts<'a>(headers: &'a HeaderMap, path: &'a str, body: &'a str) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            host: "Bridge.Example.com:8443",
            path_and_query: path,
            headers,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn vector_a_fingerprint_and_signature() {
        assert_eq!(BODY_A.len(), 274);
        let fp = fingerprint(
            "1700000000000",
            "POST",
            "bridge.example.com",
            "/khoros/events?tenant=acme",
            BODY_A.as_bytes(),
            "",
        );
        assert!(fp.ends_with(b"|"));
        assert_eq!(signature(&Secret::new(SECRET), &fp), SIG_A);
        let h = signed_headers(SIG_A, TS);
        let ok = verifier(TS + 59_000).verify(&parts(&h, "/khoros/events?tenant=acme", BODY_A));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(SIG_A)
            .unwrap();
        assert_eq!(ok.unwrap().signature.map(Vec::from), Some(decoded));
    }

    #[test]
    fn vector_b_with_smm_headers() {
        let mut h = signed_headers(SIG_B, TS);
        h.append("x-smm-example", "abc".parse().unwrap());
        h.append("x-smm-example", "def".parse().unwrap());
        h.append("x-smm-otherexample", "foo".parse().unwrap());
        assert_eq!(
            smm_headers(&h),
            ":x-smm-example:abc:x-smm-example:def:x-smm-otherexample:foo"
        );
        assert!(verifier(TS)
            .verify(&parts(&h, "/khoros/events?tenant=acme", BODY_A))
            .is_ok());
        // One comma-joined header value is the same as two header lines.
        let mut joined = signed_headers(SIG_B, TS);
        joined.insert("x-smm-otherexample", "foo".parse().unwrap());
        joined.insert("x-smm-example", "def, abc".parse().unwrap());
        assert!(verifier(TS)
            .verify(&parts(&joined, "/khoros/events?tenant=acme", BODY_A))
            .is_ok());
    }

    #[test]
    fn vector_c_empty_body_no_query() {
        let fp = fingerprint(
            "1700000000000",
            "POST",
            "bridge.example.com",
            "/khoros/events",
            b"",
            "",
        );
        assert_eq!(fp, b"1700000000000|POST|bridge.example.com/khoros/events||");
        let h = signed_headers(SIG_C, TS);
        assert!(verifier(TS - 60_000)
            .verify(&parts(&h, "/khoros/events", ""))
            .is_ok());
    }

    #[test]
    fn sender_signing_matches_vector_a() {
        let s = SignatureHeaders::sign(
            KEY,
            &Secret::new(SECRET),
            TS,
            "post",
            "https://bridge.example.com:8443/khoros/events?tenant=acme",
            BODY_A.as_bytes(),
            &HeaderMap::new(),
        );
        assert_eq!(s.signature, SIG_A);
        assert_eq!(s.timestamp, "1700000000000");
    }

    #[test]
    fn each_failure_has_its_reason() {
        let v = verifier(TS);
        let path = "/khoros/events?tenant=acme";
        let h = signed_headers(SIG_A, TS);
        assert_eq!(
            v.verify(&parts(&h, path, &BODY_A.replace("Hi", "Ho"))),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            v.verify(&parts(&h, "/khoros/events", BODY_A)),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            v.verify(&parts(&signed_headers(&SIG_A[..20], TS), path, BODY_A)),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            verifier(TS + 60_001).verify(&parts(&h, path, BODY_A)),
            Err(AuthFailure::StaleTimestamp)
        );
        assert_eq!(
            verifier(TS - 60_001).verify(&parts(&h, path, BODY_A)),
            Err(AuthFailure::StaleTimestamp)
        );
        let mut unknown = h.clone();
        unknown.insert("x-auth-apikey", "nobody".parse().unwrap());
        assert_eq!(
            v.verify(&parts(&unknown, path, BODY_A)),
            Err(AuthFailure::UnknownKey)
        );
        let mut missing = h.clone();
        missing.remove("x-auth-signature-v2");
        assert_eq!(
            v.verify(&parts(&missing, path, BODY_A)),
            Err(AuthFailure::MissingHeader)
        );
    }

    #[test]
    fn pinned_host_replaces_the_internal_one() {
        let v = HmacVerifier::new(
            HmacKeys::single(KEY, &Secret::new(SECRET)),
            Duration::from_secs(60),
            Some("https://Bridge.Example.com".into()),
        )
        .with_clock(Arc::new(ManualClock::at(TS)));
        let h = signed_headers(SIG_A, TS);
        let mut p = parts(&h, "/khoros/events?tenant=acme", BODY_A);
        p.host = "ingress.svc.cluster.local:8080";
        assert!(v.verify(&p).is_ok());
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(
            host_without_port("Bridge.Example.com:8443"),
            "bridge.example.com"
        );
        assert_eq!(
            host_without_port("https://hooks.example.org:8443/in"),
            "hooks.example.org"
        );
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("localhost"), "localhost");
    }

    #[test]
    fn keys_parse_and_reject_garbage() {
        assert_eq!(
            HmacKeys::parse("a=1, b=x=y")
                .unwrap()
                .get("b")
                .unwrap()
                .expose(),
            "x=y"
        );
        assert!(HmacKeys::parse("").is_err());
        assert!(HmacKeys::parse("novalue").is_err());
        assert!(HmacKeys::parse("=s").is_err());
    }
}
