//! The benchmark's tables (Markdown, so they paste into the README as they are).

use std::fmt::Write;

use super::bench::{BenchReport, PhaseReport};
use super::stats::Latency;

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
        "Run {} (commit {}{}), {} CPUs ({}), nats-server {}, load average before: {}, wall {:.0} s.\n",
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
        m.load_before,
        report.wall_s,
    );
    ceilings(&mut out, report);
    e2e(&mut out, report);
    scaling(&mut out, report);
    checks(&mut out, report);
    out
}

fn ceilings(out: &mut String, report: &BenchReport) {
    let phases = [&report.bare, &report.raw_publish, &report.ingress];
    if phases.iter().all(|p| p.is_none()) {
        return;
    }
    let o = &report.options;
    let get = |p: &Option<PhaseReport>, f: &dyn Fn(&PhaseReport) -> f64| p.as_ref().map(f);
    let ratio = |f: &dyn Fn(&PhaseReport) -> f64, base: &Option<PhaseReport>| match (
        get(&report.ingress, f),
        get(base, f),
    ) {
        (Some(i), Some(b)) if b > 0.0 => format!("{:.2}", i / b),
        _ => "–".into(),
    };
    let _ = writeln!(
        out,
        "**Ingress and its ceilings** (full speed: {} connections, closed loop, {:.0} s; latency: open loop at {:.0} req/s, {:.0} s, measured from the intended send time)\n",
        o.connections, o.max_s, o.fixed_rate, o.fixed_s
    );
    let _ = writeln!(
        out,
        "| | bare HTTP 202 | raw JetStream publish | ingress (HMAC v2, file store) | ingress / bare | ingress / raw publish |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let throughput = |p: &PhaseReport| p.max.throughput_rps;
    let _ = writeln!(
        out,
        "| throughput (req/s) | {} | {} | {} | {} | {} |",
        cell(get(&report.bare, &throughput), 0),
        cell(get(&report.raw_publish, &throughput), 0),
        cell(get(&report.ingress, &throughput), 0),
        ratio(&throughput, &report.bare),
        ratio(&throughput, &report.raw_publish),
    );
    if let (Some(series), Some(x)) = (
        report.ratios.get("series_bound_rps"),
        report.ratios.get("ingress_over_series_bound"),
    ) {
        let _ = writeln!(
            out,
            "| series bound 1 / (1/bare + 2/raw) (req/s) | | | {series:.0} | ingress / series bound: {x:.2} | |"
        );
    }
    let full_p99 = |p: &PhaseReport| p.max.latency.p99_ms;
    let _ = writeln!(
        out,
        "| latency p99 at full speed (ms) | {} | {} | {} | | |",
        cell(get(&report.bare, &full_p99), 2),
        cell(get(&report.raw_publish, &full_p99), 2),
        cell(get(&report.ingress, &full_p99), 2),
    );
    type Pick = fn(&Latency) -> f64;
    let rows: [(&str, Pick); 5] = [
        ("p50", |l| l.p50_ms),
        ("p90", |l| l.p90_ms),
        ("p99", |l| l.p99_ms),
        ("p99.9", |l| l.p999_ms),
        ("max", |l| l.max_ms),
    ];
    for (name, pick) in rows {
        let f = |p: &PhaseReport| pick(&p.fixed.latency);
        let _ = writeln!(
            out,
            "| ack latency {name} at {:.0} req/s (ms) | {} | {} | {} | | |",
            o.fixed_rate,
            cell(get(&report.bare, &f), 2),
            cell(get(&report.raw_publish, &f), 2),
            cell(get(&report.ingress, &f), 2),
        );
    }
    let errors = |p: &Option<PhaseReport>| {
        p.as_ref().map_or("–".to_string(), |p| {
            let mut all = p.max.failures.clone();
            for (k, v) in &p.fixed.failures {
                *all.entry(k.clone()).or_default() += v;
            }
            if all.is_empty() {
                "0".into()
            } else {
                all.iter()
                    .map(|(k, v)| format!("{v}× {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        })
    };
    let _ = writeln!(
        out,
        "| errors (by status) | {} | {} | {} | | |",
        errors(&report.bare),
        errors(&report.raw_publish),
        errors(&report.ingress)
    );
    let stored = |p: &Option<PhaseReport>| {
        p.as_ref()
            .and_then(|p| Some(format!("{} / {}", p.accepted?, p.stored?)))
            .unwrap_or_else(|| "–".into())
    };
    let _ = writeln!(
        out,
        "| acknowledged / stored | – | {} | {} | | |",
        stored(&report.raw_publish),
        stored(&report.ingress)
    );
    let cpu = |p: &Option<PhaseReport>| {
        p.as_ref().map_or("–".to_string(), |p| {
            p.cpu_pct
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}%"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let _ = writeln!(
        out,
        "| CPU at full speed (% of one core) | {} | {} | {} | | |",
        cpu(&report.bare),
        cpu(&report.raw_publish),
        cpu(&report.ingress)
    );
    let memory = |p: &Option<PhaseReport>| {
        p.as_ref()
            .and_then(|p| p.memory)
            .map_or("–".to_string(), |m| mb(m.hwm_kb.max(m.rss_kb)))
    };
    let _ = writeln!(
        out,
        "| server resident memory, peak (VmHWM) | {} | – | {} | | |\n",
        memory(&report.bare),
        memory(&report.ingress)
    );
}

fn e2e(out: &mut String, report: &BenchReport) {
    let Some(e) = &report.e2e else {
        return;
    };
    let r = &e.report;
    let random = report.e2e_random.as_ref();
    let _ = writeln!(
        out,
        "**End to end** ({:.0} messages/s + updates, {:.0} ms simulated bot, {:.0} s, {} partitions, conversations spread {} over the partitions; 1 worker)\n",
        e.rate, r.bot_latency_ms, e.ingress.duration_s, e.partitions, e.spread
    );
    let _ = writeln!(out, "| | p50 | p90 | p99 | p99.9 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mut rows = vec![
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
    if let Some(x) = random {
        rows.push((
            "pipeline overhead, conversations hashed at random (informational, ms)",
            &x.report.overhead,
        ));
    }
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
        "\nEvents accepted: {} messages + {} updates; replies {}, duplicates {}, lost {}, unexpected {}, left unacknowledged {}. Peak memory: {mem}. CPU (% of one core): {cpu}.\n",
        r.messages_accepted,
        r.updates_accepted,
        r.replies,
        r.duplicates,
        r.lost,
        r.unexpected,
        r.unprocessed.unwrap_or(0)
    );
    if let Some(x) = random {
        let x = &x.report;
        let _ = writeln!(
            out,
            "Random hashing run: {} messages + {} updates; replies {}, duplicates {}, lost {}, unexpected {}, left unacknowledged {}.\n",
            x.messages_accepted,
            x.updates_accepted,
            x.replies,
            x.duplicates,
            x.lost,
            x.unexpected,
            x.unprocessed.unwrap_or(0)
        );
    }
}

fn scaling(out: &mut String, report: &BenchReport) {
    let Some(first) = report.scaling.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "**Worker scaling** (message events only, backlog drained, {} ms simulated bot, WORKER_CONCURRENCY={}, {} partitions)\n",
        first.bot_ms, first.concurrency, first.partitions
    );
    let _ = writeln!(
        out,
        "| worker processes | bound min(P, R×C)/latency (msg/s) | measured (replies/s) | speed-up | events | replies | duplicates | lost |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &report.scaling {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.2}× | {} | {} | {} | {} |",
            s.replicas,
            s.bound,
            s.throughput,
            s.speedup,
            s.events,
            s.report.replies,
            s.report.duplicates,
            s.report.lost
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
