//! The benchmark's tables (Markdown, so they paste into the README as they are).

use std::fmt::Write;

use super::bench::scaling::DEFAULT_CONCURRENCY;
use super::bench::{BenchReport, PhaseReport};
use super::e2e::E2eReport;
use super::stats::Latency;
use super::targets;

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// Every table of a run.
pub fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "Run {} (commit {}{}), {} CPUs ({}), nats-server {}, node {}, load average before: {}, wall {:.0} s.\n",
        report.started_at,
        report.git.get("commit").map_or("?", String::as_str),
        if report.git.get("dirty").map(String::as_str) == Some("true") {
            ", uncommitted changes"
        } else {
            ""
        },
        m.cpus,
        m.cpu_model,
        m.nats_server.trim_start_matches("nats-server: "),
        if m.node.is_empty() { "–" } else { &m.node },
        m.load_before,
        report.wall_s,
    );
    ceilings(&mut out, report);
    e2e(&mut out, report);
    burst(&mut out, report);
    scaling(&mut out, report);
    cluster(&mut out, report);
    checks(&mut out, report);
    out
}

/// The phases of the ceilings table, in column order, with their headers.
fn ceiling_columns(report: &BenchReport) -> Vec<(&'static str, &PhaseReport)> {
    report
        .load_phases()
        .into_iter()
        .filter_map(|(name, phase)| phase.as_ref().map(|p| (name, p)))
        .collect()
}

/// One row: `name`, then `value` of every column.
fn row(
    out: &mut String,
    name: &str,
    columns: &[(&str, &PhaseReport)],
    value: impl Fn(&PhaseReport) -> String,
) {
    let cells: Vec<String> = columns.iter().map(|(_, p)| value(p)).collect();
    let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
}

