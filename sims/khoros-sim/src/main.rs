//! The `khoros-sim` binary: reads the configuration, starts
//! [`khoros_sim::KhorosSim`] and serves until Ctrl-C or SIGTERM.
//!
//! Usage: `khoros-sim [--listen ADDR]` (the flag overrides `KHOROS_SIM_LISTEN`).
//!
//! Environment (every variable is optional; secrets may also be given as `<NAME>_FILE`):
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `KHOROS_SIM_LISTEN` | `127.0.0.1:8081` | Address of the gateway, token host and `/sim` API |
//! | `KHOROS_SIM_COMPANY` | `acme` | companyKey |
//! | `KHOROS_SIM_APP_ID` | `kore-bridge` | The registered bot's appId |
//! | `KHOROS_SIM_NETWORK` | `brandmessenger` | Default networkKey of injected messages |
//! | `KHOROS_SIM_EXTERNAL_ID` | `bm-web-01` | Default externalId of injected messages |
//! | `KHOROS_SIM_TOKEN` | `khoros-sim-token` | Initial bearer token (opaque, valid 90 days) |
//! | `KHOROS_SIM_JWT_KEY` | `khoros-fake-signing-key` | HS512 key of minted tokens |
//! | `KHOROS_SIM_TOKEN_HOST_USER` | `care-bot-api` | Basic user of `/api/v2/tokens/...` |
//! | `KHOROS_SIM_TOKEN_HOST_PASSWORD` | `care-bot-api-password` | Basic password of `/api/v2/tokens/...` |
//! | `KHOROS_SIM_WEBHOOK_URL` | unset (no deliveries) | The bot's callback URL |
//! | `KHOROS_SIM_AUTH` | `hmac` | `hmac` or `basic`, how deliveries authenticate |
//! | `KHOROS_SIM_HMAC_KEY` | `bridge-hmac-key` | `x-auth-apikey` of deliveries |
//! | `KHOROS_SIM_HMAC_SECRET` | `k7Qp-test-secret-9f2e` | HMAC v2 signing secret |
//! | `KHOROS_SIM_BASIC_USER` | `khoros-cb` | Basic user of deliveries |
//! | `KHOROS_SIM_BASIC_PASSWORD` | `cb-pass-123` | Basic password of deliveries |
//! | `KHOROS_SIM_RETRIES` | `2` | Retries of a failed delivery (same request id) |
//! | `KHOROS_SIM_RETRY_DELAY` | `1s` | Fixed pause between attempts |
//! | `KHOROS_SIM_DELIVERY_TIMEOUT` | `10s` | A delivery slower than this failed |
//! | `KHOROS_SIM_EMIT_CREATED` | `true` | Send CREATED after a conversation's first message |
//! | `KHOROS_SIM_RESPOND_STATUS` | `200` | `/respond` answers 200 with a body or 202 empty |
//! | `KHOROS_SIM_CLOCK_SPEED` | `1` | Sim ms per real ms (e.g. `60`: a second is a minute) |
//!
//! `RUST_LOG` filters the JSON logs (default `info`).

use std::net::SocketAddr;

use anyhow::Context;
use khoros_sim::{KhorosSim, KhorosSimConfig};
use shared::config::Env;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init_subscriber(shared::telemetry::get_subscriber("info", std::io::stdout));
    let env = Env::process();
    let listen = listen_address(&env)?;
    let config = KhorosSimConfig::from_env(&env).context("khoros-sim configuration")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let sim = KhorosSim::start_on(listener, config)
        .await
        .context("starting khoros-sim")?;
    tracing::info!(base_url = %sim.base_url(), "khoros-sim ready");
    shared::shutdown::on_signal().cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// `--listen ADDR` wins over `KHOROS_SIM_LISTEN`.
fn listen_address(env: &Env) -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().context("--listen needs an address")?),
            other => anyhow::bail!("unknown argument {other:?}; usage: khoros-sim [--listen ADDR]"),
        }
    }
    let raw = listen.unwrap_or_else(|| env.string("KHOROS_SIM_LISTEN", "127.0.0.1:8081"));
    raw.parse()
        .with_context(|| format!("KHOROS_SIM_LISTEN: invalid address {raw:?}"))
}
