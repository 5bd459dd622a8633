//! The `ingress` command line (clap): `serve` (the default) is the only command; `--help`
//! lists the environment it reads. Shared by the `ingress` binary and the tests'
//! `ingress-process`, so both parse exactly this.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Authenticates Khoros Care webhook events and stores them in NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "ingress", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the webhook listener until SIGTERM (the default).
    Serve,
}

/// Parses `args` (program name first) and runs; the process' exit code.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let cli: Cli = shared::cli::parse("ingress", args);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => shared::cli::exit_code(crate::process::run().map(|()| ExitCode::SUCCESS)),
    }
}
