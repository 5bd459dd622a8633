//! Ingress configuration, read from the environment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::auth::{Authenticator, BasicVerifier, Clock, HmacKeys, HmacVerifier, SystemClock};
use shared::config::{ConfigError, Env, NatsConfig};
use shared::topology::TopologyConfig;

use crate::kore_callback::CallbackAuth;

/// Everything the ingress needs; see the README's configuration table.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// `INGRESS_LISTEN`: the webhook listener.
    pub listen: SocketAddr,
    /// `METRICS_LISTEN`: the Prometheus listener (`/metrics`).
    pub metrics_listen: SocketAddr,
    /// `INGRESS_EVENTS_PATH`: where Khoros posts events.
    pub events_path: String,
    /// `KHOROS_AUTH` and its credentials.
    pub auth: Authenticator,
    /// `MAX_BODY_BYTES`: larger bodies get 413 (so do bodies the NATS server's
    /// `max_payload` could never take, whatever this says).
    pub max_body_bytes: usize,
    /// `BODY_READ_TIMEOUT`: a body must arrive within this after its headers (408 otherwise).
    pub body_read_timeout: Duration,
    /// `BODY_BUDGET_BYTES`: bodies being read at once, in bytes, across all connections;
    /// half of it is reserved for bodies of at most 64 KiB. Over budget: 503.
    pub body_budget_bytes: usize,
    /// `HEADER_READ_TIMEOUT`: request headers must arrive within this; also how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`: open connections at once on the webhook listener.
    pub max_connections: usize,
    /// `INGRESS_WORKER_THREADS`: event loops, one thread each (default: one per core).
    pub worker_threads: Option<usize>,
    /// `PUBLISH_TIMEOUT`: how long one publish attempt waits for its PubAck.
    pub publish_timeout: Duration,
    /// `STORE_DEADLINE`: how long one event is tried (attempts that found no stream leader
    /// are made again) before the answer is 503. At least `PUBLISH_TIMEOUT`.
    pub store_deadline: Duration,
    /// `SHUTDOWN_TIMEOUT`: how long in-flight requests may take after SIGTERM.
    pub shutdown_timeout: Duration,
    /// `KORE_CALLBACK_TOKEN` (+`_FILE`) and `KORE_CALLBACK_HEADER`: enables `/kore/callback`
    /// for Kore.ai's asynchronous mode; absent means the route answers 404.
    pub kore_callback: Option<CallbackAuth>,
    /// `KORE_CALLBACK_PATH`.
    pub kore_callback_path: String,
    pub nats: NatsConfig,
    pub topology: TopologyConfig,
}

impl IngressConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::from_env_with_clock(env, Arc::new(SystemClock))
    }

    /// As [`Self::from_env`], with the clock the signature check uses (tests pin it).
    pub fn from_env_with_clock(env: &Env, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let topology = TopologyConfig::from_env(env)?;
        let auth = match env
            .string("KHOROS_AUTH", "hmac")
            .to_ascii_lowercase()
            .as_str()
        {
            "hmac" => {
                let raw = env.required_secret("KHOROS_HMAC_KEYS")?;
                let keys =
                    HmacKeys::parse(raw.expose()).map_err(|reason| ConfigError::Invalid {
                        name: "KHOROS_HMAC_KEYS".into(),
                        value: "***".into(),
                        reason,
                    })?;
                let verifier =
                    HmacVerifier::new(keys, topology.max_skew, env.get("KHOROS_PUBLIC_HOST"));
                Authenticator::Hmac(verifier.with_clock(clock))
            }
            "basic" => Authenticator::Basic(BasicVerifier::new(
                &env.required("KHOROS_BASIC_USER")?,
                &env.required_secret("KHOROS_BASIC_PASSWORD")?,
            )),
            other => {
                return Err(ConfigError::Invalid {
                    name: "KHOROS_AUTH".into(),
                    value: other.into(),
                    reason: "expected hmac or basic".into(),
                })
            }
        };
        let events_path = env.string("INGRESS_EVENTS_PATH", "/khoros/events");
        if !events_path.starts_with('/') {
            return Err(ConfigError::Invalid {
                name: "INGRESS_EVENTS_PATH".into(),
                value: events_path,
                reason: "must start with /".into(),
            });
        }
        let publish_timeout = env.duration("PUBLISH_TIMEOUT", Duration::from_secs(2))?;
        // Under Khoros' delivery timeout (about 10 s), over a JetStream election (4 to 9 s).
        let store_deadline = env.duration("STORE_DEADLINE", Duration::from_secs(8))?;
        if store_deadline < publish_timeout {
            return Err(ConfigError::Invalid {
                name: "STORE_DEADLINE".into(),
                value: format!("{store_deadline:?}"),
                reason: format!("must be at least PUBLISH_TIMEOUT ({publish_timeout:?})"),
            });
        }
        Ok(Self {
            listen: env.parse("INGRESS_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            metrics_listen: env.parse("METRICS_LISTEN", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            events_path,
            auth,
            max_body_bytes: env.parse("MAX_BODY_BYTES", 1024 * 1024)?,
            body_read_timeout: env.duration("BODY_READ_TIMEOUT", Duration::from_secs(10))?,
            body_budget_bytes: env.parse("BODY_BUDGET_BYTES", 32 * 1024 * 1024)?,
            header_read_timeout: env.duration("HEADER_READ_TIMEOUT", Duration::from_secs(10))?,
            max_connections: env.parse("MAX_CONNECTIONS", 10_000)?,
            worker_threads: match env.get("INGRESS_WORKER_THREADS") {
                Some(_) => Some(env.parse("INGRESS_WORKER_THREADS", 0)?).filter(|&n| n > 0),
                None => None,
            },
            publish_timeout,
            store_deadline,
            shutdown_timeout: env.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(20))?,
            kore_callback: env
                .secret("KORE_CALLBACK_TOKEN")?
                .map(|token| CallbackAuth {
                    token,
                    header: env
                        .string("KORE_CALLBACK_HEADER", "authorization")
                        .to_ascii_lowercase(),
                }),
            kore_callback_path: env.string("KORE_CALLBACK_PATH", "/kore/callback"),
            nats: NatsConfig::from_env(env, "ingress")?,
            topology,
        })
    }
}
