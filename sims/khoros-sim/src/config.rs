//! Typed configuration of the simulator, with defaults matching the examples in
//! `docs/vendors/`, and
//! its `KHOROS_SIM_*` environment form for the binary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::config::{ConfigError, Env};
use shared::Secret;

pub use testkit::sign::Credentials;

/// The networkKeys the gateway accepts (`docs/vendors/khoros-bot-api-v3.md`,
/// "Coordinate and author"); anything else is `400 Invalid networkKey`.
pub const DEFAULT_NETWORKS: &[&str] = &[
    "apple",
    "brandmessenger",
    "facebook",
    "googlebusiness",
    "instagram",
    "lia",
    "smooch",
    "twitter",
    "whatsapp",
];

/// Everything the simulator needs to start.
#[derive(Clone, Debug)]
pub struct KhorosSimConfig {
    pub company_key: String,
    /// The one registered bot; new conversations are owned by `BOT(app_id)`.
    pub app_id: String,
    /// Network and externalId of injected messages when the caller names none.
    pub network_key: String,
    pub external_id: String,
    /// A bearer token accepted from the start (opaque; tests and the demo pass it in).
    pub initial_token: Option<Secret>,
    /// HS512 key of minted JWTs (by default the test key of `docs/vendors/khoros-bot-api-v3.md`,
    /// "Authentication").
    pub jwt_signing_key: Secret,
    /// The `awsRegion` claim of minted JWTs.
    pub aws_region: String,
    /// Basic credentials of the token-creation host (`docs/vendors/khoros-bot-api-v3.md`,
    /// "Create the first token").
    pub token_host_user: String,
    pub token_host_password: Secret,
    /// Valid networkKeys (`docs/vendors/khoros-bot-api-v3.md`, "Coordinate and author").
    pub networks: Vec<String>,
    /// Answer `/respond` with 202 and no body instead of 200 with a body
    /// (`docs/vendors/khoros-bot-api-v3.md`, "Respond", lists both).
    pub respond_accepted: bool,
    /// Where events go (the bot's `callbackUrl` and credentials); `None`: nothing is sent.
    pub webhook: Option<WebhookTarget>,
    pub sender: SenderConfig,
    /// Sim clock start (epoch ms); system time when `None`.
    pub clock_start_ms: Option<i64>,
    /// Sim milliseconds per real millisecond.
    pub clock_speed: f64,
    /// Cap of each history (request log, events, control changes, replies per author), so a
    /// long benchmark does not grow without bound.
    pub history_limit: usize,
}

impl Default for KhorosSimConfig {
    fn default() -> Self {
        Self {
            company_key: "acme".into(),
            app_id: "kore-bridge".into(),
            network_key: "brandmessenger".into(),
            external_id: "bm-web-01".into(),
            initial_token: Some(Secret::new("khoros-sim-token")),
            jwt_signing_key: Secret::new("khoros-fake-signing-key"),
            aws_region: "us-west-2".into(),
            token_host_user: "care-bot-api".into(),
            token_host_password: Secret::new("care-bot-api-password"),
            networks: DEFAULT_NETWORKS.iter().map(|n| n.to_string()).collect(),
            respond_accepted: false,
            webhook: None,
            sender: SenderConfig::default(),
            clock_start_ms: None,
            clock_speed: 1.0,
            history_limit: 100_000,
        }
    }
}

impl KhorosSimConfig {
    pub fn with_token(mut self, token: &str) -> Self {
        self.initial_token = Some(Secret::new(token));
        self
    }

    pub fn with_webhook(mut self, url: &str, credentials: Credentials) -> Self {
        self.webhook = Some(WebhookTarget {
            url: url.to_string(),
            credentials,
        });
        self
    }

