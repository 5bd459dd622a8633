//! The load engine: open loop at a fixed rate, or closed loop with N connections.
//!
//! Open loop: request `i` is *intended* at `start + i / rate`. A dedicated OS thread (not the
//! millisecond tokio timer) releases each request at its intended time into a queue that the
//! connections drain; latency is measured from the intended time, so a stalled server is
//! charged for every request it delayed, queued ones included (no coordinated omission).
//! Closed loop: N connections each send the next request as soon as the previous answered.
//!
//! Latencies go into HDR histograms in microseconds, one per connection, merged at the end.
//! Only requests intended (open) or completed (closed) after the warm-up are counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Mutex};

/// A request that did not succeed: the HTTP status, or what went wrong on the way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    Status(u16),
    Transport(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => write!(f, "{status}"),
            Failure::Transport(what) => f.write_str(what),
        }
    }
}

/// One request to send.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub seq: u64,
    /// When it should have left (open loop); `None` in a closed loop.
    pub intended: Option<Instant>,
}

/// Something the engine can send requests to.
pub trait Target: Send + Sync + 'static {
    /// Per-connection state (an HTTP/1.1 connection, nothing for NATS).
    type Conn: Send + 'static;

    fn connect(&self) -> impl Future<Output = Result<Self::Conn, Failure>> + Send;

    /// Sends `job` on `conn`; `Err` when the request failed. A transport failure drops the
    /// connection, and the next request opens a new one.
    fn send(
        &self,
        conn: &mut Self::Conn,
        job: Job,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the connections allow.
    Closed,
    /// This many requests per second, whatever the answers take.
    Rate(f64),
}

/// A load to apply.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub pace: Pace,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request slower than this counts as failed (`timeout`).
    pub timeout: Duration,
    /// Sequence number of the first request (so several loads never reuse an event).
    pub first_seq: u64,
}

/// What a load measured (the counted part, after the warm-up).
#[derive(Debug)]
pub struct Measured {
    /// Latency in microseconds of every counted success.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub failures: BTreeMap<String, u64>,
    /// Length of the counted window.
    pub window: Duration,
    /// Requests issued in total, warm-up included (next free sequence = first_seq + sent).
    pub sent: u64,
    /// Successes in total, warm-up included (what should now be stored).
    pub ok_total: u64,
    /// When the load started (request `first_seq`'s intended time in open loop).
    pub started: Instant,
}

impl Measured {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Adds another run of the same load (a later slice of an interleaved benchmark).
    pub fn absorb(&mut self, other: Measured) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds");
        self.ok += other.ok;
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        self.window += other.window;
        self.sent += other.sent;
        self.ok_total += other.ok_total;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Per-connection tallies.
struct Tally {
    latency: Histogram<u64>,
    ok: u64,
    ok_total: u64,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            ok: 0,
            ok_total: 0,
            failures: BTreeMap::new(),
        }
    }

    fn record(&mut self, result: Result<(), Failure>, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.latency.saturating_record(latency.as_micros() as u64);
            }
            Err(failure) => *self.failures.entry(failure.to_string()).or_default() += 1,
        }
    }
}

async fn attempt<T: Target>(
    target: &T,
    conn: &mut Option<T::Conn>,
    job: Job,
    timeout: Duration,
) -> Result<(), Failure> {
    let work = async {
        if conn.is_none() {
            *conn = Some(target.connect().await?);
        }
        let result = target
            .send(conn.as_mut().expect("connected above"), job)
            .await;
        if let Err(Failure::Transport(_)) = result {
            *conn = None;
        }
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            *conn = None;
            Err(Failure::Transport("timeout"))
        }
    }
}

/// Applies `load` to `target` and returns what was measured.
pub async fn run<T: Target>(target: Arc<T>, load: Load) -> Measured {
    match load.pace {
        Pace::Closed => closed(target, load).await,
        Pace::Rate(rate) => open(target, load, rate).await,
    }
}

