//! Client of the Kore.ai Webhook channel (`docs/vendors/kore-webhook-channel.md`): JWT signing,
//! V1/V2 requests, sync and async modes, V2 polling, and parsing every answer shape into
//! [`BotAnswer`].
//!
//! A turn is never resent once it may have reached Kore (a timeout, a 504): the bot could act
//! twice. Polls only read, so they are retried like any GET.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::upstream::{self, OnLostAnswer, UpstreamError};
use crate::Secret;

const API: &str = "kore";
/// Opening a connection gives up sooner than the call, so a dead host is a connect error
/// (retried) rather than a timeout (which, for a turn, is final).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest poll id or Kore user id put into a URL or a KV key.
const MAX_ID_LEN: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KoreVersion {
    V1,
    V2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KoreMode {
    /// The answer is in the HTTP response (15 s limit).
    Sync,
    /// The call is only acknowledged; answers arrive later at our callback.
    Async,
}

/// How to reach one Webhook channel instance.
#[derive(Clone, Debug)]
pub struct KoreConfig {
    /// `KORE_URL`, e.g. `https://bots.kore.ai`.
    pub base_url: String,
    /// `KORE_BOT_ID`: the bot's stream id `st-...`.
    pub bot_id: String,
    /// `KORE_HOOK_INSTANCE`: extra channel instance id, absent for the first instance.
    pub hook_instance: Option<String>,
    /// `KORE_CLIENT_ID`: the app's client id, sent as the `appId` claim.
    pub client_id: String,
    /// `KORE_CLIENT_SECRET`: signs the JWT.
    pub client_secret: Secret,
    /// `KORE_JWT_ALG`: HS256 (default) or HS512.
    pub algorithm: Algorithm,
    pub version: KoreVersion,
    pub mode: KoreMode,
    /// `KORE_TIMEOUT`: per call; Kore itself gives up on sync calls after 15 s.
    pub timeout: Duration,
}

impl KoreConfig {
    pub fn hook_path(&self) -> String {
        let base = match self.version {
            KoreVersion::V1 => format!("/chatbot/hooks/{}", self.bot_id),
            KoreVersion::V2 => format!("/chatbot/v2/webhook/{}", self.bot_id),
        };
        match &self.hook_instance {
            Some(instance) => format!("{base}/hookInstance/{instance}"),
            None => base,
        }
    }

    /// The V2 poll path. It has no `hookInstance` segment: polls of every channel instance
    /// share it (`docs/vendors/kore-webhook-channel.md`, "Endpoints"). Only for a valid id.
    pub fn poll_path(&self, poll_id: &str) -> String {
        format!("/chatbot/v2/webhook/{}/poll/{poll_id}", self.bot_id)
    }
}

/// A sync answer: the bot's messages so far and, in V2 with polling, the `pollId` under
/// which the rest of the turn is collected (`docs/vendors/kore-webhook-channel.md`,
/// "V2 polling").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncAnswer {
    pub answer: BotAnswer,
    pub poll_id: Option<String>,
}

/// What one poll found.
#[derive(Clone, Debug, PartialEq)]
pub enum Polled {
    /// The slow part of the turn is still running: poll again later.
    InProgress,
    /// The next messages, with the next `pollId` when another slow part follows.
    Ready(SyncAnswer),
    /// Unknown, already collected, or not a poll id we would put in a URL: nothing more.
    Gone,
}

/// `[A-Za-z0-9_-]{1,128}`: safe as a URL path segment and as a NATS KV key token.
pub(crate) fn is_safe_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a `pollId` may be put into the poll URL (Kore's ids are hex; the answer is
/// untrusted input all the same).
pub fn is_valid_poll_id(poll_id: &str) -> bool {
    is_safe_id(poll_id)
}

/// One user turn to send to the bot.
#[derive(Clone, Debug, Default)]
pub struct UserTurn {
    /// `from.id`: the Khoros author id.
    pub user_id: String,
    pub first_name: Option<String>,
    pub text: String,
    /// Attachment URLs (customer media).
    pub attachments: Vec<String>,
    /// Khoros coordinate and conversation details for the dialog.
    pub custom_data: Value,
}

/// One message of the bot, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BotItem {
    Text(String),
    /// A Kore template object (`{"type":"template","payload":{...}}`, image, video, ...).
    Template(Value),
}

