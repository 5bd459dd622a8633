//! End-to-end mode: events go into the ingress, the bot's replies are read back from
//! khoros-sim's request log (`GET /sim/requests?origin=BOT`), and each reply is matched to its
//! event by `coordinate.messageId`, which the worker echoes in every `/respond`.
//!
//! End-to-end latency = reply received at khoros-sim - intended send time of the event.
//! Pipeline overhead = end-to-end - the simulated bot latency (`KORE_SIM_LATENCY`): what the
//! ingress, JetStream, the worker and the Khoros call add to the bot's own time. khoros-sim
//! stamps its log in whole milliseconds, so each reply time is rounded *up* to the next
//! millisecond (latencies are over-, never under-stated, by less than 1 ms).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::{Clock, SystemClock};
use shared::topology::EVENTS_STREAM;

use super::events::{Event, Kind};
use super::http::Observer;
use super::stats::Latency;

/// Maps monotonic instants to epoch time, to compare with khoros-sim's timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Anchor {
    instant: Instant,
    epoch_us: i64,
}

impl Anchor {
    pub fn now() -> Self {
        let epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_else(|_| SystemClock.now_ms() * 1000);
        Self {
            instant: Instant::now(),
            epoch_us,
        }
    }

    pub fn epoch_us(&self, at: Instant) -> i64 {
        if at >= self.instant {
            self.epoch_us + (at - self.instant).as_micros() as i64
        } else {
            self.epoch_us - (self.instant - at).as_micros() as i64
        }
    }
}

/// What the ingress accepted, recorded by the HTTP target's observer.
#[derive(Default)]
pub struct Accepted {
    /// (messageId, intended send time) of every accepted message.
    pub messages: Vec<(String, Instant)>,
    pub updates: u64,
}

/// A shared record of accepted events and the observer that fills it.
pub fn recorder() -> (Arc<Mutex<Accepted>>, Observer) {
    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let sink = accepted.clone();
    let observer: Observer = Arc::new(move |event: &Event, at: Instant| {
        let mut sink = sink.lock().expect("recorder lock");
        match (event.kind, &event.message_id) {
            (Kind::Message, Some(id)) => sink.messages.push((id.clone(), at)),
            _ => sink.updates += 1,
        }
    });
    (accepted, observer)
}

/// One `/respond` seen at khoros-sim.
#[derive(Clone, Debug)]
pub struct Reply {
    pub message_id: String,
    /// khoros-sim's `createdEpochMillis`.
    pub at_ms: i64,
}

