//! `Stack`: nats-server + ingress + khoros-sim (sending to the ingress) + kore-sim + workers,
//! wired as in production, for end-to-end tests.

use std::time::Duration;

use khoros_sim::KhorosSim;
use kore_sim::{KoreSim, KoreSimConfig};
use shared::config::Env;
use shared::service::Listeners;
use shared::Secret;
use testkit::nats_server::NatsServer;

use crate::helpers::{khoros_for, worker_env, TestIngress, TestWorker, TEST_TOKEN};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Stack {
    pub nats: NatsServer,
    pub ingress: TestIngress,
    pub khoros: KhorosSim,
    pub kore: KoreSim,
    pub workers: Vec<TestWorker>,
    worker_extra: Vec<(String, String)>,
}

/// A scheduler `App` running on a stack's NATS and khoros-sim.
pub struct TestScheduler {
    pub config: scheduler::SchedulerConfig,
    /// The health listener (`/healthz`, `/readyz`, `/metrics`).
    pub base: String,
    pub status: scheduler::service::Status,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl TestScheduler {
    /// A scheduler `App` on `config`, run in a task (returned, for tests that end it).
    pub async fn start(
        config: scheduler::SchedulerConfig,
    ) -> (Self, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app = scheduler::App::build_with(
            config.clone(),
            Listeners {
                main: listener,
                metrics: None,
            },
        )
        .await
        .expect("build scheduler");
        let base = format!("http://{}", app.local_addr());
        let status = app.status();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let scheduler = TestScheduler {
            config,
            base,
            status,
            shutdown,
        };
        (scheduler, task)
    }
}

impl Stack {
    /// Starts a scheduler against this stack; `extra` overrides its settings.
    pub async fn scheduler(&self, extra: &[(&str, &str)]) -> TestScheduler {
        let vars: Vec<(String, String)> = vec![
            ("NATS_URL".into(), self.nats.url()),
            ("KHOROS_API_URL".into(), self.khoros.base_url()),
            ("KHOROS_APP_ID".into(), "kore-bridge".into()),
            ("KHOROS_TOKEN".into(), TEST_TOKEN.into()),
            ("PARTITIONS".into(), "4".into()),
            ("SHUTDOWN_TIMEOUT".into(), "2s".into()),
        ];
        let config = scheduler::SchedulerConfig::from_env_with_clock(
            &Env::from_pairs(crate::helpers::with_overrides(vars, extra)),
            std::sync::Arc::new(shared::auth::SystemClock),
        )
        .expect("valid scheduler config");
        TestScheduler::start(config).await.0
    }

    /// Starts everything with one worker; `worker_extra` overrides worker settings,
    /// `ingress_extra` ingress settings, `kore` the Kore.ai simulator's configuration.
    pub async fn start(
        worker_extra: &[(&str, &str)],
        ingress_extra: &[(&str, &str)],
        kore: KoreSimConfig,
    ) -> Self {
        let mut stack = Self::start_without_workers(worker_extra, ingress_extra, kore).await;
        stack.add_worker().await;
        stack
    }

    /// As [`Stack::start`], with no worker yet (tests that run workers as processes).
    pub async fn start_without_workers(
        worker_extra: &[(&str, &str)],
        ingress_extra: &[(&str, &str)],
        kore: KoreSimConfig,
    ) -> Self {
        let nats = NatsServer::start();
        // The ingress and the workers must agree on the partition count.
        let mut ingress_env = vec![("PARTITIONS", "4")];
        ingress_env.extend_from_slice(ingress_extra);
        let ingress = TestIngress::start(&nats, &ingress_env).await;
        let khoros = khoros_for(&ingress).await;
        let kore = KoreSim::start(kore).await.expect("start kore-sim");
        let stack = Self {
            nats,
            ingress,
            khoros,
            kore,
            workers: Vec::new(),
            worker_extra: worker_extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // Workers only read the token; the scheduler (not run here) would seed it.
        testkit::token_seed::seed_token(&stack.nats.url(), &stack.worker_env(), TEST_TOKEN)
            .await
            .expect("seed the token record");
        stack
    }

    /// The worker settings as variables, for a worker process.
    pub fn worker_vars(&self) -> Vec<(String, String)> {
        let extra: Vec<(&str, &str)> = self
            .worker_extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        crate::helpers::worker_vars(
            &self.nats,
            &self.khoros.base_url(),
            &self.kore.base_url(),
            &extra,
        )
    }

    pub fn worker_env(&self) -> Env {
        let extra: Vec<(&str, &str)> = self
            .worker_extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        worker_env(
            &self.nats,
            &self.khoros.base_url(),
            &self.kore.base_url(),
            &extra,
        )
    }

    pub async fn add_worker(&mut self) {
        let worker = TestWorker::start(&self.worker_env()).await;
        self.workers.push(worker);
    }

    /// What the scheduler does: refresh the Bot API token at khoros-sim with the current one and
    /// store the new one in KV. Returns the new token.
    pub async fn rotate_token(&self) -> String {
        let api = shared::khoros::KhorosApi::new(&self.khoros.base_url(), Duration::from_secs(5));
        let shared::khoros::Refreshed::Grant(grant) = api
            .refresh_token(&Secret::new(TEST_TOKEN), "kore-bridge")
            .await
            .expect("refresh")
        else {
            panic!("khoros-sim answered a grant without a token");
        };
        let js = crate::helpers::jetstream(&self.nats).await;
        let kv = js
            .get_key_value(shared::topology::buckets::TOKENS)
            .await
            .expect("tokens bucket");
        let record = shared::token::TokenRecord {
            token: grant.token.expose().to_string(),
            expires_at_ms: grant.expires_at_ms.unwrap_or(0),
            rotated_at_ms: 0,
            source: "rotation".into(),
        };
        kv.put(
            shared::token::TOKEN_KEY,
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("store token");
        grant.token.expose().to_string()
    }

    /// The bot's `/respond` texts to `author`, once there are `n`.
    pub async fn replies(&self, author: &str, n: usize) -> Vec<String> {
        let messages = self
            .khoros
            .wait_for_messages(author, n, WAIT)
            .await
            .expect("replies arrive");
        messages
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}
