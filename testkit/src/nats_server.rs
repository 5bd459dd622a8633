//! A real `nats-server` with JetStream for one test: free loopback port, temp store dir,
//! stop/restart on the same port and store, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The release line the project supports and tests (see `dev/nats-server`).
pub const SUPPORTED_LINE: (u32, u32) = (2, 14);

/// `NATS_SERVER_BIN` (set by `dev/test` to the pinned server), else the copy `dev/nats-server`
/// installs in this checkout. Never the machine's own (Debian's 2.9 lacks what we rely on:
/// per-message TTL, the account info async-nats parses).
pub fn binary() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let path = std::env::var_os("NATS_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../.tools/nats-server-2.14.2/bin/nats-server")
                });
            assert!(
                path.is_file(),
                "nats-server not found at {}: run ./dev/nats-server (installs the pinned release) \
                 or set NATS_SERVER_BIN",
                path.display()
            );
            check_version(&path);
            path
        })
        .clone()
}

/// Refuses a server older than the supported line, with a message that says what to do.
fn check_version(path: &Path) {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().trim_start_matches("nats-server: v");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        found >= SUPPORTED_LINE,
        "{} is nats-server {version}; the tests need {}.{} or newer (./dev/nats-server)",
        path.display(),
        SUPPORTED_LINE.0,
        SUPPORTED_LINE.1
    );
}

/// A running (or stopped) nats-server owned by a test.
pub struct NatsServer {
    port: u16,
    store: TempDir,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        let store = tempfile::Builder::new()
            .prefix("bridge-nats-")
            .tempdir()
            .expect("temp store dir");
        let log = store.path().join("nats.log");
        let port = free_port();
        let mut server = Self {
            port,
            store,
            log,
            child: None,
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Stops the server (SIGKILL, as a crash would); the store is kept for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and store dir and waits until it is reachable.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
