//! `loadgen bench`: the whole benchmark, back to back on this machine, as `dev/bench` runs it.
//!
//! Every phase starts what it measures as separate processes (release builds) against a
//! dedicated `nats-server` (`NATS_SERVER_BIN`, else `nats-server` on the PATH) with a fresh
//! file store on a free loopback port (never the machine's own server on 4222), and stops
//! them afterwards. First the ingress and its ceilings:
//!
//! 1. **bare**: an axum server that answers 202 and does nothing else (the HTTP ceiling);
//! 2. **publish**: the same events published to JetStream and awaited (the broker ceiling);
//! 3. **naive**: a naive one-write ingress ([`super::naive`]): HMAC v2 with the ingress'
//!    verifier, `type` read with serde_json, one publish with `Nats-Msg-Id`, PubAck awaited;
//! 4. **node**: node:http + HMAC v2 that stores nothing ([`super::node_hmac`], one process);
//! 5. **ingress**: the real ingress, HMAC v2 on, file-storage stream;
//!
//! each at full speed with N connections (closed loop), then at a fixed rate (open loop,
//! latency from the intended send time). The ingress is judged against them as ratios
//! ([`super::targets`]), among them the one-write bound 1 / (1/bare + 1/raw publish). Then
//!
//! 6. **e2e**: ingress + worker + kore-sim (simulated bot latency) + khoros-sim at a fixed
//!    message rate, random conversation keys, replies matched at khoros-sim;
//! 7. **burst**: many customers write at once to one worker with a slow bot ([`burst`]);
//! 8. **scaling**: 1, 2, 4 worker processes draining a backlog of distinct conversations with
//!    a slow bot ([`scaling`]);
//! 9. **cluster**: the ingress at the fixed rate on one node (R1) and on a three-node cluster
//!    with `JS_REPLICAS=3`, interleaved; the R3 / R1 ack latency ratios ([`cluster`]).
//!
//! The worker phases (6-8) run the ingress and the workers in their default configuration
//! (no PARTITIONS, WORKER_CONCURRENCY, ACK_WAIT...): only what they need to run.
//!
//! Results: one table on stdout, `<out>/results/<timestamp>.json`, `<out>/latest.json` and
//! `<out>/latest.md` (`latest-partial.*` when phases were skipped, so `latest.*` always
//! holds a full run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shared::config::Env;
use shared::topology::{Topology, TopologyConfig, EVENTS_STREAM};
use shared::Secret;

use super::driver::{self, Job, Load, Measured, Pace, Target};
use super::e2e::{self, Anchor, E2eReport};
use super::events::{EventSource, Spread};
use super::http::{HmacCredentials, HttpTarget};
use super::node_hmac;
use super::procs::{self, CpuMeter, Memory, Proc};
use super::publish::PublishTarget;
use super::stats::LoadReport;
use super::targets;

mod burst;
mod cluster;
pub mod scaling;

const HMAC_KEY: &str = "bench-hmac-key";
const HMAC_SECRET: &str = "bench-hmac-secret-7f3c";
const BOT_TOKEN: &str = "bench-bot-api-token";
const APP_ID: &str = "kore-bridge";
/// kore-sim's defaults, so it needs no configuration.
const KORE_BOT_ID: &str = "st-11111111-2222-3333-4444-555555555555";
const KORE_CLIENT_ID: &str = "cs-00000000-test-app";
const KORE_CLIENT_SECRET: &str = "kore-test-client-secret-123";
const EVENTS_PATH: &str = "/khoros/events";

/// What to run and how long.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Where `ingress`, `worker`, `khoros-sim`, `kore-sim` are (`target/release`).
    pub bin_dir: PathBuf,
    /// Where results go (`bench/`).
    pub out_dir: PathBuf,
    /// Connections of the full-speed loads.
    pub connections: usize,
    pub warmup_s: f64,
    /// Length of each full-speed load.
    pub max_s: f64,
    /// Fixed rate of the latency loads, and their length and connections.
    pub fixed_rate: f64,
    pub fixed_s: f64,
    pub fixed_connections: usize,
    /// PARTITIONS of the ingress-only phases (the default).
    pub partitions: u32,
    /// Every n-th event is an update (the rest are messages).
    pub update_every: u64,
    pub conversations: usize,
    /// End to end: message rate, simulated bot latency, length.
    pub e2e_rate: f64,
    pub e2e_bot_ms: u64,
    pub e2e_s: f64,
    /// Burst: customers writing at once, bot latency.
    pub burst_customers: u64,
    pub burst_bot_ms: u64,
    /// Worker scaling: replicas, bot latency, backlog (messages, one conversation each).
    pub scale_replicas: Vec<usize>,
    pub scale_bot_ms: u64,
    pub scale_backlog: u64,
    /// Skip phases by name (see [`PHASES`]).
    pub skip: Vec<String>,
}

