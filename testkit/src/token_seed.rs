//! Puts a Bot API token into KV as the scheduler's seed would: workers only read the token
//! (the scheduler owns the record), so a stack without a scheduler needs it written for them.

use shared::config::Env;
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::topology::{buckets, Topology, TopologyConfig};

/// Ensures the topology `env` describes (as the services would) and creates the token record
/// unless one exists.
pub async fn seed_token(nats_url: &str, env: &Env, token: &str) -> anyhow::Result<()> {
    // A cluster's `NATS_URL` is a comma-separated list (see `NatsConfig::servers`).
    let servers: Vec<&str> = nats_url.split(',').map(str::trim).collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers.as_slice()).await?);
    Topology::new(TopologyConfig::from_env(env)?)
        .ensure(&js)
        .await?;
    let record = TokenRecord {
        token: token.to_string(),
        expires_at_ms: 0,
        rotated_at_ms: shared::auth::Clock::now_ms(&shared::auth::SystemClock),
        source: "seed".into(),
    };
    let kv = js.get_key_value(buckets::TOKENS).await?;
    // A bucket just created on a cluster may not have elected its leader yet ("no
    // responders"): try again for a while, as the services' own retries would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match kv
            .create(TOKEN_KEY, serde_json::to_vec(&record)?.into())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                return Ok(())
            }
            Err(e) if std::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
