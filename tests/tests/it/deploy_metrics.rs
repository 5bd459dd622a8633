//! The Grafana dashboard and the alert rules in `deploy/` use only metric names the code
//! exports (`docs/decisions.md`, "Everything is observable").
//!
//! Every metric name referenced by `deploy/grafana/khoros-kore-bridge.json` (panel queries and
//! variable queries) and `deploy/prometheus/rules.yaml` is parsed out of its PromQL
//! (`_bucket`, `_sum` and `_count` stripped). Then the real stack runs in-process (nats-server,
//! ingress, worker, scheduler, khoros-sim, kore-sim) and is driven through every path that
//! records a metric: a reply, a duplicate, a 401, an agent-owned conversation, a Khoros 400
//! (dead letter), a Kore.ai outage (hand-off, retries, breaker), a token rotation, and finally
//! NATS going away (JetStream sampling errors). The recorder is process-wide, so one scrape of
//! `/metrics` shows every service's metrics; each referenced name must be in it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use khoros_sim::faults::Fault;
use kore_sim::KoreSimConfig;
use scheduler::records::AttemptStatus;
use scheduler::SchedulerConfig;
use serde_json::Value;
use shared::Secret;
use testkit::sign::{Credentials, Signer};
use testkit::wait;
use tokio_util::sync::CancellationToken;

use crate::helpers::{message_event, HMAC_KEY};
use crate::stack::{Stack, WAIT};

const DASHBOARD: &str = "../deploy/grafana/khoros-kore-bridge.json";
/// Referenced metrics recorded only on paths this test does not drive (a redelivery, a lost
/// `/respond` answer resolved against the request log, a stream deleted at runtime). They are
/// checked against the code's own names instead of the scrape.
const NOT_DRIVEN: [&str; 3] = [
    worker::telemetry::REDELIVERIES,
    worker::telemetry::RESOLUTIONS,
    shared::topology::RECREATED,
];
const RULES: &str = "../deploy/prometheus/rules.yaml";

fn read(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every metric name the dashboard and the rules reference, as written (with `_bucket` & co.).
fn referenced_metrics() -> BTreeSet<String> {
    let mut exprs = dashboard_exprs(&read(DASHBOARD));
    let rules = rules_exprs(&read(RULES));
    assert_eq!(
        rules.len(),
        read(RULES)
            .lines()
            .filter(|l| l.trim_start().starts_with("- alert:")
                || l.trim_start().starts_with("- record:"))
            .count(),
        "one expr per rule in {RULES}"
    );
    exprs.extend(rules);
    exprs.iter().flat_map(|e| metric_names(e)).collect()
}

/// A series name without its histogram suffix: the name the code registers.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The `expr` of every panel target, and the metric of every `label_values(metric, label)`
/// variable query.
fn dashboard_exprs(json: &str) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        ("query" | "definition", Value::String(q))
                            if q.starts_with("label_values(") =>
                        {
                            let inner = &q["label_values(".len()..q.rfind(',').unwrap_or(q.len())];
                            out.push(inner.to_string());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let board: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&board, &mut out);
    assert!(out.len() > 20, "found only {} dashboard queries", out.len());
    out
}

/// The `expr:` values of a rule file: inline, or a `|` / `>` block (lines indented deeper).
fn rules_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            out.push(rest.to_string());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .copied()
            .collect();
        out.push(block.join("\n"));
    }
    out
}