/// The phases, in the order they run (the names `--skip` takes).
pub const PHASES: [&str; 9] = [
    "bare", "publish", "naive", "node", "ingress", "e2e", "burst", "scaling", "cluster",
];

/// The phases `--only worker` runs.
pub const WORKER_PHASES: [&str; 3] = ["e2e", "burst", "scaling"];

impl BenchOptions {
    /// The full benchmark (about four and a half minutes).
    pub fn full(bin_dir: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            out_dir,
            connections: 64,
            warmup_s: 2.0,
            max_s: 10.0,
            fixed_rate: 1000.0,
            fixed_s: 15.0,
            fixed_connections: 32,
            partitions: 16,
            update_every: 5,
            conversations: 4096,
            e2e_rate: 200.0,
            e2e_bot_ms: 50,
            e2e_s: 30.0,
            burst_customers: 64,
            burst_bot_ms: 1000,
            scale_replicas: vec![1, 2, 4],
            scale_bot_ms: 1000,
            scale_backlog: 2048,
            skip: Vec::new(),
        }
    }

    /// A short run for development (about a minute); figures are noisier.
    pub fn quick(bin_dir: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            warmup_s: 1.0,
            max_s: 3.0,
            fixed_s: 4.0,
            e2e_s: 8.0,
            scale_backlog: 512,
            ..Self::full(bin_dir, out_dir)
        }
    }

    fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }

    fn runs_any(&self, phases: &[&str]) -> bool {
        phases.iter().any(|p| self.runs(p))
    }
}

/// A phase with a full-speed and a fixed-rate load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    pub max: LoadReport,
    pub fixed: LoadReport,
    /// CPU over the full-speed load, % of one core, per process.
    pub cpu_pct: BTreeMap<String, f64>,
    /// Resident memory of the server under test (highest VmRSS sampled, VmHWM at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Successes (202 / PubAck) and what the stream holds afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct E2ePhase {
    pub rate: f64,
    pub spread: String,
    pub ingress: LoadReport,
    pub report: E2eReport,
    pub memory: BTreeMap<String, Memory>,
    pub cpu_pct: BTreeMap<String, f64>,
}

pub use burst::BurstPhase;
pub use cluster::ClusterPhase;
pub use scaling::ScaleRun;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub nats_server: String,
    /// `node --version` (the node:http + HMAC ceiling).
    #[serde(default)]
    pub node: String,
    pub load_before: String,
    pub load_after: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: u32,
    pub started_at: String,
    pub wall_s: f64,
    pub git: BTreeMap<String, String>,
    pub machine: Machine,
    pub options: BenchOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bare: Option<PhaseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_publish: Option<PhaseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub naive_ingress: Option<PhaseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_hmac: Option<PhaseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<PhaseReport>,
    /// Ingress full-speed throughput over each ceiling (`ingress_over_<ceiling>`), and the
    /// one-write bound itself (`one_write_bound_rps`).
    pub ratios: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2ePhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstPhase>,
    pub scaling: Vec<ScaleRun>,
    /// R1 vs R3 ack latency (absent in runs before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterPhase>,
    pub checks: Vec<Check>,
}

