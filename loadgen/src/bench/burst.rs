//! Burst: `burst_customers` customers, each its own conversation, write at once to a pipeline
//! with one worker replica (default configuration) and a slow bot. Each message is timed from
//! the moment they were all sent to its reply at khoros-sim.

use super::*;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BurstPhase {
    pub customers: u64,
    pub bot_ms: u64,
    /// Sends the ingress did not accept with 202.
    pub failed: u64,
    /// `end_to_end`: send → reply at khoros-sim, over every message of the burst.
    pub report: E2eReport,
}

impl Harness {
    pub(super) async fn phase_burst(&self) -> anyhow::Result<BurstPhase> {
        let o = &self.options;
        let tag = "burst";
        let mut p = self.pipeline(tag, o.burst_bot_ms).await?;
        self.start_workers(&mut p, tag, 1).await?;
        self.wait_consuming(&p.nats.base, Duration::from_secs(20))
            .await?;
        let (probe, before) = self.probe(&p.ingress.base, &p.khoros.base).await?;
        // The burst meets an idle pipeline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = self.events("u", 1, 0, Spread::Unique);
        let (accepted, observer) = e2e::recorder();
        let target = Arc::new(
            self.http_target(&format!("{}{EVENTS_PATH}", p.ingress.base), events)?
                .with_observer(observer),
        );
        // One connection per customer, opened first, so the messages leave together.
        let mut conns = Vec::new();
        for _ in 0..o.burst_customers {
            let conn = target
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("burst: {e}"))?;
            conns.push(conn);
        }
        let anchor = Anchor::now();
        let at = Instant::now();
        let sends = conns.into_iter().enumerate().map(|(i, mut conn)| {
            let target = target.clone();
            let job = Job {
                seq: i as u64,
                intended: Some(at),
            };
            async move { target.send(&mut conn, job).await }
        });
        let failed = futures::future::join_all(sends)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count() as u64;
        let expected = accepted.lock().expect("recorder").messages.len() as u64;
        let (mut replies, left) = self
            .settle(&p.khoros.base, &p.nats.base, before, expected)
            .await?;
        replies.retain(|r| r.message_id != probe);
        let bot = Duration::from_millis(o.burst_bot_ms);
        let mut report = {
            let accepted = accepted.lock().expect("recorder");
            e2e::analyse(&accepted, &replies, &anchor, at, bot)
        };
        report.unprocessed = Some(left);
        println!(
            "  {:<12} {} customers at once: send → reply {}; failed sends {failed}; {}",
            "burst",
            o.burst_customers,
            report.end_to_end.line(),
            report.tally()
        );
        p.stop()?;
        Ok(BurstPhase {
            customers: o.burst_customers,
            bot_ms: o.burst_bot_ms,
            failed,
            report,
        })
    }
}