/// Metric names in a PromQL expression: identifiers that are not functions or aggregations
/// (followed by `(`), keywords, label names (inside `{}`, `by (...)`, `on (...)`, ...),
/// strings, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let next_non_space = |from: usize| chars[from..].iter().find(|c| !c.is_whitespace());
    let skip_to = |from: usize, close: char| {
        chars[from..]
            .iter()
            .position(|&c| c == close)
            .map_or(chars.len(), |p| from + p + 1)
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit() || c == '$' || c == '.' {
            // Numbers, durations (5m), Grafana variables ($__rate_interval, ${datasource}).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.{}".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // `sum by (le) (...)`: an aggregation whose grouping comes first is a call too.
            let rest: String = chars[i..].iter().collect();
            let grouped = ["by", "without"].iter().any(|k| {
                rest.trim_start()
                    .strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            let called = next_non_space(i) == Some(&'(') || grouped;
            if LABEL_LISTS.contains(&word.as_str()) && called {
                let open = i + chars[i..].iter().position(|&c| c == '(').unwrap_or(0);
                i = skip_to(open, ')');
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Metric names and types in a Prometheus exposition (`# TYPE <name> <type>` lines).
fn exported_metrics(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[test]
fn promql_metric_names_are_parsed_without_functions_labels_or_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (namespace, le) (rate(ingress_publish_duration_seconds_bucket{namespace=~"$namespace", x="a b"}[$__rate_interval])))
        / on (namespace) group_left (pool) max without (pod) (worker_in_flight offset 5m) > 2 * 86400
        and time() - scheduler_token_expiry_timestamp_seconds < bool 1e3 unless absent(up)"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "ingress_publish_duration_seconds_bucket",
            "scheduler_token_expiry_timestamp_seconds",
            "up",
            "worker_in_flight",
        ]
    );
    let rules = "    - alert: A\n      expr: |\n        sum(a_total)\n          > 1\n      for: 5m\n    - alert: B\n      expr: b_seconds_count > 0\n";
    assert_eq!(
        rules_exprs(rules),
        ["        sum(a_total)\n          > 1", "b_seconds_count > 0"]
    );
}

/// A scheduler against the stack, sampling JetStream every 100 ms, once it holds the lease.
async fn start_scheduler(stack: &Stack) -> (SchedulerConfig, CancellationToken) {
    let scheduler = stack
        .scheduler(&[
            ("TOKEN_CHECK_INTERVAL", "50ms"),
            ("METRICS_INTERVAL", "100ms"),
            ("KHOROS_RETRY_MIN_DELAY", "20ms"),
            ("KHOROS_RETRY_MAX_DELAY", "100ms"),
            ("SCHEDULER_ID", "deploy-metrics"),
        ])
        .await;
    wait::until(WAIT, "the scheduler to hold the lease", || async {
        scheduler.status.is_leader().then_some(())
    })
    .await;
    (scheduler.config, scheduler.shutdown)
}

async fn scrape(stack: &Stack) -> BTreeMap<String, String> {
    let text = stack
        .ingress
        .http
        .get(format!("{}/metrics", stack.ingress.ops))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    exported_metrics(&text)
}

/// Waits until the scrape holds every name in `names`.
async fn wait_for_metrics(stack: &Stack, what: &str, names: &[&str]) {
    wait::until(Duration::from_secs(45), what, || async {
        let exported = scrape(stack).await;
        names
            .iter()
            .all(|n| exported.contains_key(*n))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_dashboard_and_alerts_use_only_exported_metrics() {
    let written = referenced_metrics();
    let referenced: BTreeSet<String> = written.iter().map(|n| base_name(n).to_string()).collect();
    assert!(
        referenced.len() > 25,
        "the parser found too few metric names: {referenced:?}"
    );

    let mut stack = Stack::start(
        &[
            ("BREAKER_FAILURES", "1"),
            ("BREAKER_COOLDOWN", "300ms"),
            ("KORE_RETRY_MAX", "1"),
        ],
        &[],
        KoreSimConfig::default(),
    )
    .await;
    let (scheduler_config, scheduler_stop) = start_scheduler(&stack).await;

    // A reply: requests, ack and publish latency, stored events, worker handling, end to
    // end, both upstreams.
    stack.khoros.send_text("dm-reply", "hello").expect("inject");
    stack.replies("dm-reply", 1).await;

    // The ingress: a duplicate, a 401 (wrong secret), a Kore.ai delivery (route off: 404).
    let body = message_event("dm-dup", "twice");
    for _ in 0..2 {
        let (status, text) = stack.ingress.send(&body, Some("deploy-metrics-dup")).await;
        assert_eq!(status, 202, "{text}");
    }
    let forged = Signer {
        url: stack.ingress.url.clone(),
        credentials: Credentials::Hmac {
            api_key: HMAC_KEY.into(),
            secret: Secret::new("not-the-secret"),
        },
    };
    let refused = forged
        .request(
            &stack.ingress.http,
            body.as_bytes(),
            Some("deploy-metrics-401"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status().as_u16(), 401);
    let callback = stack
        .ingress
        .http
        .post(format!("{}/kore/callback", stack.ingress.base))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(callback.status().as_u16(), 404);
    wait_for_metrics(
        &stack,
        "ingress metrics",
        &[
            "ingress_duplicates_total",
            "ingress_auth_failures_total",
            "ingress_kore_callbacks_total",
        ],
    )
    .await;

    // An agent-owned conversation: conversation updates and a skipped message.
    stack.khoros.send_text("dm-agent", "first").expect("inject");
    stack.replies("dm-agent", 1).await;
    stack
        .khoros
        .agent_take("dm-agent", Some("mine"))
        .expect("agent takes");
    stack
        .khoros
        .send_text("dm-agent", "to the agent")
        .expect("inject");
    wait_for_metrics(
        &stack,
        "skipped and conversation updates",
        &["worker_skipped_total", "worker_conversation_updates_total"],
    )
    .await;

    // A Khoros 400 on /respond: a dead letter.
    stack
        .khoros
        .add_fault(Fault::status("respond", 400).times(5))
        .expect("fault");
    stack.khoros.send_text("dm-dead", "hi").expect("inject");
    wait_for_metrics(
        &stack,
        "a dead letter",
        &["worker_dead_letters_total", "dead_letter_messages"],
    )
    .await;
    stack.khoros.clear_faults();

    // Kore.ai down: retries, the breaker opens, the customer is handed to an agent.
    stack.kore.set_outage(Some(503)).expect("outage");
    stack.khoros.send_text("dm-outage", "help").expect("inject");
    stack
        .khoros
        .wait_until(WAIT, "a hand-off to an agent", |sim| {
            sim.control_changes()
                .into_iter()
                .find(|c| c.key.author_id == "dm-outage" && c.to.kind == "AGENT")
        })
        .await
        .expect("hand-off");
    stack.kore.set_outage(None).expect("outage over");

    // A rotation; the worker switches to the new token.
    let report = scheduler::commands::rotate_now(&scheduler_config)
        .await
        .expect("rotate-now");
    assert_eq!(report.status, AttemptStatus::Success, "{report:?}");
    wait_for_metrics(
        &stack,
        "the rotation and the worker's token swap",
        &["scheduler_rotations_total", "worker_token_swaps_total"],
    )
    .await;

    // Everything but the sampling-error counter is exported by now.
    let sampling_errors = "scheduler_jetstream_sample_errors_total";
    let all_but_sampling: Vec<&str> = referenced
        .iter()
        .map(String::as_str)
        .filter(|n| *n != sampling_errors && !NOT_DRIVEN.contains(n))
        .collect();
    let complete = tokio::time::timeout(
        Duration::from_secs(30),
        wait_for_metrics(&stack, "every referenced metric", &all_but_sampling),
    )
    .await;
    if complete.is_err() {
        let exported = scrape(&stack).await;
        let missing: Vec<&&str> = all_but_sampling
            .iter()
            .filter(|n| !exported.contains_key(**n))
            .collect();
        panic!("the dashboard or the alert rules use metrics the code does not export: {missing:?}\nexported: {exported:?}");
    }

    // NATS goes away: the scheduler's JetStream samples fail and are counted.
    stack.nats.stop();
    wait_for_metrics(&stack, "JetStream sampling errors", &[sampling_errors]).await;

    let exported = scrape(&stack).await;
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| !exported.contains_key(*n) && !NOT_DRIVEN.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alert rules use metrics the code does not export: {missing:?}"
    );
    // `_bucket`, `_sum` and `_count` series exist only for histograms (a summary has no buckets).
    for name in written.iter().filter(|n| base_name(n) != n.as_str()) {
        let kind = exported.get(base_name(name)).map(String::as_str);
        assert_eq!(
            kind,
            Some("histogram"),
            "{name} is used, but {} is a {kind:?}",
            base_name(name)
        );
    }
    scheduler_stop.cancel();
}
