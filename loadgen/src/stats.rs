//! Summaries of what a load measured, in the shape written to the JSON results.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::driver::{Load, Measured, Pace};

/// Latency percentiles in milliseconds (from an HDR histogram of microseconds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_ms: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 0.41 | p90 0.62 | p99 1.20 | p99.9 3.10 | max 7.00 ms`.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} | p90 {:.2} | p99 {:.2} | p99.9 {:.2} | max {:.2} ms (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// One load's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// `closed` (N connections, as fast as possible) or `fixed` (open loop at `rate`).
    pub pace: String,
    pub connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Successful requests in the counted window.
    pub ok: u64,
    pub failed: u64,
    /// Failures by HTTP status or transport error.
    pub failures: BTreeMap<String, u64>,
    pub throughput_rps: f64,
    /// Ack latency: from the intended send time (fixed) or the send (closed) to the answer.
    pub latency: Latency,
    /// Requests issued in total, warm-up included.
    pub sent: u64,
}

impl LoadReport {
    pub fn new(load: &Load, measured: &Measured) -> Self {
        let (pace, rate) = match load.pace {
            Pace::Closed => ("closed", None),
            Pace::Rate(r) => ("fixed", Some(r)),
        };
        Self {
            pace: pace.into(),
            connections: load.connections,
            rate,
            warmup_s: load.warmup.as_secs_f64(),
            duration_s: load.duration.as_secs_f64(),
            ok: measured.ok,
            failed: measured.failed(),
            failures: measured.failures.clone(),
            throughput_rps: (measured.throughput() * 10.0).round() / 10.0,
            latency: Latency::from_histogram(&measured.latency),
            sent: measured.sent,
        }
    }

    /// One human line.
    pub fn line(&self) -> String {
        let pace = match self.rate {
            Some(rate) => format!("fixed {rate:.0} req/s"),
            None => format!("closed, {} conns", self.connections),
        };
        let failures = if self.failures.is_empty() {
            "no errors".to_string()
        } else {
            format!("errors {:?}", self.failures)
        };
        format!(
            "{pace}: {:.0} req/s ok={} {failures}; {}",
            self.throughput_rps,
            self.ok,
            self.latency.line()
        )
    }
}
