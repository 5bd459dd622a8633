//! Typed configuration of the simulator: the bot and its app (JWT), the channel instances
//! (sync/async, polling, POST_URL and how the access token is presented) and the global knobs
//! (latency, outage switch, sync timeout, rate limit, default reply). [`ConfigPatch`] changes
//! it at runtime (in process or through `POST /sim/config`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use shared::config::{ConfigError, Env};
use shared::Secret;

use super::script::Turn;

/// The bot stream id every test uses unless it says otherwise.
pub const DEFAULT_BOT_ID: &str = "st-11111111-2222-3333-4444-555555555555";
/// The Client ID of the channel's app (the `appId` claim).
pub const DEFAULT_CLIENT_ID: &str = "cs-00000000-test-app";
/// The Client Secret of the channel's app (the JWT test vectors of
/// `docs/vendors/kore-webhook-channel.md` use it).
pub const DEFAULT_CLIENT_SECRET: &str = "kore-test-client-secret-123";
/// Kore's documented limit for a synchronous call.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// How many requests and deliveries the inspection log keeps (oldest dropped first).
pub const DEFAULT_RECORD_LIMIT: usize = 10_000;

/// Integration mode of a channel instance (`docs/vendors/kore-webhook-channel.md`,
/// "Integration modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The HTTP response carries the bot's replies.
    Sync,
    /// The call is acknowledged; replies are POSTed to the channel's POST_URL.
    Async,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sync" | "synchronous" => Ok(Mode::Sync),
            "async" | "asynchronous" => Ok(Mode::Async),
            _ => Err("expected sync or async".into()),
        }
    }
}

/// Signing algorithm chosen for the channel's app; HS* only
/// (`docs/vendors/kore-webhook-channel.md`, "JWT").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlg {
    HS256,
    HS512,
}

impl JwtAlg {
    pub fn algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlg::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlg::HS512 => jsonwebtoken::Algorithm::HS512,
        }
    }
}

impl FromStr for JwtAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlg::HS256),
            "HS512" => Ok(JwtAlg::HS512),
            _ => Err("expected HS256 or HS512".into()),
        }
    }
}

/// How the async access token is presented to POST_URL (`docs/vendors/kore-webhook-channel.md`,
/// "Authenticating deliveries"; Kore does not document it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>` (the assumption of `docs/vendors/kore-webhook-channel.md`).
    #[default]
    Bearer,
    /// `<name>: <token>`, the raw token in a custom header.
    Raw(String),
}

impl TokenHeader {
    /// `Authorization` (any case) means the bearer form; any other valid name the raw form.
    pub fn from_name(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("authorization") {
            return Ok(TokenHeader::Bearer);
        }
        http::HeaderName::from_str(name)
            .map(|_| TokenHeader::Raw(name.to_ascii_lowercase()))
            .map_err(|_| format!("{name:?} is not a valid header name"))
    }

    /// The header name as sent.
    pub fn name(&self) -> &str {
        match self {
            TokenHeader::Bearer => "authorization",
            TokenHeader::Raw(name) => name,
        }
    }

    /// The header value for `token`.
    pub fn value(&self, token: &str) -> String {
        match self {
            TokenHeader::Bearer => format!("Bearer {token}"),
            TokenHeader::Raw(_) => token.to_string(),
        }
    }
}

/// Settings of one webhook channel instance (`docs/vendors/kore-webhook-channel.md`,
/// "Integration modes" and "Async mode").
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    /// Sync answers in the HTTP response; async acknowledges and delivers to `post_url`.
    pub mode: Mode,
    /// V2 sync "Enable polling" (Kore's default): a pause in a turn yields a `pollId`.
    pub polling: bool,
    /// Where async replies are POSTed.
    pub post_url: Option<String>,
    /// Presented on every delivery; `None` sends no token header.
    pub access_token: Option<Secret>,
    /// Header form of `access_token`.
    pub token_header: TokenHeader,
    /// Pause between the acknowledgement and the first delivery of a turn.
    pub async_delay: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Sync,
            polling: true,
            post_url: None,
            access_token: None,
            token_header: TokenHeader::Bearer,
            async_delay: Duration::from_millis(10),
        }
    }
}

/// Everything the simulator needs; `Default` gives the values every test assumes.
#[derive(Clone, Debug)]
pub struct KoreSimConfig {
    /// The bot stream id in the path; any other id gets 404.
    pub bot_id: String,
    /// Expected `appId` claim.
    pub client_id: String,
    /// HMAC key of the JWT.
    pub client_secret: Secret,
    /// The only algorithm accepted.
    pub jwt_alg: JwtAlg,
    /// Kore's "Enforce JTI" app option: `jti` required, lifetime <= 1 h, no reuse.
    pub enforce_jti: bool,
    /// The first channel instance (paths without `hookInstance`), also used for instance ids
    /// not listed in `instances`.
    pub channel: ChannelConfig,
    /// Extra channel instances by their opaque id.
    pub instances: BTreeMap<String, ChannelConfig>,
    /// A synchronous answer slower than this becomes 504.
    pub sync_timeout: Duration,
    /// Added to every answer of the webhook routes (benchmarks use 50 ms / 200 ms).
    pub latency: Duration,
    /// Outage switch: every webhook call fails with this status.
    pub fail_all: Option<u16>,
    /// Per bot+user requests per rolling minute; `None` disables the limiter.
    pub rate_limit_per_minute: Option<u32>,
    /// Reply when no turn is scripted for the user; `None` echoes `You said: <text>`.
    pub default_reply: Option<Turn>,
    /// How many requests and deliveries the inspection log keeps.
    pub record_limit: usize,
}

