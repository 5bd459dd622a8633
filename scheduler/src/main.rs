//! The `scheduler` binary: parses the command, then telemetry -> config -> either the service
//! (`App::build` -> `run_until_stopped`) or one operator command whose JSON goes to stdout.

use std::process::ExitCode;

use anyhow::Context;
use scheduler::commands::{self, Command};
use scheduler::rotation::AttemptStatus;
use shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let command = match Command::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("{usage}");
            return Ok(ExitCode::from(2));
        }
    };
    // Commands print JSON on stdout, so their logs go to stderr.
    let subscriber = match command {
        Command::Serve => shared::telemetry::get_subscriber("info", std::io::stdout).boxed(),
        _ => shared::telemetry::get_subscriber("warn", std::io::stderr).boxed(),
    };
    shared::telemetry::init_subscriber(subscriber);
    let config =
        scheduler::SchedulerConfig::from_env(&Env::process()).context("scheduler configuration")?;
    match command {
        Command::Serve => {
            let app = scheduler::App::build(config)
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
            Ok(if report.status == AttemptStatus::Success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::TokenStatus => {
            let status = commands::token_status(&config)
                .await
                .context("token-status")?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(if status.is_lost() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
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
