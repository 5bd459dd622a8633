//! Puts a Bot API token into KV as the scheduler's seed would: workers only read the token
//! (the scheduler owns the record), so a stack without a scheduler needs it written for them.

use std::time::{Duration, Instant};

use shared::config::Env;
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::topology::{buckets, Topology, TopologyConfig};

/// How long seeding keeps trying: on a fresh cluster the streams and buckets elect their
/// leaders one by one, and requests meanwhile time out or find no responders, as the services'
/// own retries would ride out.
const SEED_FOR: Duration = Duration::from_secs(60);

/// Ensures the topology `env` describes (as the services would) and creates the token record
/// unless one exists.
pub async fn seed_token(nats_url: &str, env: &Env, token: &str) -> anyhow::Result<()> {
    // A cluster's `NATS_URL` is a comma-separated list (see `NatsConfig::servers`).
    let servers: Vec<&str> = nats_url.split(',').map(str::trim).collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers.as_slice()).await?);
    let topology = Topology::new(TopologyConfig::from_env(env)?);
    let record = TokenRecord {
        token: token.to_string(),
        expires_at_ms: 0,
        rotated_at_ms: shared::auth::Clock::now_ms(&shared::auth::SystemClock),
        source: "seed".into(),
    };
    let payload = serde_json::to_vec(&record)?;
    let deadline = Instant::now() + SEED_FOR;
    loop {
        let attempt = async {
            topology.ensure(&js).await?;
            let kv = js.get_key_value(buckets::TOKENS).await?;
            match kv.create(TOKEN_KEY, payload.clone().into()).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    Ok(())
                }
                Err(e) => Err(anyhow::Error::from(e)),
            }
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