/// Everything the bot said in one turn, plus the task-end fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BotAnswer {
    pub items: Vec<BotItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_task_name: Option<String>,
    #[serde(default)]
    pub end_of_task: bool,
}

impl BotAnswer {
    /// V1 sync answer or async delivery: `text` is a string, an object or an array of both.
    pub fn from_v1(value: &Value) -> Self {
        let mut items = Vec::new();
        match value.get("text") {
            Some(Value::Array(list)) => items.extend(list.iter().filter_map(item_from_value)),
            Some(other) => items.extend(item_from_value(other)),
            None => {}
        }
        Self::with_task_fields(items, value)
    }

    /// V2 sync answer or async delivery: `data[]` of typed items.
    pub fn from_v2(value: &Value) -> Self {
        let items = value
            .get("data")
            .and_then(Value::as_array)
            .map(|data| {
                data.iter()
                    .filter(|d| d.get("type").and_then(Value::as_str) != Some("event"))
                    .filter_map(|d| d.get("val").and_then(item_from_value))
                    .collect()
            })
            .unwrap_or_default();
        Self::with_task_fields(items, value)
    }

    /// Either version, chosen by shape (`data` means V2).
    pub fn from_any(value: &Value) -> Self {
        if value.get("data").is_some() {
            Self::from_v2(value)
        } else {
            Self::from_v1(value)
        }
    }

    fn with_task_fields(items: Vec<BotItem>, value: &Value) -> Self {
        Self {
            items,
            completed_task_name: value
                .get("completedTaskName")
                .and_then(Value::as_str)
                .map(str::to_owned),
            end_of_task: value
                .get("endOfTask")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// A string that parses as a template object is a template (`docs/vendors/kore-webhook-channel.md`,
/// "V2 answer"); else text.
fn item_from_value(value: &Value) -> Option<BotItem> {
    match value {
        Value::String(text) => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('{') {
                if let Ok(obj @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                    if obj.get("type").is_some() || obj.get("payload").is_some() {
                        return Some(BotItem::Template(obj));
                    }
                }
            }
            Some(BotItem::Text(text.clone()))
        }
        Value::Object(_) => Some(BotItem::Template(value.clone())),
        Value::Null => None,
        other => Some(BotItem::Text(other.to_string())),
    }
}

/// The user id a Kore async delivery is addressed to (`to`).
pub fn delivery_recipient(value: &Value) -> Option<&str> {
    value.get("to").and_then(Value::as_str)
}

/// Claims of the channel JWT (`docs/vendors/kore-webhook-channel.md`, "Claims").
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Claims<'a> {
    app_id: &'a str,
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_identity: Option<&'a str>,
}

/// Calls the Webhook channel.
#[derive(Clone)]
pub struct KoreClient {
    http: reqwest::Client,
    config: KoreConfig,
    key: EncodingKey,
}

impl KoreClient {
    pub fn new(config: KoreConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(CONNECT_TIMEOUT))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("static reqwest configuration is valid");
        let key = EncodingKey::from_secret(config.client_secret.expose().as_bytes());
        Self { http, config, key }
    }

    pub fn config(&self) -> &KoreConfig {
        &self.config
    }

    /// A short-lived token for one user: `appId` = client id, `sub` = the user,
    /// V2 `userIdentity` = the user (binds the token to `from.id`).
    pub fn token_for(&self, user_id: &str, now_s: i64) -> String {
        let claims = Claims {
            app_id: &self.config.client_id,
            sub: user_id,
            iat: now_s,
            exp: now_s + 300,
            user_identity: (self.config.version == KoreVersion::V2).then_some(user_id),
        };
        let mut header = Header::new(self.config.algorithm);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("HMAC JWT encoding cannot fail")
    }

