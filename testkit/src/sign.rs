//! Builds webhook requests the way Khoros sends them (`docs/vendors/khoros-webhooks.md`,
//! "Authentication"), for tests and tools.

use http::HeaderMap;
use shared::auth::hmac::{SignatureHeaders, HEADER_API_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use shared::auth::{Clock, SystemClock};
use shared::Secret;

/// How a sender authenticates.
#[derive(Clone, Debug)]
pub enum Credentials {
    Hmac { api_key: String, secret: Secret },
    Basic { user: String, password: Secret },
}

/// Signs and sends webhook events to one URL.
#[derive(Clone, Debug)]
pub struct Signer {
    pub url: String,
    pub credentials: Credentials,
}

impl Signer {
    /// The auth headers for `body` at time `ts_ms` (with optional `x-smm-*` headers already in `extra`).
    pub fn headers_at(&self, body: &[u8], ts_ms: i64, extra: &HeaderMap) -> HeaderMap {
        let mut headers = extra.clone();
        match &self.credentials {
            Credentials::Hmac { api_key, secret } => {
                let sig =
                    SignatureHeaders::sign(api_key, secret, ts_ms, "POST", &self.url, body, extra);
                headers.insert(
                    HEADER_API_KEY,
                    sig.api_key.parse().expect("api key is a header value"),
                );
                headers.insert(HEADER_TIMESTAMP, sig.timestamp.parse().expect("digits"));
                headers.insert(HEADER_SIGNATURE, sig.signature.parse().expect("base64"));
            }
            Credentials::Basic { user, password } => {
                let value = shared::auth::basic::header_value(user, password.expose());
                headers.insert(http::header::AUTHORIZATION, value.parse().expect("base64"));
            }
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().expect("static"),
        );
        headers
    }

    /// The auth headers for `body` signed now.
    pub fn headers(&self, body: &[u8]) -> HeaderMap {
        self.headers_at(body, SystemClock.now_ms(), &HeaderMap::new())
    }

    /// A reqwest request with the body and auth headers, plus `x-amzn-RequestId` when given.
    pub fn request(
        &self,
        client: &reqwest::Client,
        body: &[u8],
        request_id: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.headers(body);
        if let Some(id) = request_id {
            headers.insert(
                "x-amzn-RequestId",
                id.parse().expect("request id is a header value"),
            );
        }
        client.post(&self.url).headers(headers).body(body.to_vec())
    }
}
