//! `App`: the worker's wiring on the shared skeleton (`shared::service`): connect, ensure the
//! topology, take part in partition ownership (running the partitions this replica owns),
//! serve `/healthz`, `/readyz`, `/metrics`, and shut down in order.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use shared::contract::EventKind;
use shared::khoros::KhorosApi;
use shared::kore::KoreClient;
use shared::service::{self, Base, Listeners, Supervisor};
use shared::topology::{buckets, Resource};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::config::WorkerConfig;
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
    listeners: Listeners,
    base: Base,
    config: WorkerConfig,
}

impl App {
    /// Binds `WORKER_LISTEN` and `METRICS_LISTEN` and connects.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.listen, config.metrics_listen).await?;
        Self::build_with(config, listeners).await
    }

    /// Uses listeners the caller bound (tests bind `127.0.0.1:0` and skip the metrics one).
    pub async fn build_with(config: WorkerConfig, listeners: Listeners) -> anyhow::Result<Self> {
        shared::telemetry::metrics_handle();
        let base = Base::connect(&config.nats, config.topology.clone(), &NEEDS).await?;
        Ok(Self {
            listeners,
            base,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listeners
            .main
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The event kinds this worker consumes.
    pub fn event_types(&self) -> &[EventKind] {
        &self.config.event_types
    }

    /// Serves health at once; once the topology is ensured (NATS may start after the worker),
    /// takes part in partition ownership until `shutdown`. Then it stops pulling, lets
    /// in-flight events finish within `SHUTDOWN_TIMEOUT`, gives back (nak) what is still
    /// running, releases its partitions so other replicas take them at once, and flushes NATS.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = Supervisor::new(&shutdown);
        let stop = tasks.stop();
        let ops = service::ops_routes(self.base.readiness.clone());
        if let Some(listener) = self.listeners.metrics {
            tasks.spawn(
                "metrics",
                shared::telemetry::serve_metrics(listener, ops.clone(), stop.clone()),
            );
        }
        let health = ops.route("/metrics", get(shared::telemetry::render));
        let server = axum::serve(self.listeners.main, health)
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tasks.spawn("health", server.into_future());

        if self.base.ensured(&stop).await.is_ok() {
            let config = self.config;
            let grace = config.shutdown_timeout + Duration::from_secs(10);
            let handlers = Arc::new(handlers(&self.base, config, stop.clone()).await?);
            start_partitions(&mut tasks, &self.base, handlers).await?;
            tasks.run(grace).await;
        } else {
            tasks.run(Duration::from_secs(1)).await;
        }
        self.base.close().await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Opens the buckets and the clients every handler shares.
async fn handlers(
    base: &Base,
    config: WorkerConfig,
    stop: CancellationToken,
) -> anyhow::Result<Handlers> {
    let js = &base.js;
    let kv = |name: &'static str| async move { js.get_key_value(name).await };
    let token = TokenSource::start(kv(buckets::TOKENS).await?, stop.clone()).await?;
    let conversations_kv = kv(buckets::CONVERSATIONS).await?;
    Ok(Handlers {
        progress: ProgressStore::new(kv(buckets::PROCESSED).await?),
        conversations: Conversations::new(conversations_kv.clone(), stop),
        turns: Turns::new(conversations_kv, js.clone(), config.topology.partitions),
        delivery: Delivery {
            api: KhorosApi::new(&config.khoros_url, config.khoros_timeout),
            token,
            retry: config.khoros_retry,
            app_id: config.app_id.clone(),
            call_timeout: config.khoros_timeout,
            log: crate::delivery::RequestLog::default(),
        },
        kore: KoreClient::new(config.kore.clone()),
        identity: KoreIdentity::new(config.kore_user_id_key.clone()),
        breaker: Breaker::new(config.breaker),
        js: js.clone(),
        config,
    })
}

/// Joins the partition table: the ownership loop runs the partitions this replica owns (it
/// drains them on stop, bounded by `SHUTDOWN_TIMEOUT`), the stuck reporter watches them.
async fn start_partitions(
    tasks: &mut Supervisor,
    base: &Base,
    handlers: Arc<Handlers>,
) -> anyhow::Result<()> {
    let owners = base.js.get_key_value(buckets::PARTITIONS).await?;
    let config = &handlers.config;
    let ctx = Arc::new(PartitionContext {
        handlers: handlers.clone(),
        js: base.js.clone(),
        owners: owners.clone(),
        member_id: config.member_id.clone(),
        permits: Arc::new(Semaphore::new(config.concurrency)),
        stuck: Arc::new(Stuck::default()),
    });
    let stuck = ctx.stuck.clone();
    let stop = tasks.stop();
    tasks.spawn("stuck-report", async move {
        stuck.report(stop).await;
        Ok::<_, String>(())
    });
    let ownership = Ownership::new(
        owners,
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
    let stop = tasks.stop();
    tasks.spawn("ownership", async move {
        ownership.run(stop).await;
        Ok::<_, String>(())
    });
    Ok(())
}