    /// The request body for a turn, in the configured version's shape.
    pub fn body(&self, turn: &UserTurn) -> Value {
        let attachments: Vec<Value> = turn
            .attachments
            .iter()
            .map(|url| json!({ "url": url }))
            .collect();
        let text = if turn.text.is_empty() && !attachments.is_empty() {
            // Kore requires a non-empty text when attachments are sent (V2 rule).
            "(attachment)".to_string()
        } else {
            turn.text.clone()
        };
        let mut message = match self.config.version {
            KoreVersion::V1 => json!({ "text": text }),
            KoreVersion::V2 => json!({ "type": "text", "val": text }),
        };
        if !attachments.is_empty() {
            message["attachments"] = Value::Array(attachments);
        }
        let mut from = json!({ "id": turn.user_id });
        if let Some(name) = &turn.first_name {
            from["userInfo"] = json!({ "firstName": name });
        }
        json!({
            "session": { "new": false },
            "message": message,
            "from": from,
            "to": { "id": self.config.bot_id },
            "customData": turn.custom_data,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// Sends a turn. Sync mode returns the answer (with V2's `pollId` when the turn goes on);
    /// async mode returns `None` once Kore acknowledged.
    ///
    /// Never retryable once the turn may have reached Kore: a timeout, or a 504 (Kore gave up
    /// on a sync turn it may still complete); resending could make the bot act twice
    /// (`docs/vendors/kore-webhook-channel.md`, "Errors, limits and timeouts"). 429, other
    /// 5xx and connections that could not be opened are retryable.
    pub async fn send(
        &self,
        turn: &UserTurn,
        now_s: i64,
    ) -> Result<Option<SyncAnswer>, UpstreamError> {
        let request = self
            .http
            .post(self.url(&self.config.hook_path()))
            .bearer_auth(self.token_for(&turn.user_id, now_s))
            .json(&self.body(turn));
        let (_, bytes) = upstream::send_with(API, "webhook", request, OnLostAnswer::GiveUp, |s| {
            s == 429 || (s >= 500 && s != 504)
        })
        .await?;
        if self.config.mode == KoreMode::Async {
            return Ok(None);
        }
        let value = decode("webhook", &bytes)?;
        Ok(Some(match self.config.version {
            KoreVersion::V1 => SyncAnswer {
                answer: BotAnswer::from_v1(&value),
                poll_id: None,
            },
            KoreVersion::V2 => sync_answer_v2(&value),
        }))
    }

    /// Collects the next part of a V2 sync turn (`docs/vendors/kore-webhook-channel.md`,
    /// "V2 polling"), with the same user-bound JWT as the turn. An invalid `poll_id` is never
    /// sent: [`Polled::Gone`]. Errors other than "No data found" are retryable as for any
    /// GET (429, 5xx, timeouts, connection errors).
    pub async fn poll(
        &self,
        user_id: &str,
        poll_id: &str,
        now_s: i64,
    ) -> Result<Polled, UpstreamError> {
        if !is_valid_poll_id(poll_id) {
            tracing::warn!(
                poll_id,
                "kore.ai pollId not usable in a URL; treated as gone"
            );
            return Ok(Polled::Gone);
        }
        let request = self
            .http
            .get(self.url(&self.config.poll_path(poll_id)))
            .bearer_auth(self.token_for(user_id, now_s));
        match upstream::send(API, "poll", request, upstream::transient).await {
            Ok((_, bytes)) => Ok(polled(&decode("poll", &bytes)?)),
            Err(e) if is_no_data_found(&e) => Ok(Polled::Gone),
            Err(e) => Err(e),
        }
    }
}

fn decode(endpoint: &'static str, bytes: &[u8]) -> Result<Value, UpstreamError> {
    serde_json::from_slice(bytes).map_err(|e| UpstreamError::Decode {
        endpoint,
        reason: e.to_string(),
    })
}

fn sync_answer_v2(value: &Value) -> SyncAnswer {
    SyncAnswer {
        answer: BotAnswer::from_v2(value),
        poll_id: value
            .get("pollId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
    }
}

/// A 2xx poll answer: `{"status":"Inprogress",...}` or a normal V2 answer.
fn polled(value: &Value) -> Polled {
    let status = value.get("status").and_then(Value::as_str);
    if status.is_some_and(|s| s.eq_ignore_ascii_case("inprogress")) {
        Polled::InProgress
    } else {
        Polled::Ready(sync_answer_v2(value))
    }
}

/// 400 `{"errors":[{"msg":"No data found",...}]}`: the poll id is unknown or was collected.
fn is_no_data_found(error: &UpstreamError) -> bool {
    error.status() == Some(400)
        && serde_json::from_str::<Value>(error.body_excerpt())
            .ok()
            .and_then(|v| {
                v.pointer("/errors/0/msg")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .is_some_and(|msg| msg.eq_ignore_ascii_case("no data found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(version: KoreVersion, alg: Algorithm) -> KoreClient {
        client_at("http://127.0.0.1:1", version, alg)
    }

    fn client_at(base_url: &str, version: KoreVersion, alg: Algorithm) -> KoreClient {
        KoreClient::new(KoreConfig {
            base_url: base_url.into(),
            bot_id: "st-1".into(),
            hook_instance: None,
            client_id: "cs-00000000-test-app".into(),
            client_secret: Secret::new("kore-test-client-secret-123"),
            algorithm: alg,
            version,
            mode: KoreMode::Sync,
            timeout: Duration::from_millis(300),
        })
    }

    #[test]
    fn jwt_verifies_with_the_secret_and_carries_the_claims() {
        for alg in [Algorithm::HS256, Algorithm::HS512] {
            let token = client(KoreVersion::V2, alg).token_for("user-42", 1_700_000_000);
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.validate_exp = false;
            validation.required_spec_claims.clear();
            let data = jsonwebtoken::decode::<Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"kore-test-client-secret-123"),
                &validation,
            )
            .unwrap();
            assert_eq!(data.claims["appId"], "cs-00000000-test-app");
            assert_eq!(data.claims["sub"], "user-42");
            assert_eq!(data.claims["userIdentity"], "user-42");
            assert_eq!(data.claims["exp"], 1_700_000_300);
        }
        let v1 = client(KoreVersion::V1, Algorithm::HS256).token_for("u", 0);
        assert!(!String::from_utf8(base64_payload(&v1))
            .unwrap()
            .contains("userIdentity"));
    }

    fn base64_payload(token: &str) -> Vec<u8> {
        use base64::Engine;
        let part = token.split('.').nth(1).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap()
    }

    #[test]
    fn answers_parse_in_all_shapes() {
        let single = BotAnswer::from_v1(&json!({"text": "Hello!"}));
        assert_eq!(single.items, vec![BotItem::Text("Hello!".into())]);
        let qr = json!({"type":"template","payload":{"template_type":"quick_replies","text":"Anything else?","quick_replies":[]}});
        let many = BotAnswer::from_v1(
            &json!({"text": ["Shipped.", qr], "endOfTask": true, "completedTaskName": "Order Status"}),
        );
        assert_eq!(
            many.items,
            vec![
                BotItem::Text("Shipped.".into()),
                BotItem::Template(qr.clone())
            ]
        );
        assert_eq!(many.completed_task_name.as_deref(), Some("Order Status"));
        assert!(many.end_of_task);
        let v2 = BotAnswer::from_v2(&json!({"data": [
            {"type": "text", "val": "One"},
            {"type": "text", "val": qr.to_string()},
            {"type": "event", "val": "SESSION_CLOSURE"}
        ], "_v": "v2"}));
        assert_eq!(
            v2.items,
            vec![BotItem::Text("One".into()), BotItem::Template(qr)]
        );
        assert_eq!(
            BotAnswer::from_any(&json!({"data": [{"type":"text","val":"x"}]}))
                .items
                .len(),
            1
        );
        assert_eq!(
            BotAnswer::from_v1(&json!({"text": "{not json"})).items,
            vec![BotItem::Text("{not json".into())]
        );
    }

    #[test]
    fn bodies_follow_the_version() {
        let turn = UserTurn {
            user_id: "u".into(),
            text: "hi".into(),
            attachments: vec!["https://m/x.png".into()],
            ..Default::default()
        };
        let v1 = client(KoreVersion::V1, Algorithm::HS256).body(&turn);
        assert_eq!(v1["message"]["text"], "hi");
        assert_eq!(v1["message"]["attachments"][0]["url"], "https://m/x.png");
        assert_eq!(v1["from"]["id"], "u");
        let v2 = client(KoreVersion::V2, Algorithm::HS256).body(&turn);
        assert_eq!(v2["message"]["type"], "text");
        assert_eq!(v2["message"]["val"], "hi");
        assert_eq!(
            client(KoreVersion::V2, Algorithm::HS256)
                .config()
                .hook_path(),
            "/chatbot/v2/webhook/st-1"
        );
    }

    #[test]
    fn ids_outside_the_safe_alphabet_are_refused() {
        assert!(is_valid_poll_id("0123456789abcdef0123456789abcdef"));
        assert!(is_valid_poll_id("A-z_9"));
        assert!(is_valid_poll_id(&"a".repeat(128)));
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a.b",
            "%2e",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_poll_id(bad), "{bad:?}");
            assert_eq!(crate::contract::keys::turn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn poll_answers_parse() {
        assert_eq!(
            polled(&json!({"status": "Inprogress", "pollId": "p1", "_v": "v2"})),
            Polled::InProgress
        );
        let more = json!({"data": [{"type": "text", "val": "b"}], "_v": "v2", "pollId": "p2"});
        assert_eq!(
            polled(&more),
            Polled::Ready(SyncAnswer {
                answer: BotAnswer {
                    items: vec![BotItem::Text("b".into())],
                    ..Default::default()
                },
                poll_id: Some("p2".into()),
            })
        );
        let last = polled(&json!({"data": [], "_v": "v2", "endOfTask": true}));
        let Polled::Ready(last) = last else {
            panic!("ready expected")
        };
        assert!(last.answer.end_of_task);
        assert_eq!(last.poll_id, None);
        let error = |msg: &str| UpstreamError::Status {
            endpoint: "poll",
            status: 400,
            body: json!({"errors": [{"msg": msg, "code": 400}]}).to_string(),
            retry_after: None,
            retryable: false,
        };
        assert!(is_no_data_found(&error("No data found")));
        assert!(!is_no_data_found(&error("Invalid Request Payload")));
    }

    #[test]
    fn the_poll_path_has_no_hook_instance() {
        let mut config = client(KoreVersion::V2, Algorithm::HS256).config().clone();
        config.hook_instance = Some("inst-2".into());
        assert_eq!(
            config.hook_path(),
            "/chatbot/v2/webhook/st-1/hookInstance/inst-2"
        );
        assert_eq!(config.poll_path("p1"), "/chatbot/v2/webhook/st-1/poll/p1");
    }

    #[tokio::test]
    async fn an_invalid_poll_id_is_never_sent() {
        // Port 1 refuses connections: a request would fail, `Gone` proves none was made.
        let polled = client(KoreVersion::V2, Algorithm::HS256)
            .poll("u", "../../admin", 0)
            .await
            .unwrap();
        assert_eq!(polled, Polled::Gone);
    }

    /// A server that accepts connections and reads, but never answers.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_timed_out_turn_is_final_but_a_refused_connection_is_retried() {
        use crate::retry::RetryClass;
        let turn = UserTurn {
            user_id: "u".into(),
            text: "hi".into(),
            ..Default::default()
        };
        let silent = client_at(&silent_server().await, KoreVersion::V2, Algorithm::HS256);
        let timed_out = silent.send(&turn, 0).await.unwrap_err();
        assert!(
            matches!(timed_out, UpstreamError::Timeout { .. }),
            "{timed_out:?}"
        );
        assert!(!timed_out.is_retryable());
        let poll = silent.poll("u", "p1", 0).await.unwrap_err();
        assert!(matches!(poll, UpstreamError::Timeout { .. }), "{poll:?}");
        assert!(poll.is_retryable());

        let refused = client(KoreVersion::V2, Algorithm::HS256)
            .send(&turn, 0)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, UpstreamError::Connect { .. }),
            "{refused:?}"
        );
        assert!(refused.is_retryable());
    }
}
