//! The `kore-sim` binary: reads `KORE_SIM_*`, starts the Kore.ai Webhook-channel simulator
//! ([`kore_sim`]) and serves until Ctrl-C or SIGTERM.
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `KORE_SIM_LISTEN` | `127.0.0.1:8082` | listen address |
//! | `KORE_SIM_BOT_ID` | `st-11111111-2222-3333-4444-555555555555` | bot stream id in the paths |
//! | `KORE_SIM_CLIENT_ID` | `cs-00000000-test-app` | expected `appId` claim |
//! | `KORE_SIM_CLIENT_SECRET` (or `_FILE`) | `kore-test-client-secret-123` | JWT HMAC key |
//! | `KORE_SIM_JWT_ALG` | `HS256` | `HS256` or `HS512`; the only one accepted |
//! | `KORE_SIM_MODE` | `sync` | `sync` or `async` |
//! | `KORE_SIM_POST_URL` | none (required for async) | where async replies are POSTed |
//! | `KORE_SIM_ACCESS_TOKEN` (or `_FILE`) | none | token presented on deliveries |
//! | `KORE_SIM_TOKEN_HEADER` | `Authorization` | `Authorization` sends `Bearer <token>`; any other name sends the raw token in that header |
//! | `KORE_SIM_ASYNC_DELAY` | `10ms` | ack-to-first-delivery delay (`250ms`, `2s`, ...) |
//! | `KORE_SIM_LATENCY` | `0` | added to every answer |
//! | `KORE_SIM_SYNC_TIMEOUT` | `15s` | slower sync answers become 504 |
//! | `KORE_SIM_POLLING` | `true` | V2 sync polling for turns with pauses |
//! | `KORE_SIM_RATE_LIMIT` | `0` (off) | requests per minute per bot+user |
//! | `KORE_SIM_FAIL_ALL` | `0` (off) | outage: every webhook call gets this status |
//! | `KORE_SIM_ENFORCE_JTI` | `false` | Kore's "Enforce JTI" |
//! | `KORE_SIM_RECORD_LIMIT` | `10000` | requests/deliveries kept for `/sim/...` |
//!
//! Logs are JSON lines (`RUST_LOG` filters); secrets are never logged.

use anyhow::Context;
use kore_sim::{KoreSim, KoreSimConfig};
use shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let env = Env::process();
    let config = KoreSimConfig::from_env(&env).context("kore-sim configuration")?;
    let listen = env.string("KORE_SIM_LISTEN", "127.0.0.1:8082");
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let sim = KoreSim::start_on(listener, config).context("starting kore-sim")?;
    tracing::info!(url = %sim.base_url(), v1 = %sim.v1_url(), v2 = %sim.v2_url(), "kore-sim ready");
    shared::shutdown::on_signal().cancelled().await;
    sim.shutdown().await;
    Ok(())
}
