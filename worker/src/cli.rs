//! The worker's command line (clap): the service (default) and the operator commands
//! `dlq-list` and `dlq-replay <seq>... | --all`; `--help` lists the environment it reads.
//! Shared by the `worker` binary and the test harness' worker process, so both run exactly
//! this code.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::{Env, NatsConfig};

/// Answers Khoros Care conversations with the Kore.ai bot, from the events in JetStream.
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Consume events until SIGTERM (the default).
    Serve,
    /// Print the dead letters as JSON lines.
    DlqList,
    /// Put dead letters back on their subjects; resumes each event where it stopped.
    DlqReplay {
        /// Stream sequences of the dead letters to replay (see dlq-list).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Runs the command in `args` (without the program name). `--help`, `--version` and usage
/// errors print and exit the process (0 or 2).
pub async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let cli: Cli = shared::cli::parse("worker", std::iter::once("worker".into()).chain(args));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::DlqList => {
            for letter in crate::dead_letter::list(&jetstream().await?).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            Ok(())
        }
        Command::DlqReplay { sequences, all } => {
            let js = jetstream().await?;
            let sequences: Vec<u64> = if all {
                crate::dead_letter::list(&js)
                    .await?
                    .iter()
                    .map(|l| l.sequence)
                    .collect()
            } else {
                sequences
            };
            let replayed = crate::dead_letter::replay(&js, &sequences).await?;
            println!("{}", serde_json::json!({ "replayed": replayed }));
            Ok(())
        }
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
        .connect(config.servers().as_slice())
        .await
        .with_context(|| format!("connecting to {}", config.url))?;
    Ok(async_nats::jetstream::new(client))
}
