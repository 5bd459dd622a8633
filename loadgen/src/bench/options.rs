//! What `loadgen bench` runs: the phases, their lengths and rates, and the command line's
//! choices.

use super::*;

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

    pub(super) fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }

    pub(super) fn runs_any(&self, phases: &[&str]) -> bool {
        phases.iter().any(|p| self.runs(p))
    }
}
