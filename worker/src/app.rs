//! `App`: connects, ensures the topology, starts one pull loop per (event type, partition),
//! serves `/healthz`, `/readyz`, `/metrics`, and shuts down in order.

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
use crate::consumer::{self, LoopContext};
use crate::conversation::Conversations;
use crate::handler::Handlers;
use crate::khoros_steps::StepRunner;
use crate::progress::ProgressStore;
use crate::token::TokenSource;

/// The streams and buckets the worker uses; `/readyz` covers exactly these.
pub const NEEDS: [Resource; 6] = [
    Resource::Events,
    Resource::KoreReplies,
    Resource::DeadLetters,
    Resource::Bucket(buckets::TOKENS),
    Resource::Bucket(buckets::CONVERSATIONS),
    Resource::Bucket(buckets::PROCESSED),
];

pub struct App {
    listener: TcpListener,
    readiness: Readiness,
    keeper: tokio::task::JoinHandle<()>,
    background: CancellationToken,
    metrics_listener: Option<TcpListener>,
    client: async_nats::Client,
    js: jetstream::Context,
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
        let token =
            TokenSource::start(kv(buckets::TOKENS).await?, config.seed_token.as_ref()).await?;
        let handlers = Arc::new(Handlers {
            progress: ProgressStore::new(kv(buckets::PROCESSED).await?),
            conversations: Conversations::new(kv(buckets::CONVERSATIONS).await?),
            runner: StepRunner {
                api: KhorosApi::new(&config.khoros_url, config.khoros_timeout),
                token,
                retry: config.khoros_retry,
                app_id: config.app_id.clone(),
            },
            kore: KoreClient::new(config.kore.clone()),
            breaker: Breaker::new(config.breaker),
            js: js.clone(),
            config,
        });
        Ok(Self {
            listener,
            readiness,
            keeper,
            background,
            metrics_listener,
            client,
            js,
            handlers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Consumes until `shutdown`; then stops pulling, lets in-flight events finish within
    /// `SHUTDOWN_TIMEOUT`, gives back (nak) what is still running, and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let config = &self.handlers.config;
        let hard_stop = CancellationToken::new();
        let ctx = LoopContext {
            handlers: self.handlers.clone(),
            js: self.js.clone(),
            permits: Arc::new(Semaphore::new(config.concurrency)),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        };
        let mut loops = tokio::task::JoinSet::new();
        for &kind in &config.event_types {
            for partition in 0..config.topology.partitions {
                loops.spawn(consumer::run(ctx.clone(), kind, partition));
            }
        }
        tracing::info!(
            types = ?config.event_types.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            partitions = config.topology.partitions,
            concurrency = config.concurrency,
            "worker consuming"
        );
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
        let deadline = config.shutdown_timeout;
        if tokio::time::timeout(deadline, async {
            while loops.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                ?deadline,
                "in-flight events did not finish in time; giving them back"
            );
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while loops.join_next().await.is_some() {}
            })
            .await;
            loops.abort_all();
        }
        self.background.cancel();
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