impl Default for KoreSimConfig {
    fn default() -> Self {
        Self {
            bot_id: DEFAULT_BOT_ID.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: Secret::new(DEFAULT_CLIENT_SECRET),
            jwt_alg: JwtAlg::HS256,
            enforce_jti: false,
            channel: ChannelConfig::default(),
            instances: BTreeMap::new(),
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            latency: Duration::ZERO,
            fail_all: None,
            rate_limit_per_minute: None,
            default_reply: None,
            record_limit: DEFAULT_RECORD_LIMIT,
        }
    }
}

impl KoreSimConfig {
    /// Reads the `KORE_SIM_*` variables documented on the `kore-sim` binary.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let token_header = match env.get("KORE_SIM_TOKEN_HEADER") {
            None => TokenHeader::Bearer,
            Some(raw) => TokenHeader::from_name(&raw).map_err(|reason| ConfigError::Invalid {
                name: "KORE_SIM_TOKEN_HEADER".into(),
                value: raw,
                reason,
            })?,
        };
        let rate_limit = env.parse::<u32>("KORE_SIM_RATE_LIMIT", 0)?;
        let fail_all = env.parse::<u16>("KORE_SIM_FAIL_ALL", 0)?;
        let config = Self {
            bot_id: env.string("KORE_SIM_BOT_ID", &d.bot_id),
            client_id: env.string("KORE_SIM_CLIENT_ID", &d.client_id),
            client_secret: env
                .secret("KORE_SIM_CLIENT_SECRET")?
                .unwrap_or(d.client_secret),
            jwt_alg: env.parse("KORE_SIM_JWT_ALG", d.jwt_alg)?,
            enforce_jti: env.bool("KORE_SIM_ENFORCE_JTI", false)?,
            channel: ChannelConfig {
                mode: env.parse("KORE_SIM_MODE", Mode::Sync)?,
                polling: env.bool("KORE_SIM_POLLING", true)?,
                post_url: env.get("KORE_SIM_POST_URL"),
                access_token: env.secret("KORE_SIM_ACCESS_TOKEN")?,
                token_header,
                async_delay: env.duration("KORE_SIM_ASYNC_DELAY", d.channel.async_delay)?,
            },
            instances: BTreeMap::new(),
            sync_timeout: env.duration("KORE_SIM_SYNC_TIMEOUT", d.sync_timeout)?,
            latency: env.duration("KORE_SIM_LATENCY", Duration::ZERO)?,
            fail_all: (fail_all != 0).then_some(fail_all),
            rate_limit_per_minute: (rate_limit != 0).then_some(rate_limit),
            default_reply: None,
            record_limit: env.parse("KORE_SIM_RECORD_LIMIT", d.record_limit)?,
        };
        config.validate().map_err(|reason| ConfigError::Invalid {
            name: "KORE_SIM_*".into(),
            value: String::new(),
            reason,
        })?;
        Ok(config)
    }

    /// Cross-field checks: async channels need a POST_URL, statuses must be errors.
    pub fn validate(&self) -> Result<(), String> {
        let channels = std::iter::once((None, &self.channel))
            .chain(self.instances.iter().map(|(k, v)| (Some(k), v)));
        for (instance, channel) in channels {
            let name =
                instance.map_or("default channel".to_string(), |id| format!("instance {id}"));
            if channel.mode == Mode::Async && channel.post_url.is_none() {
                return Err(format!("{name}: async mode needs a POST_URL"));
            }
            if let Some(url) = &channel.post_url {
                reqwest::Url::parse(url).map_err(|e| format!("{name}: POST_URL {url:?}: {e}"))?;
            }
        }
        if let Some(status) = self.fail_all {
            if !(400..=599).contains(&status) {
                return Err(format!("fail_all must be a 4xx/5xx status, got {status}"));
            }
        }
        if self.record_limit == 0 {
            return Err("record_limit must be at least 1".into());
        }
        Ok(())
    }

    /// The channel serving `instance` (unknown ids fall back to the first channel).
    pub fn channel_for(&self, instance: Option<&str>) -> &ChannelConfig {
        instance
            .and_then(|id| self.instances.get(id))
            .unwrap_or(&self.channel)
    }

    /// A JSON view for `GET /sim/config`; secrets show as `***`.
    pub fn view(&self) -> Value {
        let channel = |c: &ChannelConfig| {
            json!({
                "mode": c.mode,
                "polling": c.polling,
                "postUrl": c.post_url,
                "accessToken": c.access_token.as_ref().map(|_| "***"),
                "tokenHeader": c.token_header.name(),
                "asyncDelayMs": millis(c.async_delay),
            })
        };
        json!({
            "botId": self.bot_id,
            "clientId": self.client_id,
            "clientSecret": "***",
            "jwtAlg": self.jwt_alg,
            "enforceJti": self.enforce_jti,
            "channel": channel(&self.channel),
            "instances": self.instances.iter().map(|(k, v)| (k.clone(), channel(v))).collect::<serde_json::Map<_, _>>(),
            "syncTimeoutMs": millis(self.sync_timeout),
            "latencyMs": millis(self.latency),
            "failAll": self.fail_all,
            "rateLimitPerMinute": self.rate_limit_per_minute,
            "defaultReply": self.default_reply,
            "recordLimit": self.record_limit,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A runtime change; absent fields keep their value. Channel fields apply to `instance` (the
/// first channel when absent). `failAll`, `rateLimitPerMinute` and `defaultReply` take `null`
/// to switch off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatch {
    pub instance: Option<String>,
    pub mode: Option<Mode>,
    pub polling: Option<bool>,
    pub post_url: Option<String>,
    pub access_token: Option<String>,
    pub token_header: Option<String>,
    pub async_delay_ms: Option<u64>,
    pub sync_timeout_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub fail_all: Option<Option<u16>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub default_reply: Option<Option<Turn>>,
    pub enforce_jti: Option<bool>,
}

/// Distinguishes an explicit `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Why a patch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError(pub String);

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatchError {}

impl ConfigPatch {
    /// Applies the patch to a copy of `config`; the copy is returned only if it validates.
    pub fn apply(&self, config: &KoreSimConfig) -> Result<KoreSimConfig, PatchError> {
        let mut next = config.clone();
        let channel = match &self.instance {
            None => &mut next.channel,
            Some(id) => {
                let base = config.channel.clone();
                next.instances.entry(id.clone()).or_insert(base)
            }
        };
        if let Some(mode) = self.mode {
            channel.mode = mode;
        }
        if let Some(polling) = self.polling {
            channel.polling = polling;
        }
        if let Some(url) = &self.post_url {
            channel.post_url = Some(url.clone());
        }
        if let Some(token) = &self.access_token {
            channel.access_token = Some(Secret::new(token.clone()));
        }
        if let Some(name) = &self.token_header {
            channel.token_header = TokenHeader::from_name(name).map_err(PatchError)?;
        }
        if let Some(ms) = self.async_delay_ms {
            channel.async_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.sync_timeout_ms {
            next.sync_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.latency_ms {
            next.latency = Duration::from_millis(ms);
        }
        if let Some(fail_all) = self.fail_all {
            next.fail_all = fail_all;
        }
        if let Some(limit) = self.rate_limit_per_minute {
            next.rate_limit_per_minute = limit;
        }
        if let Some(reply) = &self.default_reply {
            next.default_reply = reply.clone();
        }
        if let Some(enforce) = self.enforce_jti {
            next.enforce_jti = enforce;
        }
        next.validate().map_err(PatchError)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults_and_async_needs_a_post_url() {
        let env = Env::from_pairs([
            ("KORE_SIM_MODE", "async"),
            ("KORE_SIM_POST_URL", "http://127.0.0.1:9/kore"),
            ("KORE_SIM_TOKEN_HEADER", "X-Kore-Token"),
            ("KORE_SIM_JWT_ALG", "hs512"),
            ("KORE_SIM_LATENCY", "50ms"),
        ]);
        let config = KoreSimConfig::from_env(&env).unwrap();
        assert_eq!(config.channel.mode, Mode::Async);
        assert_eq!(
            config.channel.token_header,
            TokenHeader::Raw("x-kore-token".into())
        );
        assert_eq!(config.jwt_alg, JwtAlg::HS512);
        assert_eq!(config.latency, Duration::from_millis(50));
        assert_eq!(config.bot_id, DEFAULT_BOT_ID);

        let env = Env::from_pairs([("KORE_SIM_MODE", "async")]);
        assert!(KoreSimConfig::from_env(&env).is_err());
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let config = KoreSimConfig {
            fail_all: Some(503),
            ..KoreSimConfig::default()
        };
        let keep: ConfigPatch = serde_json::from_str(r#"{"latencyMs":5}"#).unwrap();
        assert_eq!(keep.apply(&config).unwrap().fail_all, Some(503));
        let clear: ConfigPatch = serde_json::from_str(r#"{"failAll":null}"#).unwrap();
        assert_eq!(clear.apply(&config).unwrap().fail_all, None);
        let bad: ConfigPatch = serde_json::from_str(r#"{"mode":"async"}"#).unwrap();
        assert!(bad.apply(&config).is_err());
    }

    #[test]
    fn view_hides_secrets() {
        let mut config = KoreSimConfig::default();
        config.channel.access_token = Some(Secret::new("tok-123"));
        let text = config.view().to_string();
        assert!(
            !text.contains(DEFAULT_CLIENT_SECRET) && !text.contains("tok-123"),
            "{text}"
        );
    }
}
