//! A ceiling: node:http plus Khoros HMAC v2 verification that stores nothing
//! (`bench/servers/node-hmac.js`, one `node` process). The ingress should store durably at the
//! speed of this server that stores nothing.
//!
//! The script is compiled into `loadgen`, so the benchmark runs the version it was built with
//! from any directory.

use std::path::{Path, PathBuf};

/// `bench/servers/node-hmac.js`.
pub const SCRIPT: &str = include_str!("../../bench/servers/node-hmac.js");

/// `NODE_BIN`, or `node` on the PATH.
pub fn binary() -> PathBuf {
    std::env::var_os("NODE_BIN").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

/// How to start the server: the program, its arguments and environment.
pub struct NodeCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Writes the script into `dir` and returns the command that serves it on `listen`
/// (`ip:port`), accepting `api_key` signed with `secret`.
pub fn command(
    dir: &Path,
    listen: &str,
    api_key: &str,
    secret: &str,
) -> std::io::Result<NodeCommand> {
    let script = dir.join("node-hmac.js");
    std::fs::write(&script, SCRIPT)?;
    Ok(NodeCommand {
        program: binary(),
        args: vec![script.display().to_string()],
        env: vec![
            ("LISTEN".into(), listen.into()),
            ("KHOROS_HMAC_KEYS".into(), format!("{api_key}={secret}")),
        ],
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use shared::Secret;

    use super::*;
    use crate::driver::{Failure, Job, Target};
    use crate::events::{EventSource, Spread};
    use crate::http::{HmacCredentials, HttpTarget};
    use crate::procs::{self, Proc};

    async fn send(url: &str, secret: &str) -> Result<(), Failure> {
        let events = Arc::new(EventSource::new("t", "kore-bridge", 4, 16, 5, Spread::Even));
        let credentials = HmacCredentials {
            api_key: "key".into(),
            secret: Secret::new(secret),
        };
        let target = HttpTarget::new(url, Some(credentials), events).expect("url");
        let mut conn = target.connect().await?;
        target
            .send(
                &mut conn,
                Job {
                    seq: 1,
                    intended: None,
                },
            )
            .await
    }

    /// Accepts what the load generator signs, refuses a wrong secret (needs `node`).
    #[tokio::test]
    async fn accepts_signed_events_and_refuses_bad_signatures() {
        if std::process::Command::new(binary())
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("node not found: skipped");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = format!("127.0.0.1:{}", testkit::nats_server::free_port());
        let node = command(dir.path(), &listen, "key", "right").expect("script");
        let _server = Proc::spawn(
            "node-hmac",
            &node.program,
            &node.args,
            &node.env,
            dir.path(),
        )
        .unwrap();
        procs::wait_http_ok(
            &reqwest::Client::new(),
            &format!("http://{listen}/readyz"),
            Duration::from_secs(10),
        )
        .await
        .expect("node-hmac ready");
        let url = format!("http://{listen}/khoros/events");
        assert_eq!(send(&url, "right").await, Ok(()));
        assert_eq!(send(&url, "wrong").await, Err(Failure::Status(401)));
    }
}