impl BenchReport {
    /// The ingress and its ceilings, in the order they run, each with its display name.
    pub fn load_phases(&self) -> [(&'static str, &Option<PhaseReport>); 5] {
        [
            ("bare HTTP 202", &self.bare),
            ("raw JetStream publish", &self.raw_publish),
            ("naive one-write ingress", &self.naive_ingress),
            ("node:http + HMAC, stores nothing", &self.node_hmac),
            ("ingress (HMAC v2, file store)", &self.ingress),
        ]
    }
}

/// Starts and stops the processes of the phases.
struct Harness {
    options: BenchOptions,
    run_dir: tempfile::TempDir,
    logs: PathBuf,
    http: reqwest::Client,
    nats_bin: PathBuf,
    self_exe: PathBuf,
    run_tag: String,
}

/// The pinned nats-server (`NATS_SERVER_BIN`, else the copy `dev/nats-server` installed), as
/// the tests use it; never an older one found on `PATH`.
fn nats_binary() -> PathBuf {
    testkit::nats_server::binary()
}

fn port() -> u16 {
    testkit::nats_server::free_port()
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// What drives a subject's load: HTTP requests, or publishes straight to JetStream.
enum Driven {
    Http(Arc<HttpTarget>),
    Publish(Arc<PublishTarget>),
}

impl Driven {
    async fn run(&self, load: Load) -> Measured {
        match self {
            Driven::Http(target) => driver::run(target.clone(), load).await,
            Driven::Publish(target) => driver::run(target.clone(), load).await,
        }
    }
}

/// The ingress or one of its ceilings, started, with what its load slices measured so far.
struct Subject {
    label: &'static str,
    driven: Driven,
    /// (label, pid) of the processes whose CPU is reported.
    procs: Vec<(String, u32)>,
    server: Option<Running>,
    nats: Option<Running>,
    /// The next request sequence (request ids stay unique across slices).
    next_seq: u64,
    max: Option<Measured>,
    fixed: Option<Measured>,
    /// Per process: CPU seconds and wall seconds over the full-speed slices.
    cpu: BTreeMap<String, (f64, f64)>,
    memory: Memory,
}

impl Subject {
    fn new(
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
    fn absorb(&mut self, full_speed: bool, measured: Measured) {
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
    fn add_cpu(&mut self, pct: BTreeMap<String, f64>, wall: f64) {
        for (name, pct) in pct {
            let entry = self.cpu.entry(name).or_default();
            entry.0 += pct / 100.0 * wall;
            entry.1 += wall;
        }
    }

    fn cpu_pct(&self) -> BTreeMap<String, f64> {
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
    fn sample_memory(&mut self) {
        let Some(server) = &self.server else { return };
        if let Some(m) = Memory::of(server.proc.pid()) {
            self.memory.rss_kb = self.memory.rss_kb.max(m.rss_kb);
            self.memory.hwm_kb = self.memory.hwm_kb.max(m.hwm_kb);
        }
    }
}

/// Rounds of about two seconds for the full-speed load (at least one).
fn rounds(max_s: f64) -> usize {
    ((max_s / 2.0).round() as usize).max(1)
}

/// Rounds of about three seconds for the fixed-rate load (at least one).
fn rounds_fixed(fixed_s: f64) -> usize {
    ((fixed_s / 3.0).round() as usize).max(1)
}

/// The full warm-up before a subject's first slice; half a second (new connections) after.
fn slice_warmup(warmup_s: f64, round: usize) -> Duration {
    Duration::from_secs_f64(if round == 0 {
        warmup_s
    } else {
        warmup_s.min(0.5)
    })
}

/// A server process and where to reach it.
struct Running {
    proc: Proc,
    base: String,
}

impl Harness {
    fn bin(&self, name: &str) -> PathBuf {
        self.options.bin_dir.join(name)
    }

    async fn nats(&self, tag: &str) -> anyhow::Result<Running> {
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
    async fn ingress(
        &self,
        tag: &str,
        nats: &str,
        partitions: Option<u32>,
    ) -> anyhow::Result<Running> {
        self.ingress_with(tag, nats, partitions, &[]).await
    }

    /// [`Self::ingress`] with `extra` variables (`JS_REPLICAS` for the cluster phase).
    async fn ingress_with(
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
    async fn http_server(
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

    async fn bare(&self) -> anyhow::Result<Running> {
        let port = port();
        let args = ["bare-server", "--listen", &format!("127.0.0.1:{port}")].map(String::from);
        self.http_server("bare-server", &self.self_exe, &args, &[], port)
            .await
    }

    async fn naive(&self, nats: &str) -> anyhow::Result<Running> {
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

    async fn node_hmac(&self) -> anyhow::Result<Running> {
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

    async fn khoros_sim(&self, tag: &str) -> anyhow::Result<Running> {
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

    async fn kore_sim(&self, tag: &str, latency_ms: u64) -> anyhow::Result<Running> {
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
    fn spawn_worker(
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
    async fn ready(&self, worker: &Running) -> anyhow::Result<()> {
        procs::wait_http_ok(
            &self.http,
            &format!("{}/readyz", worker.base),
            Duration::from_secs(20),
        )
        .await
        .with_context(|| format!("{} readiness", worker.proc.name))
    }

    fn events(
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

    fn http_target(&self, url: &str, events: Arc<EventSource>) -> anyhow::Result<HttpTarget> {
        HttpTarget::new(
            url,
            Some(HmacCredentials {
                api_key: HMAC_KEY.into(),
                secret: Secret::new(HMAC_SECRET),
            }),
            events,
        )
    }

    fn max_load(&self) -> Load {
        Load {
            pace: Pace::Closed,
            connections: self.options.connections,
            warmup: Duration::from_secs_f64(self.options.warmup_s),
            duration: Duration::from_secs_f64(self.options.max_s),
            timeout: Duration::from_secs(10),
            first_seq: 0,
        }
    }

    fn fixed_load(&self, first_seq: u64) -> Load {
        Load {
            pace: Pace::Rate(self.options.fixed_rate),
            connections: self.options.fixed_connections,
            warmup: Duration::from_secs_f64(self.options.warmup_s),
            duration: Duration::from_secs_f64(self.options.fixed_s),
            timeout: Duration::from_secs(10),
            first_seq,
        }
    }

    async fn stored_events(&self, nats: &str) -> anyhow::Result<u64> {
        let js = jetstream::new(async_nats::connect(nats).await?);
        let mut stream = js.get_stream(EVENTS_STREAM).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// The events stream (and the rest of the topology) as the ingress creates it, for the
    /// phases whose publisher does not create it.
    async fn ensure_topology(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let env = Env::from_pairs([("PARTITIONS", self.options.partitions.to_string())]);
        Topology::new(TopologyConfig::from_env(&env)?)
            .ensure(js)
            .await?;
        Ok(())
    }

    /// The target of an HTTP server under test, with the processes to meter.
    fn http_subject(
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

    async fn start_bare(&self) -> anyhow::Result<Subject> {
        let server = self.bare().await?;
        self.http_subject("bare", "b", "bare-server", server, None)
    }

    async fn start_publish(&self) -> anyhow::Result<Subject> {
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

    async fn start_naive(&self) -> anyhow::Result<Subject> {
        let nats = self.nats("naive").await?;
        let js = jetstream::new(async_nats::connect(&nats.base).await?);
        self.ensure_topology(&js).await?;
        let server = self.naive(&nats.base).await?;
        self.http_subject("naive", "n", "naive-ingress", server, Some(nats))
    }

    async fn start_node(&self) -> anyhow::Result<Subject> {
        let server = self.node_hmac().await?;
        self.http_subject("node+hmac", "h", "node", server, None)
    }

    async fn start_ingress(&self) -> anyhow::Result<Subject> {
        let nats = self.nats("ingress").await?;
        let ingress = self
            .ingress("bench", &nats.base, Some(self.options.partitions))
            .await?;
        self.http_subject("ingress", "i", "ingress", ingress, Some(nats))
    }

    /// Runs the full-speed load and then the fixed-rate load against every subject,
    /// interleaved: each load is cut into rounds of a few seconds, and every round visits
    /// every subject in turn. A machine whose speed drifts during the run (shared hosts do)
    /// then skews every subject alike, so the ratios between them stay fair.
    async fn interleave(&self, subjects: &mut [Subject]) {
        let o = &self.options;
        let (max, fixed) = (self.max_load(), self.fixed_load(0));
        self.in_rounds(subjects, max, o.max_s, rounds(o.max_s))
            .await;
        self.in_rounds(subjects, fixed, o.fixed_s, rounds_fixed(o.fixed_s))
            .await;
    }

    /// `total_s` of `load` per subject, cut into `rounds` slices that visit every subject in
    /// turn. CPU is metered at full speed only.
    async fn in_rounds(&self, subjects: &mut [Subject], load: Load, total_s: f64, rounds: usize) {
        let full_speed = matches!(load.pace, Pace::Closed);
        for round in 0..rounds {
            for subject in subjects.iter_mut() {
                let slice = Load {
                    warmup: slice_warmup(self.options.warmup_s, round),
                    duration: Duration::from_secs_f64(total_s / rounds as f64),
                    first_seq: subject.next_seq,
                    ..load
                };
                let meter = CpuMeter::start(&subject.procs);
                let started = Instant::now();
                let measured = subject.driven.run(slice).await;
                if full_speed {
                    subject.add_cpu(meter.finish(), started.elapsed().as_secs_f64());
                }
                subject.absorb(full_speed, measured);
                subject.sample_memory();
            }
        }
    }

    /// Stops a subject's processes and writes its report.
    async fn finish(&self, mut subject: Subject) -> anyhow::Result<PhaseReport> {
        let max_load = Load {
            duration: Duration::from_secs_f64(self.options.max_s),
            ..self.max_load()
        };
        let max = subject
            .max
            .take()
            .expect("every subject ran the full-speed load");
        let fixed = subject
            .fixed
            .take()
            .expect("every subject ran the fixed-rate load");
        let mut report = PhaseReport {
            max: LoadReport::new(&max_load, &max),
            fixed: LoadReport::new(&self.fixed_load(0), &fixed),
            cpu_pct: subject.cpu_pct(),
            memory: subject.server.as_ref().map(|_| subject.memory),
            accepted: None,
            stored: None,
        };
        println!("  {:<12} {}", subject.label, report.max.line());
        println!("  {:<12} {}", subject.label, report.fixed.line());
        if let Some(mut server) = subject.server.take() {
            server.proc.check_alive()?;
            server.proc.stop(Duration::from_secs(5));
        }
        if let Some(mut nats) = subject.nats.take() {
            report.accepted = Some(max.ok_total + fixed.ok_total);
            report.stored = Some(self.stored_events(&nats.base).await?);
            nats.proc.stop(Duration::from_secs(2));
        }
        Ok(report)
    }

    /// Waits until the workers consume: the events stream's consumers stopped appearing and
    /// each has a pull request waiting. Assumes nothing of the partition count or of the
    /// consumer layout; after `limit` it goes on anyway (a worker that consumes otherwise is
    /// then measured as it is, the probe message still proves it answers).
    async fn wait_consuming(&self, nats: &str, limit: Duration) -> anyhow::Result<()> {
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
    async fn probe(&self, ingress: &str, khoros: &str) -> anyhow::Result<(String, u64)> {
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
    async fn settle(
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
    async fn pipeline(&self, tag: &str, bot_ms: u64) -> anyhow::Result<Pipeline> {
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
    async fn start_workers(
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
    async fn phase_e2e(&self) -> anyhow::Result<E2ePhase> {
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
struct Pipeline {
    nats: Running,
    ingress: Running,
    khoros: Running,
    kore: Running,
    workers: Vec<Running>,
}

impl Pipeline {
    /// (label, pid) of every process, for the CPU meter.
    fn pids(&self) -> Vec<(String, u32)> {
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
    fn stop(mut self) -> anyhow::Result<()> {
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

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .unwrap_or_default()
}

/// The release binaries the phases that run need (besides `loadgen` and `nats-server`).
fn required_binaries(options: &BenchOptions) -> Vec<&'static str> {
    let mut bins = Vec::new();
    if options.runs_any(&["ingress", "e2e", "burst", "scaling", "cluster"]) {
        bins.push("ingress");
    }
    if options.runs_any(&WORKER_PHASES) {
        bins.extend(["worker", "khoros-sim", "kore-sim"]);
    }
    bins
}

fn machine(nats_bin: &Path) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        nats_server: command_output(&nats_bin.display().to_string(), &["--version"]),
        node: command_output(&node_hmac::binary().display().to_string(), &["--version"]),
        load_before: read_trim("/proc/loadavg"),
        load_after: String::new(),
    }
}

fn git() -> BTreeMap<String, String> {
    let mut info = BTreeMap::new();
    info.insert(
        "commit".into(),
        command_output("git", &["rev-parse", "--short=12", "HEAD"]),
    );
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    info.insert("dirty".into(), dirty.to_string());
    info
}

/// `YYYYMMDDTHHMMSSZ` for epoch seconds (UTC).
pub fn utc_stamp(epoch_s: i64) -> String {
    let days = epoch_s.div_euclid(86_400);
    let secs = epoch_s.rem_euclid(86_400);
    let (y, m, d) = shared::auth::clock::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Runs the benchmark, prints the table and writes the results.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let stamp = utc_stamp(epoch);
    let run_dir = tempfile::Builder::new().prefix("bridge-bench-").tempdir()?;
    let logs = options.out_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let harness = Harness {
        nats_bin: nats_binary(),
        self_exe: std::env::current_exe()?,
        run_tag: format!("{:x}", rand::random::<u32>()),
        http: reqwest::Client::new(),
        logs,
        run_dir,
        options: options.clone(),
    };
    for bin in required_binaries(&options) {
        let path = harness.bin(bin);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build with cargo build --release",
            path.display()
        );
    }
    let mut report = BenchReport {
        schema: 3,
        started_at: stamp.clone(),
        wall_s: 0.0,
        git: git(),
        machine: machine(&harness.nats_bin),
        options: options.clone(),
        bare: None,
        raw_publish: None,
        naive_ingress: None,
        node_hmac: None,
        ingress: None,
        ratios: BTreeMap::new(),
        e2e: None,
        burst: None,
        scaling: Vec::new(),
        cluster: None,
        checks: Vec::new(),
    };
    println!(
        "benchmark {stamp}: {} cpus, load average {}",
        report.machine.cpus, report.machine.load_before
    );
    if options.runs("node") {
        anyhow::ensure!(
            !report.machine.node.is_empty(),
            "node is missing ({}): install Node.js, set NODE_BIN, or --skip node",
            node_hmac::binary().display()
        );
    }
    let step = |n: usize, what: &str| println!("[{n}/{}] {what}", PHASES.len());
    // The ingress and its ceilings run interleaved (see `Harness::interleave`).
    let mut subjects = Vec::new();
    if options.runs("bare") {
        step(1, "bare HTTP server (the HTTP ceiling)");
        subjects.push(harness.start_bare().await?);
    }
    if options.runs("publish") {
        step(2, "raw JetStream publish (the broker ceiling)");
        subjects.push(harness.start_publish().await?);
    }
    if options.runs("naive") {
        step(3, "naive one-write ingress (HMAC v2, one publish)");
        subjects.push(harness.start_naive().await?);
    }
    if options.runs("node") {
        step(4, "node:http + HMAC v2, stores nothing");
        subjects.push(harness.start_node().await?);
    }
    if options.runs("ingress") {
        step(5, "ingress (HMAC v2, file storage)");
        subjects.push(harness.start_ingress().await?);
    }
    if !subjects.is_empty() {
        println!(
            "  interleaved: {} rounds at full speed, {} at {} req/s",
            rounds(options.max_s),
            rounds_fixed(options.fixed_s),
            options.fixed_rate
        );
        harness.interleave(&mut subjects).await;
    }
    for subject in subjects {
        let label = subject.label;
        let phase = Some(harness.finish(subject).await?);
        match label {
            "bare" => report.bare = phase,
            "raw publish" => report.raw_publish = phase,
            "naive" => report.naive_ingress = phase,
            "node+hmac" => report.node_hmac = phase,
            _ => report.ingress = phase,
        }
    }
    if options.runs("e2e") {
        step(
            6,
            "end to end (default configuration, random conversation keys)",
        );
        report.e2e = Some(harness.phase_e2e().await?);
    }
    if options.runs("burst") {
        step(7, "burst: customers writing at once to one worker");
        report.burst = Some(harness.phase_burst().await?);
    }
    if options.runs("scaling") {
        step(
            8,
            "worker scaling (default configuration, backlog of distinct conversations)",
        );
        for &replicas in &options.scale_replicas {
            report.scaling.push(harness.scale_run(replicas).await?);
        }
        scaling::speedups(&mut report.scaling);
    }
    if options.runs("cluster") {
        step(
            9,
            "cluster: the ingress on R1 (one node) vs R3 (three nodes), fixed rate",
        );
        report.cluster = Some(harness.phase_cluster().await?);
    }
    report.machine.load_after = read_trim("/proc/loadavg");
    report.wall_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    targets::evaluate(&mut report);
    let table = super::table::render(&report);
    println!("\n{table}");
    let results = options.out_dir.join("results");
    std::fs::create_dir_all(&results)?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(results.join(format!("{stamp}.json")), &json)?;
    let latest = if options.skip.is_empty() {
        "latest"
    } else {
        "latest-partial"
    };
    std::fs::write(options.out_dir.join(format!("{latest}.json")), &json)?;
    std::fs::write(options.out_dir.join(format!("{latest}.md")), &table)?;
    println!(
        "results: {} and {}",
        results.join(format!("{stamp}.json")).display(),
        options
            .out_dir
            .join(format!("{latest}.{{json,md}}"))
            .display()
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114T221320Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }
}
