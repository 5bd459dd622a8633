//! Worker scaling: a backlog of message events, each its own conversation (keys hashed
//! wherever they land, so they spread over the partitions whatever their number), goes
//! through the ingress into the stream before any worker runs; then 1, 2 or 4 replicas start
//! together, in their default configuration, and drain it against a slow bot. Replies are
//! counted at khoros-sim; throughput is [`e2e::drain_rate`]. One replica's bound is
//! WORKER_CONCURRENCY (its default) ÷ bot latency.

use super::*;

/// The worker's default WORKER_CONCURRENCY (`worker/src/config.rs`); the bench never sets it.
pub const DEFAULT_CONCURRENCY: f64 = 64.0;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleRun {
    pub replicas: usize,
    pub bot_ms: u64,
    /// Messages in the backlog, one conversation each.
    pub events: u64,
    /// Subjects of the events stream the backlog landed on, and the most events one held
    /// (a worker that takes one event per subject at a time drains no faster than that).
    pub subjects: u64,
    pub deepest_subject: u64,
    pub report: E2eReport,
    /// Replies per second while the backlog drained.
    pub throughput: f64,
    /// One replica: throughput ÷ (DEFAULT_CONCURRENCY ÷ bot latency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of_bound: Option<f64>,
    /// Seconds from starting the replicas to the last reply (start-up included).
    pub wall_s: f64,
    /// Throughput over the first run's (1 replica).
    pub speedup: f64,
}

/// Speed-ups over the first run, and its share of the concurrency bound.
pub fn speedups(runs: &mut [ScaleRun]) {
    let base = runs.first().map_or(0.0, |s| s.throughput);
    for s in runs.iter_mut() {
        s.speedup = if base > 0.0 {
            (s.throughput / base * 100.0).round() / 100.0
        } else {
            0.0
        };
        if s.replicas == 1 {
            let bound = DEFAULT_CONCURRENCY / (s.bot_ms as f64 / 1000.0);
            s.of_bound = Some((s.throughput / bound * 1000.0).round() / 1000.0);
        }
    }
}

/// (subjects holding events, most events on one subject) of the events stream.
async fn subject_depths(nats: &str) -> anyhow::Result<(u64, u64)> {
    let js = jetstream::new(async_nats::connect(nats).await?);
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let mut subjects = stream.info_with_subjects(">").await?;
    let (mut n, mut deepest) = (0, 0);
    while let Some((_, count)) = subjects.next().await.transpose()? {
        n += 1;
        deepest = deepest.max(count as u64);
    }
    Ok((n, deepest))
}

impl Harness {
    pub(super) async fn scale_run(&self, replicas: usize) -> anyhow::Result<ScaleRun> {
        let o = &self.options;
        let tag = format!("scale{replicas}");
        let mut p = self.pipeline(&tag, o.scale_bot_ms).await?;
        let events = self.events(&format!("s{replicas}"), 1, 0, Spread::Unique);
        let (accepted, observer) = e2e::recorder();
        let target = Arc::new(
            self.http_target(&format!("{}{EVENTS_PATH}", p.ingress.base), events)?
                .with_observer(observer),
        );
        // The backlog goes in before any worker runs, so every replica finds all of it.
        let rate = 2000.0;
        let load = Load {
            pace: Pace::Rate(rate),
            connections: 32,
            warmup: Duration::ZERO,
            duration: Duration::from_secs_f64(o.scale_backlog as f64 / rate),
            timeout: Duration::from_secs(10),
            first_seq: 0,
        };
        let anchor = Anchor::now();
        let measured = driver::run(target, load).await;
        let expected = accepted.lock().expect("recorder").messages.len() as u64;
        let (subjects, deepest_subject) = subject_depths(&p.nats.base).await?;
        let started = Instant::now();
        self.start_workers(&mut p, &tag, replicas).await?;
        let (replies, left) = self
            .settle(&p.khoros.base, &p.nats.base, 0, expected)
            .await?;
        let bot = Duration::from_millis(o.scale_bot_ms);
        let mut report = {
            let accepted = accepted.lock().expect("recorder");
            e2e::analyse(&accepted, &replies, &anchor, measured.started, bot)
        };
        report.unprocessed = Some(left);
        let throughput = e2e::drain_rate(&replies, bot);
        let last = replies.iter().map(|r| r.at_ms).max().unwrap_or(0);
        let wall_s = ((last - anchor.epoch_us(started) / 1000) as f64 / 100.0).round() / 10.0;
        println!(
            "  {:<12} {replicas} worker(s): {throughput:.1} replies/s, {} events over {subjects} subjects (deepest {deepest_subject}), {wall_s:.1} s to the last reply; {}",
            "scaling",
            expected,
            report.tally()
        );
        p.stop()?;
        Ok(ScaleRun {
            replicas,
            bot_ms: o.scale_bot_ms,
            events: expected,
            subjects,
            deepest_subject,
            report,
            throughput,
            of_bound: None,
            wall_s,
            speedup: 0.0,
        })
    }
}
