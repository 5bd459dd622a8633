//! The topology keeper: ensures a service's streams and buckets, then keeps checking that they
//! exist and recreates any that was deleted, and [`Readiness`], what `/readyz` reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Resource, Topology, TopologyError};

/// Counter, label `resource`: streams or buckets found missing at runtime and recreated.
pub const RECREATED: &str = "topology_recreated_total";

/// Shortest pause between two checks, so a burst of nudges (every failed publish nudges)
/// costs one check, not one per request.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Whether everything a service needs exists, per resource; shared by the keeper (which
/// writes it) and `/readyz` and the request paths (which read it).
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    resources: Vec<Resource>,
    /// One flag per resource, in `resources` order: seen to exist at the last check.
    present: Vec<AtomicBool>,
    /// Set by [`Readiness::nudge`]: something failed in a way a missing stream explains.
    nudge: Notify,
    /// The NATS connection, for its state.
    client: std::sync::OnceLock<async_nats::Client>,
    /// Set once the start-up ensure succeeded: services open their buckets after it.
    ensured: tokio::sync::watch::Sender<bool>,
}

/// What `/readyz` answers, the same shape in every service.
#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    pub nats_connected: bool,
    /// Stream or bucket name -> seen to exist at the last check.
    pub resources: BTreeMap<&'static str, bool>,
}

impl Readiness {
    /// Readiness of `resources`, none seen yet.
    pub fn new(resources: &[Resource]) -> Self {
        Self {
            inner: Arc::new(Inner {
                resources: resources.to_vec(),
                present: resources.iter().map(|_| AtomicBool::new(false)).collect(),
                nudge: Notify::new(),
                client: std::sync::OnceLock::new(),
                ensured: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// True when NATS is connected and every resource existed at the last check.
    pub fn is_ready(&self) -> bool {
        self.nats_connected() && self.all_present()
    }

    fn all_present(&self) -> bool {
        self.inner.present.iter().all(|p| p.load(Ordering::Relaxed))
    }

    fn nats_connected(&self) -> bool {
        self.inner
            .client
            .get()
            .is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Waits until the keeper has created (or updated) every resource once.
    pub async fn ensured(&self) {
        let mut ensured = self.inner.ensured.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = ensured.wait_for(|done| *done).await;
    }

    /// Asks the keeper to check now (a publish found no stream, a bucket read failed).
    pub fn nudge(&self) {
        self.inner.nudge.notify_one();
    }

    pub fn report(&self) -> ReadyReport {
        ReadyReport {
            ready: self.is_ready(),
            nats_connected: self.nats_connected(),
            resources: self
                .inner
                .resources
                .iter()
                .zip(&self.inner.present)
                .map(|(r, p)| (r.name(), p.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    fn set(&self, index: usize, present: bool) {
        self.inner.present[index].store(present, Ordering::Relaxed);
    }
}

/// `GET /readyz`: 200 with the report when ready, 503 with it otherwise.
pub async fn readyz(State(readiness): State<Readiness>) -> Response {
    let report = readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

pub(super) async fn run(
    topology: Topology,
    js: jetstream::Context,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let _ = readiness.inner.client.set(js.client());
    let resources = readiness.inner.resources.clone();
    let interval = topology.config.check_interval;
    let mut delay = Duration::from_millis(100);
    // Start-up: create what is missing and apply changed limits, until NATS answers.
    loop {
        match topology.ensure_all(&js, &resources).await {
            Ok(()) => {
                (0..resources.len()).for_each(|i| readiness.set(i, true));
                readiness.inner.ensured.send_replace(true);
                tracing::info!("jetstream topology ready");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "jetstream topology not ready");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    // When each resource was created, as last seen: another service may recreate a deleted
    // resource before this one looks, and a changed creation time still tells of the loss.
    let mut created: Vec<Option<Created>> = vec![None; resources.len()];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = readiness.inner.nudge.notified() => {}
        }
        for (index, &resource) in resources.iter().enumerate() {
            let present = match lookup(&js, resource).await {
                Ok(Some(now)) => {
                    let seen = created[index].replace(now);
                    let replaced = seen.is_some_and(|seen| seen != now);
                    if replaced {
                        tracing::error!(
                            resource = resource.name(),
                            "jetstream resource was deleted and recreated meanwhile"
                        );
                    }
                    // Not ready for one round after a loss: what went with it (messages,
                    // records, consumers) is being rebuilt, and operators should see the blip.
                    !replaced
                }
                Ok(None) => {
                    recreate(&topology, &js, resource).await;
                    created[index] = None;
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot check the jetstream topology");
                    false
                }
            };
            readiness.set(index, present);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}

/// A stream's creation time, which tells one incarnation from the next.
type Created = time::OffsetDateTime;

/// When the stream (or the bucket's stream) was created, `None` when it does not exist;
/// errors mean NATS did not answer.
async fn lookup(
    js: &jetstream::Context,
    resource: Resource,
) -> Result<Option<Created>, TopologyError> {
    match js.get_stream(resource.stream_name()).await {
        Ok(stream) => Ok(Some(stream.cached_info().created)),
        Err(e) if is_not_found(e.kind()) => Ok(None),
        Err(source) => Err(TopologyError::Lookup {
            name: resource.name(),
            source,
        }),
    }
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Recreates a resource found missing.
async fn recreate(topology: &Topology, js: &jetstream::Context, resource: Resource) {
    tracing::error!(
        resource = resource.name(),
        "jetstream resource missing at runtime; recreating it"
    );
    match topology.ensure_one(js, resource).await {
        Ok(()) => {
            metrics::counter!(RECREATED, "resource" => resource.name()).increment(1);
            tracing::warn!(resource = resource.name(), "jetstream resource recreated");
        }
        Err(error) => tracing::warn!(%error, "could not recreate a jetstream resource"),
    }
}
