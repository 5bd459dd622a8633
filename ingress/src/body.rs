//! Reading a request body: only once the headers passed every check that needs no body, never
//! beyond what could be published, within a deadline, and within a memory budget shared by all
//! requests, so slow or oversized uploads cannot exhaust the ingress.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{BadRequest, IngressError};

/// Bodies up to this size draw on the budget for ordinary events (Khoros events are a few
/// KiB); larger ones on a separate half, so large uploads cannot starve ordinary events.
pub const SMALL_BODY: usize = 64 * 1024;
/// Room left in NATS' `max_payload` for the subject and the headers the ingress adds.
pub const HEADER_ROOM: usize = 4096;
/// The budget is counted in KiB so that any body size fits a semaphore permit count.
const UNIT: usize = 1024;

/// How bodies are read.
#[derive(Clone)]
pub struct BodyPolicy {
    /// `MAX_BODY_BYTES`.
    configured_limit: usize,
    /// The connected server's `max_payload` (0 until known): a larger message could never be
    /// stored, so such a body is refused before it is read.
    max_payload: Arc<AtomicUsize>,
    /// Where `max_payload` comes from (none in unit tests).
    client: Option<async_nats::Client>,
    /// `BODY_READ_TIMEOUT`.
    timeout: Duration,
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// A body's share of the budget, held until the request is answered.
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl BodyPolicy {
    /// `budget_bytes` (`BODY_BUDGET_BYTES`) is split evenly between small and large bodies.
    pub fn new(configured_limit: usize, timeout: Duration, budget_bytes: usize) -> Self {
        let half = (budget_bytes / 2 / UNIT).max(1);
        Self {
            configured_limit,
            max_payload: Arc::default(),
            client: None,
            timeout,
            small: Arc::new(Semaphore::new(half)),
            large: Arc::new(Semaphore::new(half)),
        }
    }

    /// Reads `max_payload` from this client's server until it is known.
    pub fn with_client(mut self, client: async_nats::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Where the server's `max_payload` is kept up to date.
    pub fn max_payload(&self) -> Arc<AtomicUsize> {
        self.max_payload.clone()
    }

    /// The largest body accepted now.
    pub fn limit(&self) -> usize {
        let mut max_payload = self.max_payload.load(Ordering::Relaxed);
        if max_payload == 0 {
            if let Some(client) = &self.client {
                // Not learnt yet (the watcher looks every 50 ms until then): ask the client.
                max_payload = client.server_info().max_payload;
                self.max_payload.store(max_payload, Ordering::Relaxed);
            }
        }
        match max_payload {
            0 => self.configured_limit,
            payload => self
                .configured_limit
                .min(payload.saturating_sub(HEADER_ROOM)),
        }
    }

    /// `Content-Length`, refused at once when it is over the limit or not a number.
    pub fn declared_length(&self, headers: &HeaderMap) -> Result<Option<usize>, IngressError> {
        let Some(value) = headers.get(header::CONTENT_LENGTH) else {
            return Ok(None);
        };
        let length: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(BadRequest::ContentLength)?;
        let limit = self.limit();
        if length > limit as u64 {
            return Err(IngressError::TooLarge { limit });
        }
        Ok(Some(length as usize))
    }

    /// Reserves the body's share of the budget (its declared length, or the limit when it
    /// declared none); 503 when the budget is spent.
    pub fn reserve(&self, declared: Option<usize>) -> Result<Reservation, IngressError> {
        let size = declared.unwrap_or_else(|| self.limit());
        let pool = if size <= SMALL_BODY {
            &self.small
        } else {
            &self.large
        };
        let units = u32::try_from(size.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        pool.clone()
            .try_acquire_many_owned(units)
            .map(Reservation)
            .map_err(|_| IngressError::Busy)
    }

    /// Reads the whole body within the deadline and the limit.
    pub async fn read(&self, body: Body) -> Result<Bytes, IngressError> {
        let limit = self.limit();
        match tokio::time::timeout(self.timeout, axum::body::to_bytes(body, limit)).await {
            Err(_) => Err(IngressError::BodyTimeout(self.timeout)),
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                Err(if too_large {
                    IngressError::TooLarge { limit }
                } else {
                    BadRequest::Unreadable(e).into()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(length: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, length.parse().unwrap());
        h
    }

    #[test]
    fn the_limit_leaves_room_for_headers_within_max_payload() {
        let policy = BodyPolicy::new(1024 * 1024, Duration::from_secs(1), 1 << 20);
        assert_eq!(
            policy.limit(),
            1024 * 1024,
            "unknown max_payload: configured"
        );
        policy.max_payload().store(1024 * 1024, Ordering::Relaxed);
        assert_eq!(policy.limit(), 1024 * 1024 - HEADER_ROOM);
        assert!(matches!(
            policy.declared_length(&headers("1048576")),
            Err(IngressError::TooLarge { .. })
        ));
        assert_eq!(
            policy.declared_length(&headers("2048")).unwrap(),
            Some(2048)
        );
        assert!(matches!(
            policy.declared_length(&headers("lots")),
            Err(IngressError::BadRequest(BadRequest::ContentLength))
        ));
    }

    #[test]
    fn large_bodies_cannot_spend_the_budget_of_small_ones() {
        let policy = BodyPolicy::new(1024 * 1024, Duration::from_secs(1), 4 * 1024 * 1024);
        let held: Vec<_> = (0..2)
            .map(|_| {
                policy
                    .reserve(Some(1024 * 1024))
                    .expect("two 1 MiB fit in 2 MiB")
            })
            .collect();
        assert!(matches!(
            policy.reserve(Some(1024 * 1024)),
            Err(IngressError::Busy)
        ));
        assert!(
            policy.reserve(Some(2_000)).is_ok(),
            "small bodies still pass"
        );
        drop(held);
        assert!(
            policy.reserve(Some(1024 * 1024)).is_ok(),
            "released on drop"
        );
    }
}
