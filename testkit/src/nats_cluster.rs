//! A three-node JetStream cluster on loopback for one test: free client, route and monitoring
//! ports, a temp store per node, config files written to the temp dir. Each node can be
//! SIGKILLed, stopped gracefully (SIGTERM), paused (SIGSTOP, the stand-in for a network cut:
//! its sockets stay open but nothing answers) and resumed, and restarted on the same ports and
//! store. Every node is killed on drop.
//!
//! Leaders are read from JetStream itself: `$JS.API.STREAM.INFO.<name>` → `cluster.leader`
//! (a KV bucket's stream is `KV_<bucket>`), the meta leader from the monitoring endpoint
//! (`/jsz` → `meta_cluster.leader`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use tempfile::TempDir;

use crate::nats_server::{binary, free_port};

/// Nodes of the cluster.
pub const NODES: usize = 3;

/// Cluster name in every node's config.
pub const CLUSTER_NAME: &str = "bridge-test";

struct Node {
    name: String,
    port: u16,
    route_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn available(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} {} failed", self.name);
        }
    }
}

/// Three `nats-server` processes routed to each other, JetStream on each.
pub struct NatsCluster {
    dir: TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts three nodes and waits (30 s at most) until the cluster has a meta leader and an
    /// R3 stream can be placed on it.
    pub async fn start() -> Self {
        let cluster = Self::start_nodes();
        let limit = Duration::from_secs(30);
        cluster
            .wait_meta_leader(limit)
            .await
            .expect("the cluster elects a meta leader");
        cluster
            .wait_placeable(limit)
            .await
            .expect("the cluster can place an R3 stream");
        cluster
    }

    /// Waits until an R3 stream can be created, by creating and deleting a probe stream. A meta
    /// group that counts every peer as current is not enough: the leader places a stream only
    /// on peers whose first statsz it has received, and until then it answers 10005 "no
    /// suitable peers for placement, peer offline".
    pub async fn wait_placeable(&self, limit: Duration) -> anyhow::Result<()> {
        const PROBE: &str = "HARNESS_PLACEMENT_PROBE";
        let deadline = Instant::now() + limit;
        let js = self.jetstream_timeout(Duration::from_secs(2)).await?;
        loop {
            let created = js
                .create_stream(jetstream::stream::Config {
                    name: PROBE.into(),
                    subjects: vec!["harness.placement.probe".into()],
                    num_replicas: NODES,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    js.delete_stream(PROBE).await?;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    anyhow::bail!("no R3 stream could be placed within {limit:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Starts three nodes and waits until each listens (no leader election awaited).
    pub fn start_nodes() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bridge-nats-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes: Vec<Node> = (0..NODES)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                route_port: free_port(),
                http_port: free_port(),
                config: dir.path().join(format!("n{i}.conf")),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.route_port))
            .collect();
        for node in &nodes {
            let store = dir.path().join(&node.name).join("jetstream");
            let config = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{port}\n\
                 http: 127.0.0.1:{http}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                name = node.name,
                port = node.port,
                http = node.http_port,
                store = store.display(),
                route = node.route_port,
                routes = routes.join(", "),
            );
            std::fs::write(&node.config, config).expect("write node config");
        }
        for node in &mut nodes {
            spawn(node);
        }
        for node in &mut nodes {
            wait_listening(node);
        }
        Self {
            dir,
            nodes,
            http: reqwest::Client::new(),
        }
    }

    /// `NATS_URL` for the bridge services: every node, comma-separated.
    pub fn client_url(&self) -> String {
        (0..NODES)
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client on every node (as the services connect with [`Self::client_url`]).
    pub async fn connect_all(&self) -> anyhow::Result<async_nats::Client> {
        let servers: Vec<String> = (0..NODES).map(|i| self.node_url(i)).collect();
        Ok(async_nats::connect(servers.as_slice()).await?)
    }

    /// The client URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The `server_name` of node `i` (`n0`, `n1`, `n2`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether node `i` runs and is not paused.
    pub fn is_available(&self, i: usize) -> bool {
        self.nodes[i].available()
    }

    /// SIGKILL, as a crash or a lost machine would; store and ports kept for [`Self::restart`].
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGTERM and wait for the exit (a graceful shutdown: the node says goodbye to its routes).
    pub fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.paused {
            node.signal("-CONT");
            node.paused = false;
        }
        node.signal("-TERM");
        if let Some(mut child) = node.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers — what its peers and
    /// clients see of a network cut (without the TCP resets a SIGKILL causes).
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("-STOP");
        self.nodes[i].paused = self.nodes[i].running();
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("-CONT");
        self.nodes[i].paused = false;
    }

    /// Starts node `i` again (killing it first if it runs) on its ports and store, and waits
    /// until it listens.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        spawn(&mut self.nodes[i]);
        wait_listening(&mut self.nodes[i]);
    }

