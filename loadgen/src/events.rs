//! The events the load generator sends: a deterministic mix of message and update events over
//! many conversations, each with a unique `x-amzn-RequestId`.
//!
//! Event `i` of a run is always the same body, so any task can build it without shared state.
//! Every `update_every`-th event is an update (CREATED, AGENT_RESPONSE, CLOSED in turn), the
//! rest are customer messages owned by our bot. Bodies have the shapes of
//! `docs/vendors/khoros-webhooks.md` (and of `khoros_sim::events`); they are formatted from
//! templates because the generator must stay cheap next to the service it measures (a unit
//! test checks they parse as the real model).

use shared::contract::ConversationKey;

/// The network and source of every generated conversation.
pub const NETWORK: &str = "brandmessenger";
pub const EXTERNAL_ID: &str = "bm-web-01";
pub const COMPANY: &str = "acme";

/// How conversations are picked for successive events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Message `m` goes to partition `m mod P`: at a fixed rate every partition sees one
    /// message every `P / rate` seconds, so none waits behind another conversation's turn.
    Even,
    /// Conversations picked by a hash of the sequence number: partitions collide as with real
    /// traffic (a message can wait for another conversation's turn on its partition).
    Random,
    /// A conversation picked at random from `conversations` keys that know nothing of the
    /// partition count (the worker phases run the default PARTITIONS, whatever it is).
    Pool,
    /// Every message its own conversation (a key of its own, hashed wherever it lands).
    Unique,
}

impl std::str::FromStr for Spread {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "even" => Ok(Spread::Even),
            "random" => Ok(Spread::Random),
            "pool" => Ok(Spread::Pool),
            "unique" => Ok(Spread::Unique),
            other => Err(format!(
                "spread must be even, random, pool or unique, not {other:?}"
            )),
        }
    }
}

/// What kind of event a sequence number is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Update,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Update => "update",
        }
    }
}

/// One generated event.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    /// `x-amzn-RequestId`.
    pub request_id: String,
    /// `coordinate.messageId` of a message (what the bot's `/respond` echoes back).
    pub message_id: Option<String>,
    /// `CREATED`, `AGENT_RESPONSE` or `CLOSED` for updates.
    pub operation: Option<&'static str>,
    pub partition: u32,
    pub body: Vec<u8>,
}

/// Builds event `i` of a run.
#[derive(Clone, Debug)]
pub struct EventSource {
    /// Unique per run, so reruns against one store never collide in the dedup window.
    run: String,
    app_id: String,
    partitions: u32,
    /// Every `update_every`-th event is an update; 0 = messages only.
    update_every: u64,
    spread: Spread,
    /// `authors[p]`: conversation authors whose key hashes to partition `p`.
    authors: Vec<Vec<String>>,
    /// Conversations of [`Spread::Pool`].
    pool: u64,
}

const UPDATE_OPERATIONS: [&str; 3] = ["CREATED", "AGENT_RESPONSE", "CLOSED"];

