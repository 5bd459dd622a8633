//! Cluster: the ingress' ack latency at the fixed rate (1,000 req/s) with one nats-server and
//! R1 streams against a three-node cluster (`testkit::nats_cluster`) with `JS_REPLICAS=3`, in
//! one run, interleaved in rounds like the ceilings so both meet the same machine. The figure
//! is the ratio R3 / R1 of the p99 (and p50): what replicating every event to two more nodes
//! before the PubAck costs the webhook's answer.

use testkit::nats_cluster::NatsCluster;

use super::*;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterPhase {
    pub rate: f64,
    /// One node, R1 streams.
    pub r1: LoadReport,
    /// Three nodes, `JS_REPLICAS=3`, `NATS_URL` listing the three.
    pub r3: LoadReport,
    /// R3 over R1.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

impl Harness {
    pub(super) async fn phase_cluster(&self) -> anyhow::Result<ClusterPhase> {
        let o = &self.options;
        let nats = self.nats("cluster-r1").await?;
        let r1 = self
            .ingress_with("r1", &nats.base, Some(o.partitions), &[])
            .await?;
        let cluster = NatsCluster::start().await;
        // A meta leader is not enough: R3 streams are created only once every node is current.
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        // The streams and buckets exist before the ingress starts, as they do in production
        // (the workers and the scheduler create them too). Left to the ingress alone, its event
        // loops race to create the same R3 streams on a fresh cluster, and the loser's requests
        // time out (10 s each) until the readiness wait gives up.
        let env = Env::from_pairs([
            ("PARTITIONS", o.partitions.to_string()),
            ("JS_REPLICAS", "3".to_string()),
        ]);
        let js = async_nats::jetstream::new(
            async_nats::connect(cluster.client_url().split(',').collect::<Vec<_>>()).await?,
        );
        Topology::new(TopologyConfig::from_env(&env)?)
            .ensure(&js)
            .await?;
        let r3 = match self
            .ingress_with(
                "r3",
                &cluster.client_url(),
                Some(o.partitions),
                &[("JS_REPLICAS", "3".into())],
            )
            .await
        {
            Ok(r3) => r3,
            Err(e) => {
                // What the servers said is the first thing to read when R3 does not come up.
                for node in 0..testkit::nats_cluster::NODES {
                    let log = cluster.log_text(node);
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!("--- {} (last lines)", cluster.name(node));
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
                return Err(e);
            }
        };
        let mut subjects = vec![
            self.http_subject("ingress R1", "c1", "ingress-r1", r1, Some(nats))?,
            self.http_subject("ingress R3", "c3", "ingress-r3", r3, None)?,
        ];
        println!(
            "  interleaved: {} rounds at {} req/s, R1 then R3",
            rounds_fixed(o.fixed_s),
            o.fixed_rate
        );
        self.in_rounds(
            &mut subjects,
            self.fixed_load(0),
            o.fixed_s,
            rounds_fixed(o.fixed_s),
        )
        .await;
        let mut reports = Vec::new();
        for mut subject in subjects {
            let measured = subject
                .fixed
                .take()
                .expect("every subject ran the fixed-rate load");
            let report = LoadReport::new(&self.fixed_load(0), &measured);
            println!("  {:<12} {}", subject.label, report.line());
            if let Some(mut server) = subject.server.take() {
                server.proc.check_alive()?;
                server.proc.stop(Duration::from_secs(5));
            }
            if let Some(mut nats) = subject.nats.take() {
                nats.proc.stop(Duration::from_secs(2));
            }
            reports.push(report);
        }
        drop(cluster);
        let r3 = reports.pop().expect("R3");
        let r1 = reports.pop().expect("R1");
        let ratio = |a: f64, b: f64| ((a / b.max(1e-9)) * 100.0).round() / 100.0;
        Ok(ClusterPhase {
            rate: o.fixed_rate,
            p50_ratio: ratio(r3.latency.p50_ms, r1.latency.p50_ms),
            p99_ratio: ratio(r3.latency.p99_ms, r1.latency.p99_ms),
            r1,
            r3,
        })
    }
}