fn errors(p: &PhaseReport) -> String {
    let mut all = p.max.failures.clone();
    for (k, v) in &p.fixed.failures {
        *all.entry(k.clone()).or_default() += v;
    }
    if all.is_empty() {
        return "0".into();
    }
    all.iter()
        .map(|(k, v)| format!("{v}× {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ceilings(out: &mut String, report: &BenchReport) {
    let columns = ceiling_columns(report);
    if columns.is_empty() {
        return;
    }
    let o = &report.options;
    let _ = writeln!(
        out,
        "**Ingress and its ceilings** (full speed: {} connections, closed loop, {:.0} s; latency: open loop at {:.0} req/s, {:.0} s, measured from the intended send time)\n",
        o.connections, o.max_s, o.fixed_rate, o.fixed_s
    );
    let headers: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(out, "| | {} |", headers.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
    row(out, "throughput (req/s)", &columns, |p| {
        format!("{:.0}", p.max.throughput_rps)
    });
    row(out, "latency p99 at full speed (ms)", &columns, |p| {
        format!("{:.2}", p.max.latency.p99_ms)
    });
    type Pick = fn(&Latency) -> f64;
    let percentiles: [(&str, Pick); 5] = [
        ("p50", |l| l.p50_ms),
        ("p90", |l| l.p90_ms),
        ("p99", |l| l.p99_ms),
        ("p99.9", |l| l.p999_ms),
        ("max", |l| l.max_ms),
    ];
    for (name, pick) in percentiles {
        let name = format!("ack latency {name} at {:.0} req/s (ms)", o.fixed_rate);
        row(out, &name, &columns, |p| {
            format!("{:.2}", pick(&p.fixed.latency))
        });
    }
    row(out, "errors (by status)", &columns, errors);
    row(out, "acknowledged / stored", &columns, |p| {
        match (p.accepted, p.stored) {
            (Some(a), Some(s)) => format!("{a} / {s}"),
            _ => "–".into(),
        }
    });
    row(out, "CPU at full speed (% of one core)", &columns, |p| {
        p.cpu_pct
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(out, "server resident memory, peak (VmHWM)", &columns, |p| {
        p.memory
            .map_or("–".to_string(), |m| mb(m.hwm_kb.max(m.rss_kb)))
    });
    let _ = writeln!(out);
    ratios(out, report);
}

/// The ingress' full-speed throughput over each ceiling.
fn ratios(out: &mut String, report: &BenchReport) {
    let Some(ingress) = &report.ingress else {
        return;
    };
    let ceilings = targets::ceilings(report);
    if ceilings.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "**The ingress over each ceiling** (full-speed throughput; ingress {:.0} req/s)\n",
        ingress.max.throughput_rps
    );
    let _ = writeln!(out, "| ceiling | req/s | ingress / ceiling |");
    let _ = writeln!(out, "|---|---:|---:|");
    for c in ceilings {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} |",
            c.name,
            c.rps,
            cell(
                report
                    .ratios
                    .get(&format!("ingress_over_{}", c.key))
                    .copied(),
                2
            )
        );
    }
    let _ = writeln!(out);
}

fn e2e(out: &mut String, report: &BenchReport) {
    let Some(e) = &report.e2e else {
        return;
    };
    let r = &e.report;
    let _ = writeln!(
        out,
        "**End to end** ({:.0} messages/s + updates, {:.0} ms simulated bot, {:.0} s, conversation keys {}; 1 worker, default configuration)\n",
        e.rate, r.bot_latency_ms, e.ingress.duration_s, e.spread
    );
    let _ = writeln!(out, "| | p50 | p90 | p99 | p99.9 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let rows = [
        ("ingress ack (ms)", &e.ingress.latency),
        (
            "end to end, event sent → reply at khoros-sim (ms)",
            &r.end_to_end,
        ),
        (
            "pipeline overhead = end to end − bot latency (ms)",
            &r.overhead,
        ),
    ];
    for (name, l) in rows {
        let _ = writeln!(
            out,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    let mem = e
        .memory
        .iter()
        .map(|(k, m)| format!("{k} {}", mb(m.hwm_kb)))
        .collect::<Vec<_>>()
        .join(", ");
    let cpu = e
        .cpu_pct
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}%"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\n{}{}. Peak memory: {mem}. CPU (% of one core): {cpu}.\n",
        flag(r),
        r.tally()
    );
}

/// Marks a run with a missing, duplicate or unexpected reply, or an event left over.
fn flag(r: &E2eReport) -> &'static str {
    if r.clean() {
        ""
    } else {
        "**FLAGGED (missing, duplicate or unexpected replies, or events left over)**: "
    }
}

fn burst(out: &mut String, report: &BenchReport) {
    let Some(b) = &report.burst else {
        return;
    };
    let r = &b.report;
    let _ = writeln!(
        out,
        "**Burst** ({} customers, each its own conversation, write at once; 1 worker, default configuration, {} ms simulated bot; send → reply at khoros-sim)\n",
        b.customers, b.bot_ms
    );
    let _ = writeln!(out, "| | p50 | p90 | p99 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let l = &r.end_to_end;
    let _ = writeln!(
        out,
        "| send → reply (s) | {:.2} | {:.2} | {:.2} | {:.2} |",
        l.p50_ms / 1000.0,
        l.p90_ms / 1000.0,
        l.p99_ms / 1000.0,
        l.max_ms / 1000.0
    );
    let _ = writeln!(
        out,
        "\n{}{}; failed sends {}.\n",
        flag(r),
        r.tally(),
        b.failed
    );
}

fn scaling(out: &mut String, report: &BenchReport) {
    let Some(first) = report.scaling.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "**Worker scaling** (a backlog of message events, one conversation each, loaded before the workers start, drained by R replicas in their default configuration; {} ms simulated bot; throughput = replies / (last reply − first reply + bot latency), counted at khoros-sim)\n",
        first.bot_ms
    );
    let _ = writeln!(
        out,
        "| worker processes | measured (replies/s) | speed-up | of {:.0}/bot bound | to last reply (s) | events | subjects (deepest) | replies | duplicates | missing | |",
        DEFAULT_CONCURRENCY
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for s in &report.scaling {
        let r = &s.report;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2}× | {} | {:.1} | {} | {} ({}) | {} | {} | {} | {} |",
            s.replicas,
            s.throughput,
            s.speedup,
            s.of_bound.map_or("–".into(), |x| format!("{x:.2}")),
            s.wall_s,
            s.events,
            s.subjects,
            s.deepest_subject,
            r.replies,
            r.duplicates,
            r.lost,
            if r.clean() { "" } else { "**FLAGGED**" }
        );
    }
    let _ = writeln!(out);
}

fn checks(out: &mut String, report: &BenchReport) {
    if report.checks.is_empty() {
        return;
    }
    let _ = writeln!(out, "**Targets**\n");
    let _ = writeln!(out, "| target | goal | measured | |");
    let _ = writeln!(out, "|---|---|---|---|");
    for c in &report.checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            c.name,
            c.target,
            c.measured,
            if c.pass { "pass" } else { "**MISS**" }
        );
    }
}

fn cluster(out: &mut String, report: &BenchReport) {
    let Some(c) = &report.cluster else {
        return;
    };
    let _ = writeln!(
        out,
        "**Cluster** (the ingress at {} req/s, {} connections, interleaved rounds; R1: one nats-server, R3: three-node cluster, `JS_REPLICAS=3`; ack latency from the intended send time)\n",
        c.rate, c.r1.connections
    );
    let _ = writeln!(out, "| | ok | failed | p50 ms | p90 ms | p99 ms | max ms |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (name, r) in [("R1", &c.r1), ("R3", &c.r3)] {
        let l = &r.latency;
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.ok, r.failed, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
    }
    let _ = writeln!(
        out,
        "| **R3 / R1** | | | **{:.2}** | | **{:.2}** | |\n",
        c.p50_ratio, c.p99_ratio
    );
}
