//! `TestIngress`: an ingress on port 0 against the test's own nats-server.

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream;
use shared::config::Env;
use shared::service::Listeners;
use shared::Secret;
use testkit::nats_server::NatsServer;
use testkit::sign::{Credentials, Signer};
use testkit::wait;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const HMAC_KEY: &str = "bridge-hmac-key";
pub const HMAC_SECRET: &str = "k7Qp-test-secret-9f2e";
pub const BASIC_USER: &str = "khoros-cb";
pub const BASIC_PASSWORD: &str = "cb-pass-123";

/// Logs only when `TEST_LOG` is set, installed once for the test binary.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        shared::telemetry::init_subscriber(shared::telemetry::get_subscriber(
            "info",
            std::io::stdout,
        ));
    }
});

pub struct TestIngress {
    pub url: String,
    /// The webhook listener.
    pub base: String,
    /// The metrics listener: `/metrics`, `/readyz`, `/healthz`.
    pub ops: String,
    pub signer: Signer,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestIngress {
    /// Starts an ingress with HMAC auth (the default) or overrides in `extra`.
    pub async fn start(nats: &NatsServer, extra: &[(&str, &str)]) -> Self {
        Self::start_at(&nats.url(), extra).await
    }

    /// [`Self::start`] against `nats_url` (a server list for a cluster).
    pub async fn start_at(nats_url: &str, extra: &[(&str, &str)]) -> Self {
        LazyLock::force(&TRACING);
        let vars = vec![
            ("NATS_URL".to_string(), nats_url.to_string()),
            ("KHOROS_AUTH".into(), "hmac".into()),
            (
                "KHOROS_HMAC_KEYS".into(),
                format!("old-key=old-secret,{HMAC_KEY}={HMAC_SECRET}"),
            ),
            ("KHOROS_BASIC_USER".into(), BASIC_USER.into()),
            ("KHOROS_BASIC_PASSWORD".into(), BASIC_PASSWORD.into()),
            ("PUBLISH_TIMEOUT".into(), "750ms".into()),
            // An outage is answered 503 within a PubAck deadline, as the tests expect.
            ("STORE_DEADLINE".into(), "750ms".into()),
            ("SHUTDOWN_TIMEOUT".into(), "2s".into()),
        ];
        let env = Env::from_pairs(with_overrides(vars, extra));
        let config = ingress::IngressConfig::from_env(&env).expect("valid test config");
        let basic = matches!(config.auth, shared::auth::Authenticator::Basic(_));
        let path = config.events_path.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = ingress::App::build_with(
            config,
            Listeners {
                main: listener,
                metrics: Some(metrics),
            },
        )
        .await
        .expect("build ingress");
        let base = format!("http://127.0.0.1:{}", app.port());
        let ops = format!("http://{}", app.metrics_addr().expect("metrics listener"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let url = format!("{base}{path}");
        let credentials = if basic {
            Credentials::Basic {
                user: BASIC_USER.into(),
                password: Secret::new(BASIC_PASSWORD),
            }
        } else {
            Credentials::Hmac {
                api_key: HMAC_KEY.into(),
                secret: Secret::new(HMAC_SECRET),
            }
        };
        let ingress = Self {
            signer: Signer {
                url: url.clone(),
                credentials,
            },
            url,
            base,
            ops,
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        };
        ingress.wait_ready().await;
        ingress
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.ops);
        wait::until(
            Duration::from_secs(15),
            "ingress /readyz to answer 200",
            || async {
                let r = self.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    /// Sends `body` signed now, with an optional request id; returns status and body text.
    pub async fn send(&self, body: &str, request_id: Option<&str>) -> (u16, String) {
        let response = self
            .signer
            .request(&self.http, body.as_bytes(), request_id)
            .send()
            .await
            .expect("send");
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    /// Stops the ingress and waits for it to finish in-flight work.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }
}

impl Drop for TestIngress {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A JetStream context on the test's server.
pub async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to test nats");
    jetstream::new(client)
}

/// Marks a bot turn outstanding for Kore user `user`, as the worker does in async mode, so the
/// ingress accepts Kore.ai deliveries for it (key: `shared::contract::keys::turn`).
pub async fn mark_turn(nats: &NatsServer, user: &str) {
    let key = shared::contract::keys::turn(user).expect("a valid Kore user id");
    jetstream(nats)
        .await
        .get_key_value(shared::topology::buckets::CONVERSATIONS)
        .await
        .expect("conversations bucket")
        .put(key, r#"{"test":"turn"}"#.into())
        .await
        .expect("turn marked");
}

/// A message event for one author, as Khoros would send it.
pub fn message_event(author: &str, text: &str) -> String {
    serde_json::json!({
        "type": "message",
        "coordinate": {"companyKey": "acme", "networkKey": "brandmessenger", "externalId": "bm-web-01",
                       "messageId": format!("m-{}", uuid::Uuid::new_v4()), "botId": "kore-bridge", "scope": "PRIVATE"},
        "author": {"id": author, "fullName": "Pat Example"},
        "owner": {"type": "BOT", "appId": "kore-bridge"},
        "text": text,
        "publishedTS": 1_700_000_100_000_i64
    })
    .to_string()
}

/// A worker on port 0 against the test's nats-server and the given simulators.
pub struct TestWorker {
    pub base: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The worker settings every test shares; `extra` overrides.
pub fn worker_env(
    nats: &NatsServer,
    khoros_url: &str,
    kore_url: &str,
    extra: &[(&str, &str)],
) -> Env {
    Env::from_pairs(worker_vars(nats, khoros_url, kore_url, extra))
}

/// The key the test workers hash Kore.ai user ids with.
pub const KORE_USER_ID_KEY: &str = "test-kore-user-id-key";

/// The Kore.ai user id the test workers give `author_id` on khoros-sim's default network and
/// page (`brandmessenger`, `bm-web-01`).
pub fn kore_user(author_id: &str) -> String {
    worker::identity::KoreIdentity::new(shared::Secret::new(KORE_USER_ID_KEY)).user_id(
        &shared::contract::ConversationKey {
            network: "brandmessenger",
            external_id: "bm-web-01",
            author_id,
        },
    )
}

/// [`worker_env`] as variable pairs (for worker processes).
pub fn worker_vars(
    nats: &NatsServer,
    khoros_url: &str,
    kore_url: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    worker_vars_at(&nats.url(), khoros_url, kore_url, extra)
}

/// [`worker_vars`] against `nats_url` (a server list for a cluster).
pub fn worker_vars_at(
    nats_url: &str,
    khoros_url: &str,
    kore_url: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = vec![
        ("NATS_URL".into(), nats_url.to_string()),
        ("KHOROS_APP_ID".into(), "kore-bridge".into()),
        ("KHOROS_API_URL".into(), khoros_url.into()),
        ("KORE_URL".into(), kore_url.into()),
        ("KORE_BOT_ID".into(), KORE_BOT_ID.into()),
        ("KORE_CLIENT_ID".into(), KORE_CLIENT_ID.into()),
        ("KORE_CLIENT_SECRET".into(), KORE_CLIENT_SECRET.into()),
        ("KORE_USER_ID_KEY".into(), KORE_USER_ID_KEY.into()),
        ("ACK_WAIT".into(), "5s".into()),
        ("SHUTDOWN_TIMEOUT".into(), "2s".into()),
        ("PARTITIONS".into(), "4".into()),
        ("KHOROS_RETRY_MIN_DELAY".into(), "20ms".into()),
        ("KHOROS_RETRY_MAX_DELAY".into(), "100ms".into()),
        ("KORE_RETRY_MIN_DELAY".into(), "20ms".into()),
        ("KORE_RETRY_MAX_DELAY".into(), "100ms".into()),
    ];
    with_overrides(vars, extra)
}

/// `vars` with each of `extra` replacing the variable of the same name (or added).
pub fn with_overrides(
    mut vars: Vec<(String, String)>,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    vars
}

pub const TEST_TOKEN: &str = "khoros-test-token-0001";
pub const KORE_BOT_ID: &str = "st-11111111-2222-3333-4444-555555555555";
pub const KORE_CLIENT_ID: &str = "cs-00000000-test-app";
pub const KORE_CLIENT_SECRET: &str = "kore-test-client-secret-123";

impl TestWorker {
    pub async fn start(env: &Env) -> Self {
        LazyLock::force(&TRACING);
        let config = worker::WorkerConfig::from_env(env).expect("valid worker config");
        // Workers only read the token; the scheduler would have seeded it.
        testkit::token_seed::seed_token(&config.nats.url, env, TEST_TOKEN)
            .await
            .expect("seed the token record");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = worker::App::build_with(
            config,
            Listeners {
                main: listener,
                metrics: None,
            },
        )
        .await
        .expect("build worker");
        let base = format!("http://{}", app.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let worker = Self {
            base,
            shutdown,
            task: Some(task),
        };
        wait_ready(&worker.base, "worker /readyz to answer 200").await;
        worker
    }

    /// Graceful stop: finish or give back in-flight events.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }

    /// A crash: every task of the worker is dropped mid-flight, nothing is acknowledged.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits (15 s at most) for `<base>/readyz` to answer 200.
pub async fn wait_ready(base: &str, what: &str) {
    let url = format!("{base}/readyz");
    wait::until(Duration::from_secs(15), what, || async {
        reqwest::get(&url)
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
}

/// The consumer instance of one partition (`worker-<kind>-<p>--<instance>`, named by its
/// owner), if there is one.
pub async fn partition_consumer(
    stream: &async_nats::jetstream::stream::Stream,
    base: &str,
) -> Option<async_nats::jetstream::consumer::PullConsumer> {
    use futures::TryStreamExt;
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names");
    let name = names
        .into_iter()
        .find(|n| shared::contract::kind::consumer_base(n) == base)?;
    stream.get_consumer(&name).await.ok()
}

/// khoros-sim with the workers' test token, delivering its webhooks to `ingress` with the
/// HMAC credentials the test ingress accepts.
pub async fn khoros_for(ingress: &TestIngress) -> khoros_sim::KhorosSim {
    khoros_sim::KhorosSim::start(
        khoros_sim::KhorosSimConfig::default()
            .with_token(TEST_TOKEN)
            .with_webhook(
                &ingress.url,
                Credentials::Hmac {
                    api_key: HMAC_KEY.into(),
                    secret: Secret::new(HMAC_SECRET),
                },
            ),
    )
    .await
    .expect("start khoros-sim")
}

/// The settings every scheduler under test shares: khoros-sim at `khoros_url` with its token
/// `seed` (expiring at `seed_expires_at_ms`), checks every 50 ms, a 1 s lease, short retries.
pub fn scheduler_vars(
    nats_url: &str,
    khoros_url: &str,
    app_id: &str,
    seed: &str,
    seed_expires_at_ms: i64,
) -> Vec<(String, String)> {
    [
        ("NATS_URL", nats_url.to_string()),
        ("KHOROS_API_URL", khoros_url.to_string()),
        ("KHOROS_APP_ID", app_id.into()),
        ("KHOROS_TOKEN", seed.into()),
        ("KHOROS_TOKEN_EXPIRES_AT_MS", seed_expires_at_ms.to_string()),
        ("KHOROS_TIMEOUT", "2s".into()),
        ("KHOROS_RETRY_MAX", "3".into()),
        ("KHOROS_RETRY_MIN_DELAY", "10ms".into()),
        ("KHOROS_RETRY_MAX_DELAY", "50ms".into()),
        ("KHOROS_RETRY_MAX_ELAPSED", "2s".into()),
        ("TOKEN_CHECK_INTERVAL", "50ms".into()),
        ("LEASE_TTL", "1s".into()),
        ("METRICS_INTERVAL", "0".into()),
        ("SHUTDOWN_TIMEOUT", "5s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
