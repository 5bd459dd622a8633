//! The report's schema: what each phase measured, the checks, the machine, written as JSON
//! and as the Markdown tables.

use super::*;

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
