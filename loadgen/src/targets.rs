//! What the benchmark holds the bridge to. The ingress' throughput is judged as ratios to
//! ceilings measured in the same run on the same machine (absolute figures depend on the
//! machine); its ack latency and memory, the end-to-end overhead and the worker scaling against
//! fixed goals; and nothing may be lost, duplicated or refused anywhere.

use super::bench::scaling::DEFAULT_CONCURRENCY;
use super::bench::{BenchReport, BurstPhase, Check, PhaseReport, ScaleRun};

/// Ingress over the one-write bound: the ingress stores each event with one JetStream write,
/// so it should come close to one HTTP exchange plus one write, back to back on these cores.
const MIN_OVER_ONE_WRITE_BOUND: f64 = 0.85;
/// Ingress over the naive one-write ingress: everything the real one does beyond verifying,
/// storing once and answering (partitioning, routing headers, metrics, logs) should cost at
/// most 5 %.
const MIN_OVER_NAIVE: f64 = 0.95;
/// Ingress over node:http + HMAC that stores nothing: storing durably at the speed of a plain
/// webhook receiver that stores nothing.
const MIN_OVER_NODE_HMAC: f64 = 0.90;
/// Ingress ack p99 at the fixed rate: what Khoros waits for.
const MAX_ACK_P99_MS: f64 = 0.6;
/// Ingress resident memory peak (VmHWM): room for many replicas on a small node.
const MAX_RSS_MB: f64 = 32.0;
/// Pipeline overhead p99 end to end (reply time minus the bot's own latency).
const MAX_OVERHEAD_P99_MS: f64 = 10.0;
/// Burst: every customer of a simultaneous burst answered within this (1 s bot, 1 worker).
const MAX_BURST_S: f64 = 2.5;
/// One worker replica draining a backlog: throughput over WORKER_CONCURRENCY ÷ bot latency.
const MIN_OF_CONCURRENCY_BOUND: f64 = 0.90;
/// Speed-up over one replica, per replica (2 → 1.9×, 4 → 3.6×).
fn min_speedup(replicas: usize) -> f64 {
    match replicas {
        2 => 1.9,
        4 => 3.6,
        n => n as f64 * 0.9,
    }
}

/// A throughput the ingress' full-speed throughput is compared with.
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// `ingress_over_<key>` in the JSON ratios.
    pub key: &'static str,
    pub name: &'static str,
    pub rps: f64,
    /// Failed requests of the phases it comes from: a ceiling that refused requests (a server
    /// answering 401) is no valid comparison.
    pub failed: u64,
    /// The ratio the ingress must reach, when it is a target.
    pub goal: Option<f64>,
}

fn failed(p: &PhaseReport) -> u64 {
    p.max.failed + p.fixed.failed
}

/// 1 / (1/bare + 1/raw publish): one HTTP exchange and one JetStream write per event, one
/// after the other on the cores that each ceiling had to itself.
pub fn one_write_bound(bare_rps: f64, raw_rps: f64) -> f64 {
    1.0 / (1.0 / bare_rps + 1.0 / raw_rps)
}

/// The ceilings measured in this run, in the order they are shown.
pub fn ceilings(report: &BenchReport) -> Vec<Ceiling> {
    let measured = |key, name, phase: &Option<PhaseReport>, goal| {
        phase.as_ref().map(|p| Ceiling {
            key,
            name,
            rps: p.max.throughput_rps,
            failed: failed(p),
            goal,
        })
    };
    let bare = measured("bare", "bare HTTP 202", &report.bare, None);
    let raw = measured(
        "raw_publish",
        "raw JetStream publish",
        &report.raw_publish,
        None,
    );
    let bound = match (&bare, &raw) {
        (Some(b), Some(r)) => Some(Ceiling {
            key: "one_write_bound",
            name: "one-write bound 1 / (1/bare + 1/raw publish)",
            rps: one_write_bound(b.rps, r.rps).round(),
            failed: b.failed + r.failed,
            goal: Some(MIN_OVER_ONE_WRITE_BOUND),
        }),
        _ => None,
    };
    let naive = measured(
        "naive_ingress",
        "naive one-write ingress",
        &report.naive_ingress,
        Some(MIN_OVER_NAIVE),
    );
    let node = measured(
        "node_hmac",
        "node:http + HMAC, stores nothing",
        &report.node_hmac,
        Some(MIN_OVER_NODE_HMAC),
    );
    [bare, raw, bound, naive, node]
        .into_iter()
        .flatten()
        .collect()
}