async fn closed<T: Target>(target: Arc<T>, load: Load) -> Measured {
    let started = Instant::now();
    let counted_from = started + load.warmup;
    let end = counted_from + load.duration;
    let next = Arc::new(AtomicU64::new(load.first_seq));
    let mut tasks = Vec::new();
    for _ in 0..load.connections.max(1) {
        let target = target.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut conn = None;
            while Instant::now() < end {
                let job = Job {
                    seq: next.fetch_add(1, Ordering::Relaxed),
                    intended: None,
                };
                let sent = Instant::now();
                let result = attempt(&*target, &mut conn, job, load.timeout).await;
                let done = Instant::now();
                tally.ok_total += u64::from(result.is_ok());
                if done >= counted_from && done <= end {
                    tally.record(result, done - sent);
                }
            }
            tally
        }));
    }
    let mut measured = merge(tasks, started, load.duration).await;
    measured.sent = next.load(Ordering::Relaxed) - load.first_seq;
    measured
}

async fn open<T: Target>(target: Arc<T>, load: Load, rate: f64) -> Measured {
    let total = ((load.warmup + load.duration).as_secs_f64() * rate).ceil() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    // Start a little ahead so the connections are open before the first intended time.
    let started = Instant::now() + Duration::from_millis(50);
    let counted_from = started + load.warmup;
    let mut tasks = Vec::new();
    for _ in 0..load.connections.max(1) {
        let target = target.clone();
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut conn = target.connect().await.ok();
            loop {
                let Some(job) = rx.lock().await.recv().await else {
                    break;
                };
                let result = attempt(&*target, &mut conn, job, load.timeout).await;
                let intended = job.intended.expect("open-loop jobs have an intended time");
                tally.ok_total += u64::from(result.is_ok());
                if intended >= counted_from {
                    tally.record(result, intended.elapsed());
                }
            }
            tally
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let pacer = {
        let stop = stop.clone();
        let first = load.first_seq;
        std::thread::spawn(move || {
            for i in 0..total {
                let intended = started + period.mul_f64(i as f64);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let job = Job {
                    seq: first + i,
                    intended: Some(intended),
                };
                if tx.send(job).is_err() {
                    break;
                }
            }
        })
    };
    let pacer = tokio::task::spawn_blocking(move || pacer.join());
    let _ = pacer.await;
    stop.store(true, Ordering::Relaxed);
    let mut measured = merge(tasks, started, load.duration).await;
    measured.sent = total;
    measured
}

async fn merge(
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
    window: Duration,
) -> Measured {
    let mut measured = Measured {
        latency: histogram(),
        ok: 0,
        failures: BTreeMap::new(),
        window,
        sent: 0,
        ok_total: 0,
        started,
    };
    for task in tasks {
        if let Ok(tally) = task.await {
            measured.ok += tally.ok;
            measured.ok_total += tally.ok_total;
            let _ = measured.latency.add(&tally.latency);
            for (k, v) in tally.failures {
                *measured.failures.entry(k).or_default() += v;
            }
        }
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after 1 ms; every 10th request fails with 503.
    struct Fake {
        sent: AtomicU64,
    }

    impl Target for Fake {
        type Conn = ();
        async fn connect(&self) -> Result<(), Failure> {
            Ok(())
        }
        async fn send(&self, _conn: &mut (), job: Job) -> Result<(), Failure> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
            if job.seq % 10 == 9 {
                Err(Failure::Status(503))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate_and_counts_failures() {
        let target = Arc::new(Fake {
            sent: AtomicU64::new(0),
        });
        let load = Load {
            pace: Pace::Rate(500.0),
            connections: 4,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            timeout: Duration::from_secs(1),
            first_seq: 0,
        };
        let measured = run(target.clone(), load).await;
        assert_eq!(target.sent.load(Ordering::Relaxed), 500);
        assert_eq!(measured.sent, 500);
        assert_eq!(measured.ok + measured.failed(), 400);
        assert_eq!(measured.failures.get("503"), Some(&40));
        assert!(measured.latency.value_at_quantile(0.5) >= 1_000);
    }

    #[tokio::test]
    async fn closed_loop_counts_only_the_window() {
        let target = Arc::new(Fake {
            sent: AtomicU64::new(0),
        });
        let load = Load {
            pace: Pace::Closed,
            connections: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            timeout: Duration::from_secs(1),
            first_seq: 1_000,
        };
        let measured = run(target.clone(), load).await;
        assert!(measured.ok > 50, "{measured:?}");
        assert!(measured.sent >= measured.ok + measured.failed());
    }
}
