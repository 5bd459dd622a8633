//! The process harness: starts and stops what a phase measures (nats-server, the services,
//! the simulators, the ceilings) as separate processes, and the loads run against them.

use super::*;

/// Starts and stops the processes of the phases.
pub(super) struct Harness {
    pub(super) options: BenchOptions,
    pub(super) run_dir: tempfile::TempDir,
    pub(super) logs: PathBuf,
    pub(super) http: reqwest::Client,
    pub(super) nats_bin: PathBuf,
    pub(super) self_exe: PathBuf,
    pub(super) run_tag: String,
}

/// The pinned nats-server (`NATS_SERVER_BIN`, else the copy `dev/nats-server` installed), as
/// the tests use it; never an older one found on `PATH`.
pub(super) fn nats_binary() -> PathBuf {
    testkit::nats_server::binary()
}

pub(super) fn port() -> u16 {
    testkit::nats_server::free_port()
}

pub(super) fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// What drives a subject's load: HTTP requests, or publishes straight to JetStream.
pub(super) enum Driven {
    Http(Arc<HttpTarget>),
    Publish(Arc<PublishTarget>),
}

impl Driven {
    pub(super) async fn run(&self, load: Load) -> Measured {
        match self {
            Driven::Http(target) => driver::run(target.clone(), load).await,
            Driven::Publish(target) => driver::run(target.clone(), load).await,
        }
    }
}

/// The ingress or one of its ceilings, started, with what its load slices measured so far.
pub(super) struct Subject {
    pub(super) label: &'static str,
    pub(super) driven: Driven,
    /// (label, pid) of the processes whose CPU is reported.
    pub(super) procs: Vec<(String, u32)>,
    pub(super) server: Option<Running>,
    pub(super) nats: Option<Running>,
    /// The next request sequence (request ids stay unique across slices).
    pub(super) next_seq: u64,
    pub(super) max: Option<Measured>,
    pub(super) fixed: Option<Measured>,
    /// Per process: CPU seconds and wall seconds over the full-speed slices.
    pub(super) cpu: BTreeMap<String, (f64, f64)>,
    pub(super) memory: Memory,
}

impl Subject {
    pub(super) fn new(
        label: &'static str,
        driven: Driven,
        procs: Vec<(String, u32)>,
        server: Option<Running>,
        nats: Option<Running>,
    ) -> Self {
        Self {
            label,
            driven,
            procs,
            server,
            nats,
            next_seq: 0,
            max: None,
            fixed: None,
            cpu: BTreeMap::new(),
            memory: Memory::default(),
        }
    }

    /// Adds a slice to the full-speed or the fixed-rate totals.
    pub(super) fn absorb(&mut self, full_speed: bool, measured: Measured) {
        self.next_seq += measured.sent;
        let total = if full_speed {
            &mut self.max
        } else {
            &mut self.fixed
        };
        match total {
            Some(total) => total.absorb(measured),
            None => *total = Some(measured),
        }
    }

    /// `pct`: % of one core per process over a slice of `wall` seconds.
    pub(super) fn add_cpu(&mut self, pct: BTreeMap<String, f64>, wall: f64) {
        for (name, pct) in pct {
            let entry = self.cpu.entry(name).or_default();
            entry.0 += pct / 100.0 * wall;
            entry.1 += wall;
        }
    }

    pub(super) fn cpu_pct(&self) -> BTreeMap<String, f64> {
        self.cpu
            .iter()
            .map(|(name, (used, wall))| {
                (
                    name.clone(),
                    (used / wall.max(1e-9) * 1000.0).round() / 10.0,
                )
            })
            .collect()
    }

    /// Highest resident memory seen, and the kernel's peak (VmHWM) of the server under test.
    pub(super) fn sample_memory(&mut self) {
        let Some(server) = &self.server else { return };
        if let Some(m) = Memory::of(server.proc.pid()) {
            self.memory.rss_kb = self.memory.rss_kb.max(m.rss_kb);
            self.memory.hwm_kb = self.memory.hwm_kb.max(m.hwm_kb);
        }
    }
}

/// Rounds of about two seconds for the full-speed load (at least one).
pub(super) fn rounds(max_s: f64) -> usize {
    ((max_s / 2.0).round() as usize).max(1)
}

