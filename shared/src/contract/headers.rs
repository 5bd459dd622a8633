//! Header names: the one Khoros sends with every webhook, and those the ingress and the worker
//! put on what they store.

use http::{HeaderMap, HeaderValue};

/// Khoros' id of a webhook request (`docs/vendors/khoros-webhooks.md`, "Request id"); a retry
/// of the same event carries the same one. HTTP header names are case-insensitive.
pub const KHOROS_REQUEST_ID: &str = "x-amzn-requestid";

/// Longest `x-amzn-RequestId` accepted (Khoros sends UUIDs or 32 hex characters).
pub const MAX_REQUEST_ID_LEN: usize = 256;

/// JetStream's dedup id: `x-amzn-RequestId`, or one derived from the body.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The Khoros request id as received (absent when Khoros sent none).
pub const REQUEST_ID: &str = "Bridge-Request-Id";
/// When the ingress received the request, epoch milliseconds.
pub const RECEIVED_AT: &str = "Bridge-Received-At";
/// The original event id of a replayed dead letter (its `Nats-Msg-Id` must differ).
pub const EVENT_ID: &str = "Bridge-Event-Id";
/// Hex SHA-256 of the request's HMAC signature (absent for Basic): a signed request
/// replayed under a new request id carries the same digest, and the worker drops it.
pub const SIGNATURE_DIGEST: &str = "Bridge-Signature-Digest";
/// On a worker's own turn-deadline marker in `kore.replies.<partition>`: when the Kore.ai
/// turn it guards expires, epoch milliseconds.
pub const TURN_DEADLINE: &str = "Bridge-Turn-Deadline";

/// Why an `x-amzn-RequestId` cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    #[error("x-amzn-RequestId must be visible ASCII")]
    NotAscii,
    #[error("x-amzn-RequestId longer than {MAX_REQUEST_ID_LEN} characters")]
    TooLong,
}

/// The request's `x-amzn-RequestId`, trimmed; `None` when absent or blank.
pub fn request_id(headers: &HeaderMap) -> Result<Option<&str>, RequestIdError> {
    headers
        .get(KHOROS_REQUEST_ID)
        .map_or(Ok(None), request_id_value)
}

/// One `x-amzn-RequestId` value, by the rules of [`request_id`].
pub fn request_id_value(value: &HeaderValue) -> Result<Option<&str>, RequestIdError> {
    let id = value.to_str().map_err(|_| RequestIdError::NotAscii)?.trim();
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err(RequestIdError::TooLong);
    }
    Ok((!id.is_empty()).then_some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_once_for_everyone() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers), Ok(None));
        headers.insert("X-Amzn-RequestId", HeaderValue::from_static(" abc "));
        assert_eq!(request_id(&headers), Ok(Some("abc")));
        headers.insert(KHOROS_REQUEST_ID, HeaderValue::from_static("  "));
        assert_eq!(request_id(&headers), Ok(None));
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        headers.insert(KHOROS_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(request_id(&headers), Err(RequestIdError::TooLong));
        headers.insert(
            KHOROS_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(request_id(&headers), Err(RequestIdError::NotAscii));
    }
}