fn ratio(a: f64, b: f64) -> f64 {
    (a / b * 1000.0).round() / 1000.0
}

/// Fills `report.ratios` and `report.checks`.
pub fn evaluate(report: &mut BenchReport) {
    let mut checks = Vec::new();
    if let Some(ingress) = report.ingress.as_ref().map(|p| p.max.throughput_rps) {
        for c in ceilings(report) {
            if c.key == "one_write_bound" {
                report.ratios.insert("one_write_bound_rps".into(), c.rps);
            }
            let x = ratio(ingress, c.rps);
            report.ratios.insert(format!("ingress_over_{}", c.key), x);
            if let Some(goal) = c.goal {
                checks.push(ratio_check(&c, goal, ingress, x));
            }
        }
    }
    if let Some(p) = &report.ingress {
        checks.push(Check {
            name: format!(
                "ingress ack p99 at {:.0} req/s",
                p.fixed.rate.unwrap_or(0.0)
            ),
            target: format!("<= {MAX_ACK_P99_MS} ms"),
            measured: format!("{:.2} ms", p.fixed.latency.p99_ms),
            pass: p.fixed.latency.p99_ms <= MAX_ACK_P99_MS && p.fixed.failed == 0,
        });
        if let Some(m) = p.memory {
            let mb = m.rss_kb.max(m.hwm_kb) as f64 / 1024.0;
            checks.push(Check {
                name: "ingress resident memory, peak (VmHWM)".into(),
                target: format!("<= {MAX_RSS_MB:.0} MB"),
                measured: format!("{mb:.1} MB"),
                pass: mb <= MAX_RSS_MB,
            });
        }
    }
    if let Some(e) = &report.e2e {
        checks.push(Check {
            name: format!(
                "pipeline overhead p99 at {:.0} msg/s, {:.0} ms bot",
                e.rate, e.report.bot_latency_ms
            ),
            target: format!("<= {MAX_OVERHEAD_P99_MS:.0} ms"),
            measured: format!("{:.2} ms", e.report.overhead.p99_ms),
            pass: e.report.overhead.p99_ms <= MAX_OVERHEAD_P99_MS && e.report.end_to_end.count > 0,
        });
    }
    if let Some(b) = &report.burst {
        checks.push(burst_check(b));
    }
    for s in &report.scaling {
        checks.push(scaling_check(s));
    }
    checks.push(no_loss(report));
    report.checks = checks;
}

fn burst_check(b: &BurstPhase) -> Check {
    let r = &b.report;
    let max_s = r.end_to_end.max_ms / 1000.0;
    Check {
        name: format!(
            "burst of {} customers, 1 worker, {} ms bot: send → reply, max",
            b.customers, b.bot_ms
        ),
        target: format!("<= {MAX_BURST_S} s, all answered"),
        measured: format!(
            "{max_s:.2} s (p50 {:.2} s), {} of {} answered",
            r.end_to_end.p50_ms / 1000.0,
            r.replies,
            b.customers
        ),
        pass: max_s <= MAX_BURST_S && r.replies == b.customers && b.failed == 0 && r.clean(),
    }
}

