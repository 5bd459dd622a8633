//! The request pipeline, cheapest checks first: request id and credentials from the headers
//! alone, then the declared size against what could ever be stored, then the body (within its
//! deadline and the shared budget), the signature over it, the route, and one publish.
//!
//! Only [`Intake::accept`] publishes, and only after the credentials were verified, so an
//! unauthenticated body never reaches JetStream.

use axum::extract::Request;
use axum::http::{header, request::Parts};
use bytes::Bytes;
use shared::auth::{Authenticator, RequestParts, Verified};
use shared::contract::route::{body_message_id, signature_digest};
use shared::contract::{headers, subject, Envelope, RouteFields};

use crate::body::BodyPolicy;
use crate::error::{BadRequest, IngressError};
use crate::publish::{Publisher, Stored};
use crate::telemetry::HotMetrics;

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
        let request_id = headers::request_id(&parts.headers).map_err(BadRequest::from)?;
        self.auth
            .precheck(&parts.headers)
            .map_err(IngressError::Unauthorized)?;
        let declared = self.body.declared_length(&parts.headers)?;
        let _reservation = self.body.reserve(declared)?;
        let body = self.body.read(body).await?;
        let verified = self.verify(&parts, &body)?;
        let route = self.route(&body, request_id)?;
        let envelope = stored_envelope(&route, request_id, received_at_ms, &verified);
        let stored = self
            .publisher
            .publish(route.subject, &envelope, body)
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
        let fields: RouteFields = serde_json::from_slice(body).map_err(BadRequest::NotAnEvent)?;
        let kind = match fields.kind.as_deref() {
            None => return Err(BadRequest::NoType.into()),
            Some("") => return Err(BadRequest::EmptyType.into()),
            Some(kind) => kind,
        };
        let partition = fields.conversation_key().partition(self.partitions);
        Ok(Route {
            subject: subject::event(kind, partition),
            message_id: request_id.map_or_else(|| body_message_id(body), str::to_owned),
            kind_label: HotMetrics::kind_label(kind),
        })
    }
}

/// The headers stored with an event (the contract with the worker, [`Envelope`]).
fn stored_envelope(
    route: &Route,
    request_id: Option<&str>,
    received_at_ms: i64,
    verified: &Verified,
) -> Envelope {
    Envelope {
        message_id: Some(route.message_id.clone()),
        request_id: request_id.map(str::to_owned),
        received_at_ms: Some(received_at_ms),
        signature_digest: verified.signature.as_ref().map(|s| signature_digest(s)),
        ..Envelope::default()
    }
}