impl EventSource {
    /// `conversations` authors (at least one per partition), spread over `partitions`.
    pub fn new(
        run: &str,
        app_id: &str,
        partitions: u32,
        conversations: usize,
        update_every: u64,
        spread: Spread,
    ) -> Self {
        let partitions = partitions.max(1);
        let per_partition = conversations.div_ceil(partitions as usize).max(1);
        let mut authors = vec![Vec::with_capacity(per_partition); partitions as usize];
        let mut filled = 0;
        let mut n = 0u64;
        while filled < partitions as usize {
            let author = format!("lg-{run}-{n}");
            n += 1;
            let p = partition_of(&author, partitions) as usize;
            if authors[p].len() < per_partition {
                authors[p].push(author);
                if authors[p].len() == per_partition {
                    filled += 1;
                }
            }
        }
        Self {
            run: run.to_string(),
            app_id: app_id.to_string(),
            partitions,
            update_every,
            spread,
            authors,
            pool: conversations.max(1) as u64,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn conversations(&self) -> usize {
        self.authors.iter().map(Vec::len).sum()
    }

    /// The kind of event `i`, and its index among events of that kind.
    pub fn kind_of(&self, i: u64) -> (Kind, u64) {
        match self.update_every {
            0 => (Kind::Message, i),
            n if (i + 1) % n == 0 => (Kind::Update, (i + 1) / n - 1),
            n => (Kind::Message, i - (i + 1) / n),
        }
    }

    /// Number of messages among events `0..events`.
    pub fn messages_in(&self, events: u64) -> u64 {
        match self.update_every {
            0 => events,
            n => events - events / n,
        }
    }

    fn author(&self, index: u64, salt: u64) -> (std::borrow::Cow<'_, str>, u32) {
        let p = self.partitions as u64;
        let (partition, slot) = match self.spread {
            Spread::Even => (index % p, index / p),
            Spread::Random => {
                let h = mix(index ^ salt);
                (h % p, h / p)
            }
            Spread::Pool | Spread::Unique => {
                let k = match self.spread {
                    Spread::Pool => mix(index ^ salt) % self.pool,
                    _ => index,
                };
                let author = format!("lg-{}-c{k}", self.run);
                let partition = partition_of(&author, self.partitions);
                return (author.into(), partition);
            }
        };
        let bucket = &self.authors[partition as usize];
        (
            bucket[(slot % bucket.len() as u64) as usize]
                .as_str()
                .into(),
            partition as u32,
        )
    }

    /// Event `i`, timestamped `now_ms`.
    pub fn event(&self, i: u64, now_ms: i64) -> Event {
        let (kind, index) = self.kind_of(i);
        let request_id = format!("{}-{i:010}", self.run);
        match kind {
            Kind::Message => {
                let (author, partition) = self.author(index, 0);
                let message_id = format!("{}-m{index}", self.run);
                let body = format!(
                    concat!(
                        r#"{{"type":"message","coordinate":{{"companyKey":"{company}","networkKey":"{network}","#,
                        r#""externalId":"{external}","messageId":"{mid}","botId":"{app}","scope":"PRIVATE"}},"#,
                        r#""author":{{"id":"{author}","fullName":"Load Tester"}},"#,
                        r#""owner":{{"type":"BOT","appId":"{app}"}},"#,
                        r#""text":"Where is my order {index}?","publishedTS":{ts},"receivedTS":{ts},"properties":{{}}}}"#
                    ),
                    company = COMPANY,
                    network = NETWORK,
                    external = EXTERNAL_ID,
                    mid = message_id,
                    app = self.app_id,
                    author = author,
                    index = index,
                    ts = now_ms,
                );
                Event {
                    kind,
                    request_id,
                    message_id: Some(message_id),
                    operation: None,
                    partition,
                    body: body.into_bytes(),
                }
            }
            Kind::Update => {
                let (author, partition) = self.author(index, 0x5eed);
                let operation = UPDATE_OPERATIONS[(index % 3) as usize];
                let extra = match operation {
                    "AGENT_RESPONSE" => format!(
                        r#","agentResponse":{{"publishDate":{now_ms},"text":"An agent wrote back"}}"#
                    ),
                    _ => String::new(),
                };
                let status = match operation {
                    "CREATED" => r#","status":"ASSIGNED""#,
                    _ => r#","dispositionId":1"#,
                };
                let body = format!(
                    concat!(
                        r#"{{"type":"update","operation":"{op}","coordinate":{{"companyKey":"{company}","#,
                        r#""networkKey":"{network}","externalId":"{external}","botId":"{app}","#,
                        r#""normalizedAuthorId":"{author}","scope":"PRIVATE"}},"#,
                        r#""author":{{"id":"{author}","fullName":"Load Tester"}},"#,
                        r#""conversation":{{"displayId":{display}{status}}}{extra}}}"#
                    ),
                    op = operation,
                    company = COMPANY,
                    network = NETWORK,
                    external = EXTERNAL_ID,
                    app = self.app_id,
                    author = author,
                    display = 512_000 + index,
                    status = status,
                    extra = extra,
                );
                Event {
                    kind,
                    request_id,
                    message_id: None,
                    operation: Some(operation),
                    partition,
                    body: body.into_bytes(),
                }
            }
        }
    }
}

/// The partition the ingress computes for an author of a generated conversation.
pub fn partition_of(author: &str, partitions: u32) -> u32 {
    ConversationKey {
        network: NETWORK,
        external_id: EXTERNAL_ID,
        author_id: author,
    }
    .partition(partitions)
}

/// splitmix64: a cheap, well-spread hash of a sequence number.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::contract::RouteFields;
    use shared::event::{Event as Model, Operation};

    fn source(spread: Spread) -> EventSource {
        EventSource::new("t1", "kore-bridge", 16, 64, 5, spread)
    }

    #[test]
    fn bodies_parse_as_the_event_model_and_route_where_expected() {
        let source = source(Spread::Even);
        let mut operations = Vec::new();
        for i in 0..30 {
            let event = source.event(i, 1_700_000_000_000);
            let routed: RouteFields = serde_json::from_slice(&event.body).unwrap();
            assert_eq!(routed.kind.as_deref(), Some(event.kind.as_str()));
            assert_eq!(routed.conversation_key().partition(16), event.partition);
            match serde_json::from_slice::<Model>(&event.body).unwrap() {
                Model::Message(m) => {
                    assert_eq!(event.kind, Kind::Message);
                    assert_eq!(m.coordinate.message_id, event.message_id);
                    assert!(m.owner.unwrap().is_bot("kore-bridge"));
                }
                Model::Update(u) => {
                    assert_eq!(event.kind, Kind::Update);
                    assert!(u.conversation.unwrap().display_id.is_some());
                    operations.push(u.operation);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(operations.len(), 6);
        assert!(operations.contains(&Operation::AgentResponse));
        assert!(operations.contains(&Operation::Closed));
    }

    #[test]
    fn even_spread_cycles_partitions_and_counts_add_up() {
        let source = source(Spread::Even);
        let messages: Vec<_> = (0..100)
            .map(|i| source.event(i, 0))
            .filter(|e| e.kind == Kind::Message)
            .collect();
        assert_eq!(messages.len() as u64, source.messages_in(100));
        for (m, event) in messages.iter().enumerate() {
            assert_eq!(event.partition, m as u32 % 16);
        }
        let ids: std::collections::HashSet<_> =
            (0..100).map(|i| source.event(i, 0).request_id).collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(source.conversations(), 64);
        let random = self::source(Spread::Random);
        let spread: std::collections::HashSet<_> =
            (0..200).map(|i| random.event(i, 0).partition).collect();
        assert!(spread.len() > 12);
    }

    fn author(event: &Event) -> String {
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        body["author"]["id"].as_str().unwrap().to_string()
    }

    #[test]
    fn unique_and_pool_keys_ignore_the_partition_count() {
        use std::collections::HashSet;
        let unique = EventSource::new("t2", "kore-bridge", 1, 8, 0, Spread::Unique);
        let authors: HashSet<_> = (0..2048).map(|i| author(&unique.event(i, 0))).collect();
        assert_eq!(authors.len(), 2048);
        // They land all over a partition count the source was never told.
        let spread: HashSet<_> = authors.iter().map(|a| partition_of(a, 256)).collect();
        assert!(spread.len() > 240, "{}", spread.len());
        let pool = EventSource::new("t3", "kore-bridge", 1, 64, 0, Spread::Pool);
        let authors: HashSet<_> = (0..2000).map(|i| author(&pool.event(i, 0))).collect();
        assert!(
            authors.len() > 56 && authors.len() <= 64,
            "{}",
            authors.len()
        );
    }
}
