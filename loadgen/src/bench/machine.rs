//! What the run records about the machine and the checkout: CPU, memory, kernel, versions,
//! the git commit, and the timestamp format of the result files.

use super::*;

pub(super) fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub(super) fn command_output(program: &str, args: &[&str]) -> String {
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
pub(super) fn required_binaries(options: &BenchOptions) -> Vec<&'static str> {
    let mut bins = Vec::new();
    if options.runs_any(&["ingress", "e2e", "burst", "scaling", "cluster"]) {
        bins.push("ingress");
    }
    if options.runs_any(&WORKER_PHASES) {
        bins.extend(["worker", "khoros-sim", "kore-sim"]);
    }
    bins
}

pub(super) fn machine(nats_bin: &Path) -> Machine {
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

pub(super) fn git() -> BTreeMap<String, String> {
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