    /// The log of node `i`.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// A JetStream context on one available node (a fresh connection, so a paused node is
    /// never the one asked).
    pub async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        self.jetstream_timeout(Duration::from_secs(5)).await
    }

    /// [`Self::jetstream`] whose requests give up after `timeout`.
    async fn jetstream_timeout(&self, timeout: Duration) -> anyhow::Result<jetstream::Context> {
        let i = (0..NODES)
            .find(|&i| self.is_available(i))
            .ok_or_else(|| anyhow::anyhow!("no node is available"))?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.node_url(i))
            .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(timeout);
        Ok(js)
    }

    /// Node `i`'s `/jsz` `meta_cluster` object.
    async fn meta_cluster(&self, i: usize) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/jsz", self.nodes[i].http_port);
        let mut body: serde_json::Value = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(body["meta_cluster"].take())
    }

    /// The meta leader's name, as node `i`'s monitoring endpoint reports it.
    pub async fn meta_leader_seen_by(&self, i: usize) -> Option<String> {
        self.meta_cluster(i).await?["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
    }

    /// Why the meta group is not whole yet: no leader, or the leader does not count every
    /// available node as a current peer (a stream of R3 cannot be placed before it does).
    async fn meta_problem(&self) -> Option<String> {
        let available: Vec<usize> = (0..NODES).filter(|&i| self.is_available(i)).collect();
        let mut leader = None;
        for &i in &available {
            match self.meta_leader_seen_by(i).await {
                Some(l) => leader = Some(l),
                None => return Some(format!("{} sees no meta leader", self.name(i))),
            }
        }
        let Some(leader) = leader else {
            return Some("no node is available".into());
        };
        let Some(l) = self.index_of(&leader).filter(|&l| self.is_available(l)) else {
            return Some(format!("meta leader {leader} is not available"));
        };
        let meta = self.meta_cluster(l).await?;
        let current = meta["replicas"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|p| p["current"].as_bool() == Some(true))
                    .filter(|p| p["offline"].as_bool() != Some(true))
                    .filter_map(|p| p["name"].as_str())
                    .filter(|name| self.index_of(name).is_some_and(|i| self.is_available(i)))
                    .count()
            })
            .unwrap_or(0);
        (current + 1 < available.len()).then(|| {
            format!(
                "meta leader {leader} counts {current} current peers of {}",
                available.len() - 1
            )
        })
    }

    /// Waits until the meta group has a leader that counts every available node as a current
    /// peer; returns the leader's name.
    pub async fn wait_meta_leader(&self, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let problem = self.meta_problem().await;
            if problem.is_none() {
                for i in (0..NODES).filter(|&i| self.is_available(i)) {
                    if let Some(leader) = self.meta_leader_seen_by(i).await {
                        return Ok(leader);
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "meta group not whole within {limit:?}: {}",
                problem.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cluster part of `$JS.API.STREAM.INFO.<stream>`.
    pub async fn stream_cluster(
        &self,
        stream: &str,
    ) -> anyhow::Result<jetstream::stream::ClusterInfo> {
        // A short deadline, so the end of an election is seen when it comes.
        let js = self.jetstream_timeout(Duration::from_millis(500)).await?;
        let mut handle = js.get_stream(stream).await?;
        let info = handle.info().await?;
        info.cluster
            .clone()
            .ok_or_else(|| anyhow::anyhow!("stream {stream} has no cluster info"))
    }

    /// The node leading `stream` (a KV bucket's stream is `KV_<bucket>`), if it has a leader.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        let cluster = self.stream_cluster(stream).await.ok()?;
        self.index_of(cluster.leader.as_deref()?)
    }

    /// Waits until `stream` has a leader; returns the node.
    pub async fn wait_leader_of(&self, stream: &str, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader_of(stream).await {
                return Ok(leader);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "stream {stream} has no leader within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The names of every stream of the account.
    pub async fn stream_names(&self) -> anyhow::Result<Vec<String>> {
        let js = self.jetstream().await?;
        let mut names = js.stream_names();
        let mut out = Vec::new();
        while let Some(name) = names.next().await {
            out.push(name?);
        }
        Ok(out)
    }

    /// Waits until there is a meta leader and every stream has a leader and, for each
    /// replica on a node that runs, a current (caught-up, online) peer: the state after which
    /// losing any one node keeps a quorum everywhere.
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            match self.health_problem().await {
                Ok(None) => return Ok(()),
                Ok(Some(problem)) => last = problem,
                Err(e) => last = format!("{e:#}"),
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "cluster not healthy within {limit:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn health_problem(&self) -> anyhow::Result<Option<String>> {
        if let Some(problem) = self.meta_problem().await {
            return Ok(Some(problem));
        }
        for stream in self.stream_names().await? {
            let cluster = self.stream_cluster(&stream).await?;
            if cluster.leader.as_deref().unwrap_or_default().is_empty() {
                return Ok(Some(format!("{stream} has no leader")));
            }
            for peer in &cluster.replicas {
                let running = self
                    .index_of(&peer.name)
                    .is_some_and(|i| self.is_available(i));
                if running && (!peer.current || peer.offline) {
                    return Ok(Some(format!("{stream}: replica {} not current", peer.name)));
                }
            }
        }
        Ok(None)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn spawn(node: &mut Node) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .expect("log file");
    let child = Command::new(binary())
        .arg("-c")
        .arg(&node.config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nats-server");
    node.child = Some(child);
    node.paused = false;
}

fn wait_listening(node: &mut Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
        if let Some(status) = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "nats-server {} exited with {status}; log:\n{}",
                node.name,
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nats-server {} did not listen on {} within 10 s",
            node.name,
            node.port
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three nodes elect a meta leader, an R3 stream gets a leader on one of them, survives the
    /// SIGKILL of that leader (a new one is elected, a publish is acknowledged) and the node
    /// comes back as a current replica.
    #[tokio::test]
    async fn three_nodes_elect_and_survive_the_loss_of_a_leader() {
        let mut cluster = NatsCluster::start().await;
        let js = jetstream::new(cluster.connect_all().await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: "SELFTEST".into(),
            subjects: vec!["selftest.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream");
        let limit = Duration::from_secs(30);
        let leader = cluster.wait_leader_of("SELFTEST", limit).await.unwrap();
        cluster.wait_healthy(limit).await.unwrap();
        cluster.kill(leader);
        let next = cluster.wait_leader_of("SELFTEST", limit).await.unwrap();
        assert_ne!(next, leader, "a new leader");
        let js = cluster.jetstream().await.unwrap();
        js.publish("selftest.a", "x".into())
            .await
            .unwrap()
            .await
            .expect("acknowledged by the two survivors");
        cluster.restart(leader);
        cluster.wait_healthy(limit).await.unwrap();
        let replicas = cluster.stream_cluster("SELFTEST").await.unwrap().replicas;
        assert_eq!(
            replicas.len(),
            2,
            "two followers, all current: {replicas:?}"
        );
    }
}
