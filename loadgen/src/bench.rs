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
//!
//! # Layout
//! - this file: [`run`], the phases in order and the results.
//! - [`options`]: what to run ([`BenchOptions`], [`PHASES`]); [`report`]: the results' schema.
//! - [`harness`]: the processes a phase starts and the loads run against them.
//! - [`ceilings`]: phases 1-5; [`pipeline`]: the worker pipeline and phase 6; [`burst`],
//!   [`scaling`], [`cluster`]: phases 7-9.
//! - [`machine`]: what the run records about the machine and the checkout.

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
mod ceilings;
mod cluster;
mod harness;
mod machine;
mod options;
mod pipeline;
mod report;
pub mod scaling;

use self::harness::*;
pub use self::machine::utc_stamp;
use self::machine::*;
pub use self::options::*;
pub use self::report::*;

const HMAC_KEY: &str = "bench-hmac-key";
const HMAC_SECRET: &str = "bench-hmac-secret-7f3c";
const BOT_TOKEN: &str = "bench-bot-api-token";
const APP_ID: &str = "kore-bridge";
/// kore-sim's defaults, so it needs no configuration.
const KORE_BOT_ID: &str = "st-11111111-2222-3333-4444-555555555555";
const KORE_CLIENT_ID: &str = "cs-00000000-test-app";
const KORE_CLIENT_SECRET: &str = "kore-test-client-secret-123";
const EVENTS_PATH: &str = "/khoros/events";

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