/// Rounds of about three seconds for the fixed-rate load (at least one).
pub(super) fn rounds_fixed(fixed_s: f64) -> usize {
    ((fixed_s / 3.0).round() as usize).max(1)
}

/// The full warm-up before a subject's first slice; half a second (new connections) after.
pub(super) fn slice_warmup(warmup_s: f64, round: usize) -> Duration {
    Duration::from_secs_f64(if round == 0 {
        warmup_s
    } else {
        warmup_s.min(0.5)
    })
}

/// A server process and where to reach it.
pub(super) struct Running {
    pub(super) proc: Proc,
    pub(super) base: String,
}

impl Harness {
    pub(super) fn bin(&self, name: &str) -> PathBuf {
        self.options.bin_dir.join(name)
    }

    pub(super) async fn nats(&self, tag: &str) -> anyhow::Result<Running> {
        let port = port();
        let store = self.run_dir.path().join(format!("js-{tag}"));
        let proc = Proc::spawn(
            &format!("nats-server-{tag}"),
            &self.nats_bin,
            &[
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
            ],
            &[],
            &self.logs,
        )?;
        procs::wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).await?;
        Ok(Running {
            proc,
            base: format!("nats://127.0.0.1:{port}"),
        })
    }

    /// `partitions`: `None` leaves PARTITIONS (and every other tuning variable) at the
    /// ingress' default, as the worker phases need.
    pub(super) async fn ingress(
        &self,
        tag: &str,
        nats: &str,
        partitions: Option<u32>,
    ) -> anyhow::Result<Running> {
        self.ingress_with(tag, nats, partitions, &[]).await
    }

    /// [`Self::ingress`] with `extra` variables (`JS_REPLICAS` for the cluster phase).
    pub(super) async fn ingress_with(
        &self,
        tag: &str,
        nats: &str,
        partitions: Option<u32>,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Running> {
        let port = port();
        let metrics_port = self::port();
        let mut env = vars(&[
            ("NATS_URL", nats.into()),
            ("INGRESS_LISTEN", format!("127.0.0.1:{port}")),
            ("METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("KHOROS_AUTH", "hmac".into()),
            ("KHOROS_HMAC_KEYS", format!("{HMAC_KEY}={HMAC_SECRET}")),
            ("RUST_LOG", "info".into()),
        ]);
        if let Some(p) = partitions {
            env.extend(vars(&[
                ("PARTITIONS", p.to_string()),
                ("JS_STORAGE", "file".into()),
            ]));
        }
        env.extend(vars(extra));
        let proc = Proc::spawn(
            &format!("ingress-{tag}"),
            &self.bin("ingress"),
            &[],
            &env,
            &self.logs,
        )?;
        // `/readyz` is served on the metrics listener only.
        procs::wait_http_ok(
            &self.http,
            &format!("http://127.0.0.1:{metrics_port}/readyz"),
            Duration::from_secs(20),
        )
        .await
        .context("ingress readiness")?;
        Ok(Running {
            proc,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Starts a server of ours listening on `127.0.0.1:<port>` and waits for its `/readyz`.
    pub(super) async fn http_server(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        port: u16,
    ) -> anyhow::Result<Running> {
        let proc = Proc::spawn(name, program, args, env, &self.logs)?;
        let base = format!("http://127.0.0.1:{port}");
        procs::wait_http_ok(
            &self.http,
            &format!("{base}/readyz"),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("{name} readiness"))?;
        Ok(Running { proc, base })
    }

    pub(super) async fn bare(&self) -> anyhow::Result<Running> {
        let port = port();
        let args = ["bare-server", "--listen", &format!("127.0.0.1:{port}")].map(String::from);
        self.http_server("bare-server", &self.self_exe, &args, &[], port)
            .await
    }

    pub(super) async fn naive(&self, nats: &str) -> anyhow::Result<Running> {
        let port = port();
        let args = [
            "naive-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nats-url",
            nats,
            "--hmac-key",
            HMAC_KEY,
            "--hmac-secret",
            HMAC_SECRET,
        ]
        .map(String::from);
        self.http_server("naive-ingress", &self.self_exe, &args, &[], port)
            .await
    }

    pub(super) async fn node_hmac(&self) -> anyhow::Result<Running> {
        let port = port();
        let node = node_hmac::command(
            self.run_dir.path(),
            &format!("127.0.0.1:{port}"),
            HMAC_KEY,
            HMAC_SECRET,
        )?;
        self.http_server("node-hmac", &node.program, &node.args, &node.env, port)
            .await
    }

    pub(super) async fn khoros_sim(&self, tag: &str) -> anyhow::Result<Running> {
        let port = port();
        let proc = Proc::spawn(
            &format!("khoros-sim-{tag}"),
            &self.bin("khoros-sim"),
            &[],
            &vars(&[
                ("KHOROS_SIM_LISTEN", format!("127.0.0.1:{port}")),
                ("KHOROS_SIM_APP_ID", APP_ID.into()),
                ("KHOROS_SIM_TOKEN", BOT_TOKEN.into()),
                ("RUST_LOG", "warn".into()),
            ]),
            &self.logs,
        )?;
        let base = format!("http://127.0.0.1:{port}");
        procs::wait_http_ok(
            &self.http,
            &format!("{base}/sim/state"),
            Duration::from_secs(10),
        )
        .await?;
        Ok(Running { proc, base })
    }

    pub(super) async fn kore_sim(&self, tag: &str, latency_ms: u64) -> anyhow::Result<Running> {
        let port = port();
        let proc = Proc::spawn(
            &format!("kore-sim-{tag}"),
            &self.bin("kore-sim"),
            &[],
            &vars(&[
                ("KORE_SIM_LISTEN", format!("127.0.0.1:{port}")),
                ("KORE_SIM_LATENCY", format!("{latency_ms}ms")),
                ("KORE_SIM_RECORD_LIMIT", "1000".into()),
                ("RUST_LOG", "warn".into()),
            ]),
            &self.logs,
        )?;
        procs::wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).await?;
        Ok(Running {
            proc,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A worker replica in its default configuration (only URLs, ids, secrets and ports);
    /// started, not yet ready (see [`Harness::ready`]), so replicas can start together.
    pub(super) fn spawn_worker(
        &self,
        tag: &str,
        nats: &str,
        khoros: &str,
        kore: &str,
    ) -> anyhow::Result<Running> {
        let port = port();
        let proc = Proc::spawn(
            &format!("worker-{tag}"),
            &self.bin("worker"),
            &[],
            &vars(&[
                ("NATS_URL", nats.into()),
                ("WORKER_LISTEN", format!("127.0.0.1:{port}")),
                ("METRICS_LISTEN", format!("127.0.0.1:{}", self::port())),
                ("KHOROS_APP_ID", APP_ID.into()),
                ("KHOROS_API_URL", khoros.into()),
                ("KORE_URL", kore.into()),
                ("KORE_BOT_ID", KORE_BOT_ID.into()),
                ("KORE_CLIENT_ID", KORE_CLIENT_ID.into()),
                ("KORE_CLIENT_SECRET", KORE_CLIENT_SECRET.into()),
                ("RUST_LOG", "info".into()),
            ]),
            &self.logs,
        )?;
        Ok(Running {
            proc,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits for a worker's `/readyz`.
    pub(super) async fn ready(&self, worker: &Running) -> anyhow::Result<()> {
        procs::wait_http_ok(
            &self.http,
            &format!("{}/readyz", worker.base),
            Duration::from_secs(20),
        )
        .await
        .with_context(|| format!("{} readiness", worker.proc.name))
    }

    pub(super) fn events(
        &self,
        tag: &str,
        partitions: u32,
        update_every: u64,
        spread: Spread,
    ) -> Arc<EventSource> {
        Arc::new(EventSource::new(
            &format!("{}{tag}", self.run_tag),
            APP_ID,
            partitions,
            self.options.conversations.max(partitions as usize),
            update_every,
            spread,
        ))
    }

    pub(super) fn http_target(
        &self,
        url: &str,
        events: Arc<EventSource>,
    ) -> anyhow::Result<HttpTarget> {
        HttpTarget::new(
            url,
            Some(HmacCredentials {
                api_key: HMAC_KEY.into(),
                secret: Secret::new(HMAC_SECRET),
            }),
            events,
        )
    }

    pub(super) fn max_load(&self) -> Load {
        Load {
            pace: Pace::Closed,
            connections: self.options.connections,
            warmup: Duration::from_secs_f64(self.options.warmup_s),
            duration: Duration::from_secs_f64(self.options.max_s),
            timeout: Duration::from_secs(10),
            first_seq: 0,
        }
    }

    pub(super) fn fixed_load(&self, first_seq: u64) -> Load {
        Load {
            pace: Pace::Rate(self.options.fixed_rate),
            connections: self.options.fixed_connections,
            warmup: Duration::from_secs_f64(self.options.warmup_s),
            duration: Duration::from_secs_f64(self.options.fixed_s),
            timeout: Duration::from_secs(10),
            first_seq,
        }
    }

    pub(super) async fn stored_events(&self, nats: &str) -> anyhow::Result<u64> {
        let js = jetstream::new(async_nats::connect(nats).await?);
        let mut stream = js.get_stream(EVENTS_STREAM).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// The events stream (and the rest of the topology) as the ingress creates it, for the
    /// phases whose publisher does not create it.
    pub(super) async fn ensure_topology(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let env = Env::from_pairs([("PARTITIONS", self.options.partitions.to_string())]);
        Topology::new(TopologyConfig::from_env(&env)?)
            .ensure(js)
            .await?;
        Ok(())
    }

    /// The target of an HTTP server under test, with the processes to meter.
    pub(super) fn http_subject(
        &self,
        label: &'static str,
        events_tag: &str,
        cpu_label: &str,
        server: Running,
        nats: Option<Running>,
    ) -> anyhow::Result<Subject> {
        let o = &self.options;
        let target = Arc::new(self.http_target(
            &format!("{}{EVENTS_PATH}", server.base),
            self.events(events_tag, o.partitions, o.update_every, Spread::Even),
        )?);
        let mut procs = vec![(cpu_label.to_string(), server.proc.pid())];
        if let Some(nats) = &nats {
            procs.push(("nats-server".to_string(), nats.proc.pid()));
        }
        procs.push(("loadgen".to_string(), std::process::id()));
        Ok(Subject::new(
            label,
            Driven::Http(target),
            procs,
            Some(server),
            nats,
        ))
    }

    pub(super) async fn start_bare(&self) -> anyhow::Result<Subject> {
        let server = self.bare().await?;
        self.http_subject("bare", "b", "bare-server", server, None)
    }

    pub(super) async fn start_publish(&self) -> anyhow::Result<Subject> {
        let nats = self.nats("publish").await?;
        let js = jetstream::new(async_nats::connect(&nats.base).await?);
        self.ensure_topology(&js).await?;
        let o = &self.options;
        let target = Arc::new(PublishTarget::new(
            js,
            self.events("p", o.partitions, o.update_every, Spread::Even),
        ));
        let procs = vec![
            ("nats-server".to_string(), nats.proc.pid()),
            ("loadgen".to_string(), std::process::id()),
        ];
        Ok(Subject::new(
            "raw publish",
            Driven::Publish(target),
            procs,
            None,
            Some(nats),
        ))
    }

    pub(super) async fn start_naive(&self) -> anyhow::Result<Subject> {
        let nats = self.nats("naive").await?;
        let js = jetstream::new(async_nats::connect(&nats.base).await?);
        self.ensure_topology(&js).await?;
        let server = self.naive(&nats.base).await?;
        self.http_subject("naive", "n", "naive-ingress", server, Some(nats))
    }

    pub(super) async fn start_node(&self) -> anyhow::Result<Subject> {
        let server = self.node_hmac().await?;
        self.http_subject("node+hmac", "h", "node", server, None)
    }

    pub(super) async fn start_ingress(&self) -> anyhow::Result<Subject> {
        let nats = self.nats("ingress").await?;
        let ingress = self
            .ingress("bench", &nats.base, Some(self.options.partitions))
            .await?;
        self.http_subject("ingress", "i", "ingress", ingress, Some(nats))
    }
}
