//! The worker phases' pipeline (nats-server, ingress, khoros-sim, kore-sim, workers) and the
//! end-to-end phase.

use super::*;

impl Harness {
    /// Waits until the workers consume: the events stream's consumers stopped appearing and
    /// each has a pull request waiting. Assumes nothing of the partition count or of the
    /// consumer layout; after `limit` it goes on anyway (a worker that consumes otherwise is
    /// then measured as it is, the probe message still proves it answers).
    pub(super) async fn wait_consuming(&self, nats: &str, limit: Duration) -> anyhow::Result<()> {
        let js = jetstream::new(async_nats::connect(nats).await?);
        let deadline = Instant::now() + limit;
        let mut last = (0, 0);
        loop {
            let stream = js.get_stream(EVENTS_STREAM).await?;
            let mut names = stream.consumer_names();
            let (mut found, mut waiting) = (0, 0);
            while let Some(name) = names.next().await {
                found += 1;
                if stream.consumer_info(name?).await?.num_waiting > 0 {
                    waiting += 1;
                }
            }
            if found > 0 && waiting == found && last == (found, waiting) {
                return Ok(());
            }
            if Instant::now() > deadline {
                println!("  ({waiting} of {found} consumers waiting after {limit:?}; going on)");
                return Ok(());
            }
            last = (found, waiting);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sends one message through the pipeline and waits (at most 60 s) for its reply, so the
    /// measured messages find the workers consuming, with tokens and connections warm.
    /// Returns the probe's message id (left out of the analysis) and the Bot API calls
    /// khoros-sim logged so far.
    pub(super) async fn probe(&self, ingress: &str, khoros: &str) -> anyhow::Result<(String, u64)> {
        let events = self.events("probe", 1, 0, Spread::Unique);
        let id = events.event(0, 0).message_id.expect("a message");
        let target = self.http_target(&format!("{ingress}{EVENTS_PATH}"), events)?;
        let mut conn = target
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("probe: {e}"))?;
        let job = Job {
            seq: 0,
            intended: None,
        };
        target
            .send(&mut conn, job)
            .await
            .map_err(|e| anyhow::anyhow!("probe: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let replies = e2e::fetch_replies(&self.http, khoros).await?;
            if replies.iter().any(|r| r.message_id == id) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the probe message got no reply within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((id, e2e::logged_calls(&self.http, khoros).await?))
    }

    /// Waits until khoros-sim logged `expected` Bot API calls beyond `before` and every event
    /// is acknowledged, or until nothing moved for 15 s. Only cheap counters are polled while
    /// the workers run; the replies are read once at the end.
    pub(super) async fn settle(
        &self,
        khoros: &str,
        nats: &str,
        before: u64,
        expected: u64,
    ) -> anyhow::Result<(Vec<e2e::Reply>, u64)> {
        let idle = Duration::from_secs(15);
        e2e::wait_for_calls(&self.http, khoros, before + expected, idle).await?;
        let js = jetstream::new(async_nats::connect(nats).await?);
        let mut left = e2e::unprocessed(&js).await?;
        let mut moved = Instant::now();
        while left > 0 && moved.elapsed() < idle {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = e2e::unprocessed(&js).await?;
            if now != left {
                moved = Instant::now();
            }
            left = now;
        }
        // A late duplicate would show up now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((e2e::fetch_replies(&self.http, khoros).await?, left))
    }

    /// nats-server, the ingress (default configuration), khoros-sim and kore-sim.
    pub(super) async fn pipeline(&self, tag: &str, bot_ms: u64) -> anyhow::Result<Pipeline> {
        let nats = self.nats(tag).await?;
        let ingress = self.ingress(tag, &nats.base, None).await?;
        let khoros = self.khoros_sim(tag).await?;
        let kore = self.kore_sim(tag, bot_ms).await?;
        Ok(Pipeline {
            nats,
            ingress,
            khoros,
            kore,
            workers: Vec::new(),
        })
    }

    /// Starts `replicas` workers together, then waits until all are ready.
    pub(super) async fn start_workers(
        &self,
        p: &mut Pipeline,
        tag: &str,
        replicas: usize,
    ) -> anyhow::Result<()> {
        // Workers only read the token (the scheduler owns it; the bench runs none).
        testkit::token_seed::seed_token(
            &p.nats.base,
            &shared::config::Env::from_pairs(Vec::<(String, String)>::new()),
            BOT_TOKEN,
        )
        .await?;
        for i in 0..replicas {
            let name = format!("{tag}-{i}");
            let w = self.spawn_worker(&name, &p.nats.base, &p.khoros.base, &p.kore.base)?;
            p.workers.push(w);
        }
        for w in &p.workers {
            self.ready(w).await?;
        }
        Ok(())
    }

    /// End to end at a fixed message rate: one worker, random conversation keys.
    pub(super) async fn phase_e2e(&self) -> anyhow::Result<E2ePhase> {
        let o = &self.options;
        let label = "e2e";
        let mut p = self.pipeline(label, o.e2e_bot_ms).await?;
        self.start_workers(&mut p, label, 1).await?;
        self.wait_consuming(&p.nats.base, Duration::from_secs(20))
            .await?;
        let (probe, before) = self.probe(&p.ingress.base, &p.khoros.base).await?;
        // Spread::Pool: keys at random over `conversations`, whatever the partition count.
        let events = self.events("e", 1, o.update_every, Spread::Pool);
        let (accepted, observer) = e2e::recorder();
        let target = Arc::new(
            self.http_target(&format!("{}{EVENTS_PATH}", p.ingress.base), events)?
                .with_observer(observer),
        );
        // The message rate is the target; updates come on top of it.
        let event_rate = match o.update_every {
            0 | 1 => o.e2e_rate,
            n => o.e2e_rate * n as f64 / (n - 1) as f64,
        };
        let load = Load {
            pace: Pace::Rate(event_rate),
            connections: 16,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs_f64(o.e2e_s),
            timeout: Duration::from_secs(10),
            first_seq: 0,
        };
        let anchor = Anchor::now();
        let mut procs = p.pids();
        procs.push(("loadgen".to_string(), std::process::id()));
        let meter = CpuMeter::start(&procs);
        let measured = driver::run(target, load).await;
        let cpu_pct = meter.finish();
        let ingress_report = LoadReport::new(&load, &measured);
        println!("  {label:<12} ingress ack: {}", ingress_report.line());
        let expected = accepted.lock().expect("recorder").messages.len() as u64;
        let (mut replies, left) = self
            .settle(&p.khoros.base, &p.nats.base, before, expected)
            .await?;
        replies.retain(|r| r.message_id != probe);
        let mut report = {
            let accepted = accepted.lock().expect("recorder");
            e2e::analyse(
                &accepted,
                &replies,
                &anchor,
                measured.started + load.warmup,
                Duration::from_millis(o.e2e_bot_ms),
            )
        };
        report.unprocessed = Some(left);
        let mut memory = BTreeMap::new();
        for (name, r) in [("ingress", &p.ingress), ("worker", &p.workers[0])] {
            if let Some(m) = r.proc.memory() {
                memory.insert(name.to_string(), m);
            }
        }
        println!(
            "  {label:<12} end to end: {}\n  {label:<12} overhead:   {}\n  {label:<12} {}",
            report.end_to_end.line(),
            report.overhead.line(),
            report.tally()
        );
        p.stop()?;
        Ok(E2ePhase {
            rate: o.e2e_rate,
            spread: "at random".into(),
            ingress: ingress_report,
            report,
            memory,
            cpu_pct,
        })
    }
}

/// The processes of a worker phase.
pub(super) struct Pipeline {
    pub(super) nats: Running,
    pub(super) ingress: Running,
    pub(super) khoros: Running,
    pub(super) kore: Running,
    pub(super) workers: Vec<Running>,
}

impl Pipeline {
    /// (label, pid) of every process, for the CPU meter.
    pub(super) fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = vec![
            ("ingress".to_string(), self.ingress.proc.pid()),
            ("nats-server".to_string(), self.nats.proc.pid()),
            ("khoros-sim".to_string(), self.khoros.proc.pid()),
            ("kore-sim".to_string(), self.kore.proc.pid()),
        ];
        for (i, w) in self.workers.iter().enumerate() {
            pids.push((format!("worker-{i}"), w.proc.pid()));
        }
        pids
    }

    /// Stops everything; fails when a service had died during the phase.
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        let mut alive = self.ingress.proc.check_alive();
        for w in &mut self.workers {
            alive = alive.and(w.proc.check_alive());
        }
        for w in &mut self.workers {
            w.proc.stop(Duration::from_secs(5));
        }
        for r in [&mut self.ingress, &mut self.khoros, &mut self.kore] {
            r.proc.stop(Duration::from_secs(5));
        }
        self.nats.proc.stop(Duration::from_secs(2));
        alive
    }
}
