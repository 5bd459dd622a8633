//! The request log behind `GET /bots/v3/request/...` (`docs/vendors/khoros-bot-api-v3.md`,
//! "Request status lookup"): every Bot API call (origin
//! `BOT`) and every webhook delivery (origin `KHOROS`), keyed by its `x-amzn-RequestId`.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who made the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Origin {
    /// The bot called the Bot API.
    Bot,
    /// The Framework delivered an event to the bot.
    Khoros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestState {
    Pending,
    Success,
    Error,
}

/// One record, serialised exactly as the `data` of `docs/vendors/khoros-bot-api-v3.md`,
/// "Request status lookup".
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub id: String,
    pub company_key: String,
    pub external_id: String,
    pub network_key: String,
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub origin: Origin,
    pub state: RequestState,
    /// Free map: `code` and `message`, plus `method`/`path` for Bot API calls and
    /// `attempts` for deliveries.
    pub details: Map<String, Value>,
    /// The request body as a string, as Khoros stores it.
    pub payload: String,
    pub created_epoch_millis: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_epoch_millis: Option<i64>,
    pub last_updated_epoch_millis: i64,
}

/// Bounded log, oldest records dropped first so long benchmarks do not grow without limit.
#[derive(Debug)]
pub struct RequestLog {
    records: VecDeque<RequestRecord>,
    /// Sequence number of each id; index = seq - `first_seq`.
    index: HashMap<String, u64>,
    first_seq: u64,
    capacity: usize,
}

impl RequestLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::new(),
            index: HashMap::new(),
            first_seq: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&mut self, record: RequestRecord) {
        if self.records.len() >= self.capacity {
            if let Some(old) = self.records.pop_front() {
                self.index.remove(&old.id);
            }
            self.first_seq += 1;
        }
        let seq = self.first_seq + self.records.len() as u64;
        self.index.insert(record.id.clone(), seq);
        self.records.push_back(record);
    }

    pub fn get(&self, id: &str) -> Option<&RequestRecord> {
        let seq = *self.index.get(id)?;
        self.records.get((seq - self.first_seq) as usize)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut RequestRecord> {
        let seq = *self.index.get(id)?;
        self.records.get_mut((seq - self.first_seq) as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RequestRecord> {
        self.records.iter()
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.index.clear();
        self.first_seq = 0;
    }
}

/// The `from` window of the list endpoint: `<n>m`, `<n>h` or `<n>d`, at most 31 days.
pub fn parse_from(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let unit = raw.chars().last()?;
    let digits = &raw[..raw.len() - unit.len_utf8()];
    let n: i64 = digits.parse().ok().filter(|n| *n > 0)?;
    let ms = match unit {
        'm' => n.checked_mul(60_000)?,
        'h' => n.checked_mul(3_600_000)?,
        'd' => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    (ms <= 31 * 86_400_000).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            company_key: "acme".into(),
            external_id: "x".into(),
            network_key: "n".into(),
            app_id: "a".into(),
            callback_url: None,
            origin: Origin::Bot,
            state: RequestState::Success,
            details: Map::new(),
            payload: String::new(),
            created_epoch_millis: 0,
            completed_epoch_millis: None,
            last_updated_epoch_millis: 0,
        }
    }

    #[test]
    fn bounded_and_indexed() {
        let mut log = RequestLog::new(2);
        log.insert(record("a"));
        log.insert(record("b"));
        log.insert(record("c"));
        assert!(log.get("a").is_none());
        assert_eq!(log.get("c").unwrap().id, "c");
        assert_eq!(log.iter().count(), 2);
    }

    #[test]
    fn from_syntax() {
        assert_eq!(parse_from("1d"), Some(86_400_000));
        assert_eq!(parse_from("15m"), Some(900_000));
        assert_eq!(parse_from("31d"), Some(31 * 86_400_000));
        assert_eq!(parse_from("32d"), None);
        assert_eq!(parse_from("d"), None);
        assert_eq!(parse_from(""), None);
        assert_eq!(parse_from("5x"), None);
        assert_eq!(parse_from("5é"), None);
    }
}