    /// Reads `KHOROS_SIM_*` (see the `khoros-sim` binary's docs for the list).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let app_id = env.string("KHOROS_SIM_APP_ID", &defaults.app_id);
        let webhook = match env.get("KHOROS_SIM_WEBHOOK_URL") {
            None => None,
            Some(url) => {
                let credentials = match env.string("KHOROS_SIM_AUTH", "hmac").as_str() {
                    "hmac" => Credentials::Hmac {
                        api_key: env.string("KHOROS_SIM_HMAC_KEY", "bridge-hmac-key"),
                        secret: env
                            .secret("KHOROS_SIM_HMAC_SECRET")?
                            .unwrap_or_else(|| Secret::new("k7Qp-test-secret-9f2e")),
                    },
                    "basic" => Credentials::Basic {
                        user: env.string("KHOROS_SIM_BASIC_USER", "khoros-cb"),
                        password: env
                            .secret("KHOROS_SIM_BASIC_PASSWORD")?
                            .unwrap_or_else(|| Secret::new("cb-pass-123")),
                    },
                    other => {
                        return Err(ConfigError::Invalid {
                            name: "KHOROS_SIM_AUTH".into(),
                            value: other.into(),
                            reason: "expected hmac or basic".into(),
                        })
                    }
                };
                Some(WebhookTarget { url, credentials })
            }
        };
        let clock_speed: f64 = env.parse("KHOROS_SIM_CLOCK_SPEED", 1.0)?;
        if !(clock_speed.is_finite() && clock_speed >= 0.0) {
            return Err(ConfigError::Invalid {
                name: "KHOROS_SIM_CLOCK_SPEED".into(),
                value: clock_speed.to_string(),
                reason: "expected a number >= 0".into(),
            });
        }
        let sender = SenderConfig {
            retries: env.parse("KHOROS_SIM_RETRIES", defaults.sender.retries)?,
            retry_delay: env.duration("KHOROS_SIM_RETRY_DELAY", defaults.sender.retry_delay)?,
            timeout: env.duration("KHOROS_SIM_DELIVERY_TIMEOUT", defaults.sender.timeout)?,
            emit_created: env.bool("KHOROS_SIM_EMIT_CREATED", defaults.sender.emit_created)?,
            ..defaults.sender.clone()
        };
        let respond_accepted = match env.parse("KHOROS_SIM_RESPOND_STATUS", 200_u16)? {
            200 => false,
            202 => true,
            other => {
                return Err(ConfigError::Invalid {
                    name: "KHOROS_SIM_RESPOND_STATUS".into(),
                    value: other.to_string(),
                    reason: "expected 200 or 202".into(),
                })
            }
        };
        Ok(Self {
            company_key: env.string("KHOROS_SIM_COMPANY", &defaults.company_key),
            app_id,
            network_key: env.string("KHOROS_SIM_NETWORK", &defaults.network_key),
            external_id: env.string("KHOROS_SIM_EXTERNAL_ID", &defaults.external_id),
            initial_token: env.secret("KHOROS_SIM_TOKEN")?.or(defaults.initial_token),
            jwt_signing_key: env
                .secret("KHOROS_SIM_JWT_KEY")?
                .unwrap_or(defaults.jwt_signing_key),
            token_host_user: env.string("KHOROS_SIM_TOKEN_HOST_USER", &defaults.token_host_user),
            token_host_password: env
                .secret("KHOROS_SIM_TOKEN_HOST_PASSWORD")?
                .unwrap_or(defaults.token_host_password),
            respond_accepted,
            webhook,
            sender,
            clock_speed,
            ..defaults
        })
    }
}

/// The bot's callback URL and how the sim authenticates to it (`docs/vendors/khoros-webhooks.md`,
/// "Authentication").
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: String,
    pub credentials: Credentials,
}

/// How events are delivered (`docs/vendors/khoros-webhooks.md`, "Delivery" and
/// "What Khoros does with our answer").
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Retries after a failed attempt (same `x-amzn-RequestId`, fresh signature timestamp).
    pub retries: u32,
    /// Fixed real-time pause between attempts.
    pub retry_delay: Duration,
    /// A delivery slower than this failed (`docs/vendors/khoros-webhooks.md`,
    /// "Success and failure", assumes ~10 s).
    pub timeout: Duration,
    /// Send an `update`/`CREATED` event after the first message of a conversation.
    pub emit_created: bool,
    /// Parallel delivery lanes; events of one conversation always share a lane, so each
    /// author's events arrive in order while different authors proceed in parallel.
    pub lanes: usize,
    /// Sign with the sim clock instead of the system clock. Off by default: the bot checks
    /// timestamps against its own wall clock, so an advanced sim clock would look stale.
    pub sign_with_sim_clock: bool,
    pub tamper: Tamper,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            retries: 2,
            retry_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            emit_created: true,
            lanes: 16,
            sign_with_sim_clock: false,
            tamper: Tamper::default(),
        }
    }
}

/// Test knobs that make deliveries fail authentication on purpose
/// (`docs/vendors/khoros-webhooks.md`, "HMAC signature v2").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tamper {
    /// Corrupt the HMAC signature (Basic: send a wrong password).
    pub wrong_signature: bool,
    /// Sign with a timestamp 5 minutes in the past (outside the 60 s skew).
    pub stale_timestamp: bool,
    /// Send an `x-auth-apikey` the bot does not know (signature made with the real secret).
    pub unknown_api_key: bool,
    /// Extra `x-smm-*` headers, included in the signature; a value may hold `a, b`.
    pub smm_headers: BTreeMap<String, String>,
}
