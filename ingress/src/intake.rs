//! The request pipeline: raw request -> [`Authenticated`] -> [`Routed`] -> stored.
//!
//! The types only move forward, so an unauthenticated body cannot reach `publish`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap as NatsHeaders;
use axum::http::HeaderMap;
use bytes::Bytes;
use shared::auth::{AuthFailure, Authenticator, RequestParts, Verified};
use shared::routing::{self, headers, RouteFields};

use crate::error::IngressError;
use crate::publish::{Publisher, Stored};
use crate::replay::{ReplayGuard, Seen};
use crate::telemetry;

/// Longest `x-amzn-RequestId` accepted (Khoros sends UUIDs or 32 hex chars).
const MAX_REQUEST_ID_LEN: usize = 256;

/// A webhook request as received, before anything was checked.
pub struct RawRequest {
    pub method: String,
    pub host: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at_ms: i64,
}

impl RawRequest {
    /// `x-amzn-RequestId`, validated; `None` when absent or empty.
    fn request_id(&self) -> Result<Option<String>, IngressError> {
        let Some(value) = self.headers.get("x-amzn-requestid") else {
            return Ok(None);
        };
        let id = value
            .to_str()
            .map_err(|_| IngressError::BadRequest("x-amzn-RequestId must be visible ASCII".into()))?
            .trim();
        if id.len() > MAX_REQUEST_ID_LEN {
            return Err(IngressError::BadRequest(format!(
                "x-amzn-RequestId longer than {MAX_REQUEST_ID_LEN} characters"
            )));
        }
        Ok((!id.is_empty()).then(|| id.to_string()))
    }
}

/// A request whose credentials were checked.
pub struct Authenticated {
    request: RawRequest,
    proof: Verified,
}

/// An authenticated request with its subject and dedup id.
pub struct Routed {
    request: RawRequest,
    proof: Verified,
    pub subject: String,
    pub message_id: String,
    pub request_id: Option<String>,
    pub event_type: String,
    pub operation: Option<String>,
    pub partition: u32,
}

/// The NATS side of the ingress, available once the topology exists.
#[derive(Clone)]
pub struct Backend {
    pub publisher: Publisher,
    pub replay: ReplayGuard,
}

/// The pipeline with its configuration.
#[derive(Clone)]
pub struct Intake {
    auth: Authenticator,
    partitions: u32,
    backend: Arc<OnceLock<Backend>>,
    /// Deadline for everything NATS does for one request (replay guard and PubAck): while
    /// NATS is away the client buffers requests, so only a deadline turns that into a 503.
    store_timeout: Duration,
}

/// What the caller is told about an accepted event.
#[derive(Debug)]
pub struct Accepted {
    pub message_id: String,
    pub stored: Stored,
}

impl Intake {
    pub fn new(
        auth: Authenticator,
        partitions: u32,
        backend: Arc<OnceLock<Backend>>,
        store_timeout: Duration,
    ) -> Self {
        Self {
            auth,
            partitions,
            backend,
            store_timeout,
        }
    }

    pub fn authenticate(&self, request: RawRequest) -> Result<Authenticated, IngressError> {
        let parts = RequestParts {
            method: &request.method,
            host: &request.host,
            path_and_query: &request.path_and_query,
            headers: &request.headers,
            body: &request.body,
        };
        let proof = self
            .auth
            .verify(&parts)
            .map_err(IngressError::Unauthorized)?;
        Ok(Authenticated { request, proof })
    }

    pub fn route(&self, auth: Authenticated) -> Result<Routed, IngressError> {
        let Authenticated { request, proof } = auth;
        let request_id = request.request_id()?;
        let fields: RouteFields = serde_json::from_slice(&request.body).map_err(|e| {
            IngressError::BadRequest(
                if e.is_data() && e.to_string().contains("missing field `type`") {
                    "event has no `type`".to_string()
                } else {
                    format!("body is not a JSON event: {e}")
                },
            )
        })?;
        if fields.kind.is_empty() {
            return Err(IngressError::BadRequest("event has an empty `type`".into()));
        }
        let partition = fields.conversation_key().partition(self.partitions);
        let message_id = request_id
            .clone()
            .unwrap_or_else(|| routing::body_message_id(&request.body));
        Ok(Routed {
            subject: routing::event_subject(&fields.kind, partition),
            message_id,
            request_id,
            event_type: fields.kind,
            operation: fields.operation,
            partition,
            request,
            proof,
        })
    }

    /// Records the signature and publishes, within the deadline; 503 otherwise.
    pub async fn store(&self, routed: Routed) -> Result<Accepted, IngressError> {
        tokio::time::timeout(self.store_timeout, self.store_unbounded(routed))
            .await
            .unwrap_or_else(|_| {
                Err(IngressError::Unavailable(format!(
                    "event not stored within {:?}",
                    self.store_timeout
                )))
            })
    }

    async fn store_unbounded(&self, routed: Routed) -> Result<Accepted, IngressError> {
        let backend = self
            .backend
            .get()
            .ok_or_else(|| IngressError::Unavailable("JetStream topology not ready yet".into()))?;
        if let Some(signature) = &routed.proof.signature {
            if backend.replay.record(signature, &routed.message_id).await? == Seen::OtherRequest {
                return Err(IngressError::Unauthorized(AuthFailure::Replayed));
            }
        }
        let mut nats_headers = NatsHeaders::new();
        nats_headers.insert(headers::MSG_ID, routed.message_id.as_str());
        if let Some(id) = &routed.request_id {
            nats_headers.insert(headers::REQUEST_ID, id.as_str());
        }
        nats_headers.insert(
            headers::RECEIVED_AT,
            routed.request.received_at_ms.to_string().as_str(),
        );
        nats_headers.insert(
            headers::EVENT_TYPE,
            routing::type_token(&routed.event_type).as_str(),
        );
        if let Some(op) = &routed.operation {
            nats_headers.insert(headers::OPERATION, routing::type_token(op).as_str());
        }
        nats_headers.insert(headers::PARTITION, routed.partition.to_string().as_str());
        let stored = backend
            .publisher
            .publish(
                routed.subject.clone(),
                nats_headers,
                routed.request.body.clone(),
            )
            .await?;
        if stored.duplicate {
            metrics::counter!(telemetry::DUPLICATES).increment(1);
        }
        metrics::counter!(telemetry::EVENTS_STORED, "type" => type_label(&routed.event_type))
            .increment(1);
        Ok(Accepted {
            message_id: routed.message_id,
            stored,
        })
    }
}

/// Metric label for an event type; unknown types share one label to bound cardinality.
fn type_label(kind: &str) -> &'static str {
    match kind {
        "message" => "message",
        "update" => "update",
        "control" => "control",
        _ => "other",
    }
}