/// Every successful `/respond` in khoros-sim's log.
pub async fn fetch_replies(http: &reqwest::Client, khoros_url: &str) -> anyhow::Result<Vec<Reply>> {
    let records: Vec<Value> = http
        .get(format!(
            "{khoros_url}/sim/requests?origin=BOT&state=SUCCESS"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(records
        .iter()
        .filter(|r| r["details"]["path"].as_str() == Some("/bots/v3/respond"))
        .filter_map(|r| {
            let payload: Value = serde_json::from_str(r["payload"].as_str()?).ok()?;
            Some(Reply {
                message_id: payload["coordinate"]["messageId"].as_str()?.to_string(),
                at_ms: r["createdEpochMillis"].as_i64()?,
            })
        })
        .collect())
}

/// Number of Bot API calls khoros-sim logged so far.
pub async fn logged_calls(http: &reqwest::Client, khoros_url: &str) -> anyhow::Result<u64> {
    let state: Value = http
        .get(format!("{khoros_url}/sim/state"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(state["requests"].as_u64().unwrap_or(0))
}

/// Waits until khoros-sim logged `expected` calls, or nothing new arrived for `idle`.
pub async fn wait_for_calls(
    http: &reqwest::Client,
    khoros_url: &str,
    expected: u64,
    idle: Duration,
) -> anyhow::Result<u64> {
    let mut last = (0, Instant::now());
    loop {
        let n = logged_calls(http, khoros_url).await?;
        if n >= expected {
            return Ok(n);
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > idle {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events stored but not yet acknowledged by a worker, over every consumer of the events stream.
pub async fn unprocessed(js: &jetstream::Context) -> anyhow::Result<u64> {
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let mut names = stream.consumer_names();
    let mut left = 0;
    while let Some(name) = names.next().await {
        let info = stream.consumer_info(name?).await?;
        left += info.num_pending + info.num_ack_pending as u64;
    }
    Ok(left)
}

/// The end-to-end figures of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct E2eReport {
    pub bot_latency_ms: f64,
    /// Message events the ingress accepted (202).
    pub messages_accepted: u64,
    /// Update events the ingress accepted (202).
    pub updates_accepted: u64,
    /// Replies seen at khoros-sim for accepted messages (a message answered twice counts once).
    pub replies: u64,
    /// Messages answered more than once.
    pub duplicates: u64,
    /// Accepted messages never answered.
    pub lost: u64,
    /// Replies to messages this run did not send (should be 0).
    pub unexpected: u64,
    /// Events still unacknowledged in JetStream at the end (`null` when not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unprocessed: Option<u64>,
    /// Over messages intended after the warm-up.
    pub end_to_end: Latency,
    pub overhead: Latency,
}

impl E2eReport {
    /// One line: what went in, what came back, what is wrong.
    pub fn tally(&self) -> String {
        format!(
            "messages {} updates {} replies {} duplicates {} missing {} unexpected {} unacknowledged {}",
            self.messages_accepted,
            self.updates_accepted,
            self.replies,
            self.duplicates,
            self.lost,
            self.unexpected,
            self.unprocessed.unwrap_or(0)
        )
    }

    pub fn clean(&self) -> bool {
        self.duplicates == 0
            && self.lost == 0
            && self.unexpected == 0
            && self.unprocessed.unwrap_or(0) == 0
    }
}

/// Matches replies to accepted messages.
pub fn analyse(
    accepted: &Accepted,
    replies: &[Reply],
    anchor: &Anchor,
    counted_from: Instant,
    bot_latency: Duration,
) -> E2eReport {
    let mut by_id: HashMap<&str, Vec<i64>> = HashMap::new();
    for reply in replies {
        by_id
            .entry(reply.message_id.as_str())
            .or_default()
            .push(reply.at_ms);
    }
    let mut e2e = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut overhead = e2e.clone();
    let bot_us = bot_latency.as_micros() as i64;
    let mut report = E2eReport {
        bot_latency_ms: bot_latency.as_secs_f64() * 1000.0,
        messages_accepted: accepted.messages.len() as u64,
        updates_accepted: accepted.updates,
        ..E2eReport::default()
    };
    let mut ours = std::collections::HashSet::new();
    for (id, intended) in &accepted.messages {
        ours.insert(id.as_str());
        let Some(times) = by_id.get(id.as_str()) else {
            report.lost += 1;
            continue;
        };
        report.replies += 1;
        if times.len() > 1 {
            report.duplicates += 1;
        }
        if *intended < counted_from {
            continue;
        }
        let first = times.iter().min().copied().unwrap_or_default();
        let latency_us = (first + 1) * 1000 - anchor.epoch_us(*intended);
        e2e.saturating_record(latency_us.max(0) as u64);
        overhead.saturating_record((latency_us - bot_us).max(0) as u64);
    }
    report.unexpected = by_id.keys().filter(|id| !ours.contains(*id)).count() as u64;
    report.end_to_end = Latency::from_histogram(&e2e);
    report.overhead = Latency::from_histogram(&overhead);
    report
}

/// Throughput of a backlog drained with a bot of latency `bot`: replies / (last reply −
/// first reply + bot). The first reply's message was taken one bot latency before it came
/// back, so the span covers every wave of work; first-to-last alone misses one wave and
/// overstates the rate by 1/waves. Worker start-up is not counted (it precedes the first
/// reply).
/// A message answered twice counts once, at its first reply.
pub fn drain_rate(replies: &[Reply], bot: Duration) -> f64 {
    let mut first: HashMap<&str, i64> = HashMap::new();
    for r in replies {
        let at = first.entry(r.message_id.as_str()).or_insert(r.at_ms);
        *at = (*at).min(r.at_ms);
    }
    let (Some(lo), Some(hi)) = (first.values().min(), first.values().max()) else {
        return 0.0;
    };
    let span_s = (hi - lo) as f64 / 1000.0 + bot.as_secs_f64();
    (first.len() as f64 / span_s.max(1e-3) * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_counts_losses_duplicates_and_latency() {
        let anchor = Anchor::now();
        let t0 = anchor.instant;
        let accepted = Accepted {
            messages: vec![
                ("a".into(), t0),
                ("b".into(), t0 + Duration::from_millis(10)),
                ("c".into(), t0 + Duration::from_millis(20)),
            ],
            updates: 2,
        };
        let ms = |us: i64| us / 1000;
        let replies = vec![
            Reply {
                message_id: "a".into(),
                at_ms: ms(anchor.epoch_us + 55_000),
            },
            Reply {
                message_id: "b".into(),
                at_ms: ms(anchor.epoch_us + 66_000),
            },
            Reply {
                message_id: "b".into(),
                at_ms: ms(anchor.epoch_us + 90_000),
            },
            Reply {
                message_id: "zz".into(),
                at_ms: 0,
            },
        ];
        let report = analyse(&accepted, &replies, &anchor, t0, Duration::from_millis(50));
        assert_eq!(report.messages_accepted, 3);
        assert_eq!(report.replies, 2);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.lost, 1);
        assert_eq!(report.unexpected, 1);
        assert_eq!(report.end_to_end.count, 2);
        // 55 ms (+ up to 1 ms rounding) end to end, about 5-7 ms of overhead.
        assert!(report.end_to_end.p50_ms >= 55.0 && report.end_to_end.p50_ms <= 57.0);
        assert!(report.overhead.max_ms <= 7.1, "{:?}", report.overhead);
        assert!(!report.clean());
    }

    #[test]
    fn drain_rate_counts_every_wave() {
        // 8 waves of 64 replies, one per second (a 1 s bot, 64 at a time): 64 replies/s.
        let replies: Vec<Reply> = (0..512)
            .map(|i| Reply {
                message_id: i.to_string(),
                at_ms: 1_000 + (i / 64) * 1000 + i % 64,
            })
            .collect();
        let rate = drain_rate(&replies, Duration::from_secs(1));
        assert!((rate - 64.0).abs() < 1.0, "{rate}");
    }
}
