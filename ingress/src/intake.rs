//! The request pipeline, cheapest checks first: request id and credentials from the headers
//! alone, then the declared size against what could ever be stored, then the body (within its
//! deadline and the shared budget), the signature over it, the route, and one publish.
//!
//! Only [`Intake::accept`] publishes, and only after the credentials were verified, so an
//! unauthenticated body never reaches JetStream.

use async_nats::HeaderMap as NatsHeaders;
use axum::extract::Request;
use axum::http::{header, request::Parts, HeaderMap};
use bytes::Bytes;
use shared::auth::{Authenticator, RequestParts, Verified};
use shared::routing::{self, headers, RouteFields};

use crate::body::BodyPolicy;
use crate::error::IngressError;
use crate::publish::{Publisher, Stored};
use crate::telemetry::HotMetrics;

/// Longest `x-amzn-RequestId` accepted (Khoros sends UUIDs or 32 hex chars).
const MAX_REQUEST_ID_LEN: usize = 256;

/// `x-amzn-RequestId`, validated; `None` when absent or empty.
pub fn request_id(headers: &HeaderMap) -> Result<Option<&str>, IngressError> {
    let Some(value) = headers.get("x-amzn-requestid") else {
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
    Ok((!id.is_empty()).then_some(id))
}

/// Where an authenticated event goes.
pub struct Route {
    pub subject: String,
    /// `Nats-Msg-Id`: the request id, or a digest of the body when Khoros sent none.
    pub message_id: String,
    /// Metrics label of the event `type` (unknown types share one).
    pub kind_label: &'static str,
}

/// An event that JetStream now holds.
pub struct Accepted {
    pub message_id: String,
    pub stored: Stored,
}

/// The pipeline with its configuration.
pub struct Intake {
    auth: Authenticator,
    partitions: u32,
    body: BodyPolicy,
    publisher: Publisher,
    metrics: HotMetrics,
}

impl Intake {
    pub fn new(
        auth: Authenticator,
        partitions: u32,
        body: BodyPolicy,
        publisher: Publisher,
        metrics: HotMetrics,
    ) -> Self {
        Self {
            auth,
            partitions,
            body,
            publisher,
            metrics,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn body_policy(&self) -> &BodyPolicy {
        &self.body
    }

    /// Authenticates, routes and stores one webhook request.
    pub async fn accept(
        &self,
        request: Request,
        received_at_ms: i64,
    ) -> Result<Accepted, IngressError> {
        let (parts, body) = request.into_parts();
        let request_id = request_id(&parts.headers)?;
        self.auth
            .precheck(&parts.headers)
            .map_err(IngressError::Unauthorized)?;
        let declared = self.body.declared_length(&parts.headers)?;
        let _reservation = self.body.reserve(declared)?;
        let body = self.body.read(body).await?;
        let verified = self.verify(&parts, &body)?;
        let route = self.route(&body, request_id)?;
        let nats_headers = stored_headers(&route, request_id, received_at_ms, &verified);
        let stored = self
            .publisher
            .publish(route.subject, nats_headers, body)
            .await?;
        if stored.duplicate {
            self.metrics.duplicates.increment(1);
        } else {
            self.metrics.stored(route.kind_label).increment(1);
        }
        Ok(Accepted {
            message_id: route.message_id,
            stored,
        })
    }

    /// The full check (HMAC over the body); Basic was settled by the precheck.
    fn verify(&self, parts: &Parts, body: &Bytes) -> Result<Verified, IngressError> {
        if !self.auth.needs_body() {
            return Ok(Verified { signature: None });
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        self.auth
            .verify(&RequestParts {
                method: parts.method.as_str(),
                host,
                path_and_query,
                headers: &parts.headers,
                body,
            })
            .map_err(IngressError::Unauthorized)
    }

    /// Reads the event type and conversation key; the rest of the body stays unparsed.
    pub fn route(&self, body: &[u8], request_id: Option<&str>) -> Result<Route, IngressError> {
        let fields: RouteFields = serde_json::from_slice(body).map_err(|e| {
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
        Ok(Route {
            subject: routing::event_subject(&fields.kind, partition),
            message_id: request_id.map_or_else(|| routing::body_message_id(body), str::to_owned),
            kind_label: HotMetrics::kind_label(&fields.kind),
        })
    }
}

/// The headers stored with an event (the contract with the worker, `shared::routing::headers`).
fn stored_headers(
    route: &Route,
    request_id: Option<&str>,
    received_at_ms: i64,
    verified: &Verified,
) -> NatsHeaders {
    let mut nats = NatsHeaders::new();
    nats.insert(headers::MSG_ID, route.message_id.as_str());
    if let Some(id) = request_id {
        nats.insert(headers::REQUEST_ID, id);
    }
    nats.insert(headers::RECEIVED_AT, received_at_ms.to_string().as_str());
    if let Some(signature) = &verified.signature {
        nats.insert(
            headers::SIGNATURE_DIGEST,
            routing::signature_digest(signature).as_str(),
        );
    }
    nats
}
