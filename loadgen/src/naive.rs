//! A ceiling: the naive one-write ingress, what anyone would write first. axum on tokio's
//! default multi-thread runtime; for each POST it reads the body, verifies HMAC v2 with the
//! ingress' own verifier ([`shared::auth::HmacVerifier`]), reads the `type` field with
//! serde_json, publishes the raw body once to the events stream with `Nats-Msg-Id` =
//! `x-amzn-RequestId`, awaits the PubAck and answers 202. Nothing else: no replay guard, no
//! conversation partitioning, no routing headers, no metrics, no logs.
//!
//! Run as its own process by `loadgen naive-server`; the events stream must exist.

use std::sync::Arc;

use async_nats::jetstream;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use shared::auth::{HmacKeys, HmacVerifier, RequestParts};
use shared::config::Env;
use shared::contract::{headers, subject};
use shared::topology::TopologyConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::bare;

/// Every event goes to this partition of its type: the naive ingress does not hash
/// conversations (the stream takes any `khoros.events.>` subject).
const PARTITION: u32 = 0;

/// The one field the naive ingress reads.
#[derive(Deserialize)]
struct EventType {
    #[serde(rename = "type")]
    kind: String,
}

struct Naive {
    verifier: HmacVerifier,
    js: jetstream::Context,
}

async fn accept(
    State(naive): State<Arc<Naive>>,
    uri: Uri,
    request_headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = request_headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let parts = RequestParts {
        method: "POST",
        host,
        path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        headers: &request_headers,
        body: &body,
    };
    if naive.verifier.verify(&parts).is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(event) = serde_json::from_slice::<EventType>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(request_id) = request_headers
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert(headers::MSG_ID, request_id);
    let subject = subject::event(&event.kind, PARTITION);
    let stored = match naive
        .js
        .publish_with_headers(subject, nats_headers, body)
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if stored {
        bare::accepted()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

/// Connects to `nats_url` and serves `POST <events_path>` (and `GET /readyz`) until
/// `shutdown`. The allowed clock skew is the ingress' (`HMAC_MAX_SKEW`, default 60 s).
pub async fn serve(
    listener: TcpListener,
    events_path: &str,
    nats_url: &str,
    keys: HmacKeys,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let max_skew = TopologyConfig::from_env(&Env::process())?.max_skew;
    let naive = Arc::new(Naive {
        verifier: HmacVerifier::new(keys, max_skew, None),
        js: jetstream::new(async_nats::connect(nats_url).await?),
    });
    let app = Router::new()
        .route(events_path, post(accept))
        .with_state(naive)
        .merge(bare::readiness());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
