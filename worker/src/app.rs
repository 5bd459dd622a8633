//! `App`: connects, ensures the topology, takes part in partition ownership (running the
//! partitions this replica owns), serves `/healthz`, `/readyz`, `/metrics`, and shuts down in
//! order.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::routing::get;
use axum::Router;
use shared::khoros::KhorosApi;
use shared::kore::KoreClient;
use shared::topology::{self, buckets, Readiness, Resource, Topology};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::config::{EventKind, WorkerConfig};
use crate::conversation::Conversations;
use crate::delivery::Delivery;
use crate::handler::Handlers;
use crate::identity::KoreIdentity;
use crate::ownership::{Ownership, OwnershipConfig};
use crate::partition::{self, stuck::Stuck, PartitionContext};
use crate::progress::ProgressStore;
use crate::token::TokenSource;
use crate::turns::Turns;

/// The streams and buckets the worker uses; `/readyz` covers exactly these.
pub const NEEDS: [Resource; 7] = [
    Resource::Events,
    Resource::KoreReplies,
    Resource::DeadLetters,
    Resource::Bucket(buckets::TOKENS),
    Resource::Bucket(buckets::CONVERSATIONS),
    Resource::Bucket(buckets::PROCESSED),
    Resource::Bucket(buckets::PARTITIONS),
];

pub struct App {
    listener: TcpListener,
    readiness: Readiness,
    keeper: tokio::task::JoinHandle<()>,
    background: CancellationToken,
    metrics_listener: Option<TcpListener>,
    client: async_nats::Client,
    js: jetstream::Context,
    partitions_kv: async_nats::jetstream::kv::Store,
    handlers: Arc<Handlers>,
}

impl App {
    /// Binds `WORKER_LISTEN` and `METRICS_LISTEN`, connects and prepares the handlers.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = TcpListener::bind(config.metrics_listen).await?;
        Self::build_with(config, listener, Some(metrics_listener)).await
    }

    pub async fn build_with(
        config: WorkerConfig,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        shared::telemetry::metrics_handle();
        let client = topology::connect(&config.nats).await?;
        let js = jetstream::new(client.clone());
        let background = CancellationToken::new();
        let (readiness, keeper) =
            Topology::new(config.topology.clone()).keep(js.clone(), &NEEDS, background.clone());
        // NATS may start after the worker: the keeper retries until the buckets exist.
        readiness.ensured().await;
        let kv = |name: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(name).await }
        };
        let token = TokenSource::start(kv(buckets::TOKENS).await?).await?;
        let conversations_kv = kv(buckets::CONVERSATIONS).await?;
        let handlers = Arc::new(Handlers {
            progress: ProgressStore::new(kv(buckets::PROCESSED).await?),
            conversations: Conversations::new(conversations_kv.clone()),
            turns: Turns::new(conversations_kv, js.clone(), config.topology.partitions),
            delivery: Delivery {
                api: KhorosApi::new(&config.khoros_url, config.khoros_timeout),
                token,
                retry: config.khoros_retry,
                app_id: config.app_id.clone(),
                call_timeout: config.khoros_timeout,
            },
            kore: KoreClient::new(config.kore.clone()),
            identity: KoreIdentity::new(config.kore_user_id_key.clone()),
            breaker: Breaker::new(config.breaker),
            js: js.clone(),
            config,
        });
        let partitions_kv = kv(buckets::PARTITIONS).await?;
        Ok(Self {
            listener,
            readiness,
            keeper,
            background,
            metrics_listener,
            client,
            js,
            partitions_kv,
            handlers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Consumes until `shutdown`; then stops pulling, lets in-flight events finish within
    /// `SHUTDOWN_TIMEOUT`, gives back (nak) what is still running, releases its partitions so
    /// other replicas take them at once, and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let config = &self.handlers.config;
        let ctx = Arc::new(PartitionContext {
            handlers: self.handlers.clone(),
            js: self.js.clone(),
            owners: self.partitions_kv.clone(),
            member_id: config.member_id.clone(),
            permits: Arc::new(Semaphore::new(config.concurrency)),
            stuck: Arc::new(Stuck::default()),
        });
        let reporter = tokio::spawn({
            let stuck = ctx.stuck.clone();
            let stop = self.background.clone();
            async move { stuck.report(stop).await }
        });
        let ownership = Ownership::new(
            self.partitions_kv.clone(),
            OwnershipConfig {
                member_id: config.member_id.clone(),
                types: config.event_types.clone(),
                partitions: config.topology.partitions,
                member_timeout: config.member_timeout,
                shutdown_timeout: config.shutdown_timeout,
            },
            move |slot| partition::start(ctx.clone(), slot),
        );
        tracing::info!(
            member = %config.member_id,
            types = ?config.event_types.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            partitions = config.topology.partitions,
            concurrency = config.concurrency,
            "worker consuming the partitions it owns"
        );
        let owner = tokio::spawn(ownership.run(shutdown.clone()));
        let health = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(topology::readyz))
            .with_state(self.readiness.clone());
        let metrics = self.metrics_listener.map(|l| {
            tokio::spawn(shared::telemetry::serve_metrics(
                l,
                health.clone(),
                shutdown.clone(),
            ))
        });
        let health = health.route("/metrics", get(shared::telemetry::render));
        let server = tokio::spawn(
            axum::serve(self.listener, health)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );

        shutdown.cancelled().await;
        tracing::info!("stopping: no new events are pulled");
        // The ownership loop drains (bounded by SHUTDOWN_TIMEOUT), gives back the rest and
        // releases the partitions.
        let _ =
            tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(10), owner).await;
        self.background.cancel();
        let _ = reporter.await;
        let _ = self.keeper.await;
        shared::topology::flush_at_shutdown(&self.client).await;
        let _ = server.await;
        if let Some(task) = metrics {
            task.abort();
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    /// The event kinds this worker consumes.
    pub fn event_types(&self) -> &[EventKind] {
        &self.handlers.config.event_types
    }
}
