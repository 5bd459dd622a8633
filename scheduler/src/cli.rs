//! The `scheduler` command line (clap): `serve` (default), `rotate-now`, `token-status`;
//! `--help` lists the environment it reads. Shared by the binary and the tests'
//! `scheduler-process`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::cli::exit_code;
use shared::config::Env;

use crate::commands;
use crate::records::AttemptStatus;

/// Rotates the Khoros Bot API token (weekly, under a KV lease), watches that Khoros still
/// accepts it, and exports the pipeline's metrics.
#[derive(Debug, Parser)]
#[command(name = "scheduler", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the service until SIGTERM (the default).
    Serve,
    /// Rotate the Bot API token once, now; prints the result as JSON, exits 1 on failure.
    RotateNow,
    /// Print the token's expiry, age, last rotation, lease holder and Khoros' verdict on it
    /// as JSON (never the token); when the token is lost, the cause and the recovery steps,
    /// and exit 1.
    TokenStatus,
}

/// Parses `args` (program name first) and runs; the process' exit code.
pub async fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let cli: Cli = shared::cli::parse("scheduler", args);
    let command = cli.command.unwrap_or(Command::Serve);
    // Commands print JSON on stdout, so their logs go to stderr.
    let subscriber = match command {
        Command::Serve => shared::telemetry::get_subscriber("info", std::io::stdout).boxed(),
        _ => shared::telemetry::get_subscriber("warn", std::io::stderr).boxed(),
    };
    shared::telemetry::init_subscriber(subscriber);
    exit_code(run(command).await)
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config =
        crate::SchedulerConfig::from_env(&Env::process()).context("scheduler configuration")?;
    let failed_if = |failed: bool| {
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    };
    match command {
        Command::Serve => {
            let app = crate::App::build(config)
                .await
                .context("starting the scheduler")?;
            app.run_until_stopped(shared::shutdown::on_signal())
                .await
                .context("scheduler")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RotateNow => {
            let report = commands::rotate_now(&config).await.context("rotate-now")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(failed_if(report.status != AttemptStatus::Success))
        }
        Command::TokenStatus => {
            let status = commands::token_status(&config)
                .await
                .context("token-status")?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(failed_if(status.is_lost()))
        }
    }
}

/// Boxes a subscriber so both arms of a `match` have one type.
trait BoxedSubscriber {
    fn boxed(self) -> Box<dyn tracing::Subscriber + Send + Sync>;
}

impl<S: tracing::Subscriber + Send + Sync> BoxedSubscriber for S {
    fn boxed(self) -> Box<dyn tracing::Subscriber + Send + Sync> {
        Box::new(self)
    }
}
