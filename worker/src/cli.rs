//! The worker's command line: the service (default) and the operator commands
//! `dlq-list` and `dlq-replay <seq>... | --all`. Shared by the `worker` binary and the test
//! harness' worker process, so both run exactly this code.

use anyhow::{bail, Context};
use shared::config::{Env, NatsConfig};

/// Runs the command in `args` (without the program name).
pub async fn run(args: Vec<String>) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        None | Some("serve") => serve().await,
        Some("dlq-list") => {
            for letter in crate::dead_letter::list(&jetstream().await?).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            Ok(())
        }
        Some("dlq-replay") => {
            let js = jetstream().await?;
            let sequences: Vec<u64> = if args.get(1).map(String::as_str) == Some("--all") {
                crate::dead_letter::list(&js).await?.iter().map(|l| l.sequence).collect()
            } else {
                args[1..].iter().map(|s| s.parse().context("sequence numbers expected")).collect::<Result<_, _>>()?
            };
            if sequences.is_empty() {
                bail!("usage: worker dlq-replay <seq>... | --all");
            }
            let replayed = crate::dead_letter::replay(&js, &sequences).await?;
            println!("{}", serde_json::json!({ "replayed": replayed }));
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}; usage: worker [serve | dlq-list | dlq-replay <seq>... | --all]"),
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = crate::WorkerConfig::from_env(&Env::process()).context("worker configuration")?;
    let app = crate::App::build(config)
        .await
        .context("starting the worker")?;
    app.run_until_stopped(shared::shutdown::on_signal())
        .await
        .context("worker")
}

/// Connects for an operator command; fails (instead of waiting forever) when NATS is away.
async fn jetstream() -> anyhow::Result<async_nats::jetstream::Context> {
    let config = NatsConfig::from_env(&Env::process(), "worker-cli")?;
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(std::time::Duration::from_secs(10));
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await?;
    }
    let client = options
        .connect(&config.url)
        .await
        .with_context(|| format!("connecting to {}", config.url))?;
    Ok(async_nats::jetstream::new(client))
}
