//! Settings tests may change while the sim runs (`GET`/`POST /sim/settings`): the `/respond`
//! answer mode, the webhook target and credentials, and the sender's knobs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::Secret;

use super::config::{Credentials, SenderConfig, Tamper, WebhookTarget};
use super::SimError;

#[derive(Clone, Debug)]
pub struct Settings {
    pub respond_accepted: bool,
    pub webhook: Option<WebhookTarget>,
    pub sender: SenderConfig,
    /// Field renames in the `data` of token refresh answers (an API drift the bridge must
    /// survive: the old token is in its grace whatever the body looks like).
    pub grant_renames: BTreeMap<String, String>,
}

/// Webhook credentials in JSON: `{"type":"hmac","apiKey":..,"secret":..}` or
/// `{"type":"basic","user":..,"password":..}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CredentialsPatch {
    #[serde(rename_all = "camelCase")]
    Hmac {
        api_key: String,
        secret: String,
    },
    Basic {
        user: String,
        password: String,
    },
}

impl From<CredentialsPatch> for Credentials {
    fn from(patch: CredentialsPatch) -> Self {
        match patch {
            CredentialsPatch::Hmac { api_key, secret } => Credentials::Hmac {
                api_key,
                secret: Secret::new(secret),
            },
            CredentialsPatch::Basic { user, password } => Credentials::Basic {
                user,
                password: Secret::new(password),
            },
        }
    }
}

/// A partial update; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    /// 200 (body) or 202 (empty) for `/respond`.
    pub respond_status: Option<u16>,
    /// The callback URL; `""` stops deliveries.
    pub webhook_url: Option<String>,
    pub webhook_auth: Option<CredentialsPatch>,
    pub retries: Option<u32>,
    pub retry_delay_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub emit_created: Option<bool>,
    pub sign_with_sim_clock: Option<bool>,
    /// Replaces the whole tamper set.
    pub tamper: Option<Tamper>,
    /// Replaces the refresh answer's field renames, e.g. `{"expiresAtMillis":"expiry"}`.
    pub grant_renames: Option<BTreeMap<String, String>>,
}

/// `GET /sim/settings` (secrets left out).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    pub respond_status: u16,
    pub webhook_url: Option<String>,
    /// `hmac`, `basic` or null.
    pub webhook_auth: Option<&'static str>,
    /// The HMAC api key or the Basic user.
    pub webhook_identity: Option<String>,
    pub retries: u32,
    pub retry_delay_ms: u128,
    pub timeout_ms: u128,
    pub emit_created: bool,
    pub sign_with_sim_clock: bool,
    pub lanes: usize,
    pub tamper: Tamper,
    pub grant_renames: BTreeMap<String, String>,
}

impl Settings {
    pub fn view(&self) -> SettingsView {
        let (auth, identity) = match self.webhook.as_ref().map(|w| &w.credentials) {
            Some(Credentials::Hmac { api_key, .. }) => (Some("hmac"), Some(api_key.clone())),
            Some(Credentials::Basic { user, .. }) => (Some("basic"), Some(user.clone())),
            None => (None, None),
        };
        SettingsView {
            respond_status: if self.respond_accepted { 202 } else { 200 },
            webhook_url: self.webhook.as_ref().map(|w| w.url.clone()),
            webhook_auth: auth,
            webhook_identity: identity,
            retries: self.sender.retries,
            retry_delay_ms: self.sender.retry_delay.as_millis(),
            timeout_ms: self.sender.timeout.as_millis(),
            emit_created: self.sender.emit_created,
            sign_with_sim_clock: self.sender.sign_with_sim_clock,
            lanes: self.sender.lanes,
            tamper: self.sender.tamper.clone(),
            grant_renames: self.grant_renames.clone(),
        }
    }

    /// Applies `patch` all or nothing.
    pub fn apply(&mut self, patch: SettingsPatch) -> Result<(), SimError> {
        let mut next = self.clone();
        if let Some(status) = patch.respond_status {
            next.respond_accepted = match status {
                200 => false,
                202 => true,
                other => {
                    return Err(SimError::Invalid(format!(
                        "respondStatus must be 200 or 202, got {other}"
                    )))
                }
            };
        }
        let credentials = patch.webhook_auth.map(Credentials::from);
        match (patch.webhook_url, credentials) {
            (Some(url), _) if url.is_empty() => next.webhook = None,
            (Some(url), credentials) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(SimError::Invalid(format!(
                        "webhookUrl must be http(s): {url}"
                    )));
                }
                let credentials = credentials
                    .or_else(|| next.webhook.as_ref().map(|w| w.credentials.clone()))
                    .ok_or_else(|| SimError::Invalid("webhookAuth is required".into()))?;
                next.webhook = Some(WebhookTarget { url, credentials });
            }
            (None, Some(credentials)) => match next.webhook.as_mut() {
                Some(target) => target.credentials = credentials,
                None => return Err(SimError::Invalid("webhookUrl is required".into())),
            },
            (None, None) => {}
        }
        if let Some(retries) = patch.retries {
            next.sender.retries = retries;
        }
        if let Some(ms) = patch.retry_delay_ms {
            next.sender.retry_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = patch.timeout_ms {
            if ms == 0 {
                return Err(SimError::Invalid("timeoutMs must be > 0".into()));
            }
            next.sender.timeout = Duration::from_millis(ms);
        }
        if let Some(flag) = patch.emit_created {
            next.sender.emit_created = flag;
        }
        if let Some(flag) = patch.sign_with_sim_clock {
            next.sender.sign_with_sim_clock = flag;
        }
        if let Some(tamper) = patch.tamper {
            if let Some(bad) = tamper.smm_headers.keys().find(|k| {
                !k.to_ascii_lowercase().starts_with("x-smm-")
                    || http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).is_err()
            }) {
                return Err(SimError::Invalid(format!(
                    "smmHeaders names must be x-smm-* header names, got {bad:?}"
                )));
            }
            next.sender.tamper = tamper;
        }
        if let Some(renames) = patch.grant_renames {
            next.grant_renames = renames;
        }
        *self = next;
        Ok(())
    }
}