fn scaling_check(s: &ScaleRun) -> Check {
    let clean = s.report.clean() && s.report.replies == s.events && s.events > 0;
    match s.of_bound {
        Some(x) => Check {
            name: format!(
                "1 worker draining a backlog: throughput / (WORKER_CONCURRENCY {:.0} / {} ms bot)",
                DEFAULT_CONCURRENCY, s.bot_ms
            ),
            target: format!(">= {MIN_OF_CONCURRENCY_BOUND:.2}"),
            measured: format!(
                "{x:.2} ({:.1} / {:.0} msg/s)",
                s.throughput,
                DEFAULT_CONCURRENCY * 1000.0 / s.bot_ms as f64
            ),
            pass: x >= MIN_OF_CONCURRENCY_BOUND && clean,
        },
        None => {
            let need = min_speedup(s.replicas);
            Check {
                name: format!("worker speed-up with {} replicas", s.replicas),
                target: format!(">= {need:.1}x"),
                measured: format!("{:.2}x ({:.1} msg/s)", s.speedup, s.throughput),
                pass: s.speedup >= need && clean,
            }
        }
    }
}

fn ratio_check(c: &Ceiling, goal: f64, ingress: f64, x: f64) -> Check {
    let mut measured = format!("{x:.2} ({ingress:.0} / {:.0} req/s)", c.rps);
    if c.failed > 0 {
        measured.push_str(&format!(
            "; the ceiling failed {} requests: no valid comparison",
            c.failed
        ));
    }
    Check {
        name: format!("ingress throughput / {}", c.name),
        target: format!(">= {goal:.2}"),
        measured,
        pass: x >= goal && c.failed == 0 && c.rps > 0.0,
    }
}

/// No loss, no duplicate, no failed request, in any phase.
fn no_loss(report: &BenchReport) -> Check {
    let mut problems = Vec::new();
    for (name, phase) in report.load_phases() {
        let Some(p) = phase else { continue };
        if let (Some(a), Some(s)) = (p.accepted, p.stored) {
            if a != s {
                problems.push(format!("{name}: {a} acknowledged, {s} stored"));
            }
        }
        if failed(p) > 0 {
            problems.push(format!("{name}: {} failed requests", failed(p)));
        }
    }
    let e2e_reports = report
        .e2e
        .iter()
        .map(|e| ("e2e".to_string(), &e.report))
        .chain(
            report
                .burst
                .iter()
                .map(|b| ("burst".to_string(), &b.report)),
        )
        .chain(
            report
                .scaling
                .iter()
                .map(|s| (format!("scaling x{}", s.replicas), &s.report)),
        );
    for (name, r) in e2e_reports {
        if !r.clean() {
            problems.push(format!(
                "{name}: {} lost, {} duplicates, {} unexpected, {} unprocessed",
                r.lost,
                r.duplicates,
                r.unexpected,
                r.unprocessed.unwrap_or(0)
            ));
        }
    }
    Check {
        name: "no loss, no duplicate reply, no failed request".into(),
        target: "0".into(),
        measured: if problems.is_empty() {
            "0".into()
        } else {
            problems.join("; ")
        },
        pass: problems.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_bound_is_the_harmonic_sum() {
        let near = |a: f64, b: f64| (a - b).abs() < 0.1;
        assert!(near(one_write_bound(100_000.0, 100_000.0), 50_000.0));
        assert!(near(one_write_bound(109_202.0, 98_249.0), 51_718.2));
    }

    #[test]
    fn a_ceiling_that_refused_requests_fails_its_target() {
        let node = Ceiling {
            key: "node_hmac",
            name: "node:http + HMAC, stores nothing",
            rps: 10.0,
            failed: 5_000,
            goal: Some(MIN_OVER_NODE_HMAC),
        };
        let check = ratio_check(&node, MIN_OVER_NODE_HMAC, 30_000.0, ratio(30_000.0, 10.0));
        assert!(!check.pass, "{check:?}");
        assert!(check.measured.contains("no valid comparison"));
    }
}
