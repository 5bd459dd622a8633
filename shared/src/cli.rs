//! What the three binaries' command lines share: the environment section of `--help`, read
//! from the one configuration table (README.md, "Configuration"), and the exit codes.

use std::process::ExitCode;

use crate::config::ConfigError;

/// The README, whose "Configuration" table documents every variable once.
const README: &str = include_str!("../../README.md");

/// Exit codes of every binary (README.md, "Operations").
pub mod exit {
    /// Done, or `--help` / `--version`.
    pub const OK: u8 = 0;
    /// A runtime failure (NATS or Khoros unreachable, a failed rotation, a lost token).
    pub const FAILURE: u8 = 1;
    /// The command line could not be parsed (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The environment holds an invalid or missing setting.
    pub const CONFIG: u8 = 3;
}

/// The exit-code section of `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 ok, 1 runtime failure, 2 usage error, \
                              3 configuration error.";

/// One row of the configuration table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub default: String,
    pub read_by: String,
    pub meaning: String,
}

/// The rows of the configuration table that `service` reads (its own and `all`).
pub fn variables(service: &str) -> Vec<Variable> {
    let plain = |cell: &str| cell.trim().replace('`', "");
    README
        .lines()
        .skip_while(|l| !l.starts_with("| variable | default | read by | meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .filter_map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            let [name, default, read_by, meaning] = cells.as_slice() else {
                return None;
            };
            Some(Variable {
                name: plain(name),
                default: plain(default),
                read_by: plain(read_by),
                meaning: plain(meaning),
            })
        })
        .filter(|v| {
            v.read_by
                .split(',')
                .any(|s| matches!(s.trim(), "all") || s.trim() == service)
        })
        .collect()
}

/// The text after `--help`: every variable `service` reads with its default, then the exit
/// codes.
pub fn env_help(service: &str) -> String {
    let mut out = String::from(
        "Configuration comes from the environment (secrets also as <NAME>_FILE; durations take \
         ms, s, m, h, d):\n",
    );
    for v in variables(service) {
        out.push_str(&format!(
            "  {}  [default: {}]\n      {}\n",
            v.name, v.default, v.meaning
        ));
    }
    out.push('\n');
    out.push_str(EXIT_CODES);
    out
}

/// `command` with the environment section on it and on every subcommand.
pub fn with_env_help(command: clap::Command, service: &str) -> clap::Command {
    let help = env_help(service);
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut command = command.after_help(help.clone());
    for name in names {
        let help = help.clone();
        command = command.mut_subcommand(name, move |s| s.after_help(help));
    }
    command
}

/// Parses `args` (program name first) as `C`, with the environment section in every
/// `--help`; prints help, version or the usage error and exits (0 or 2) when clap says so.
pub fn parse<C: clap::Parser>(service: &str, args: impl IntoIterator<Item = String>) -> C {
    let command = with_env_help(C::command(), service);
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|m| C::from_arg_matches(&m));
    match parsed {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// The exit code of a run: 3 when a configuration error caused it, 1 for anything else.
/// Prints the error (its whole chain) to stderr.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("Error: {error:#}");
            if error.chain().any(|c| c.is::<ConfigError>()) {
                ExitCode::from(exit::CONFIG)
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_gets_its_own_and_the_shared_variables() {
        let names = |s: &str| -> Vec<String> { variables(s).into_iter().map(|v| v.name).collect() };
        let scheduler = names("scheduler");
        assert!(scheduler.contains(&"NATS_URL".to_string()));
        assert!(scheduler.contains(&"TOKEN_VERIFY_INTERVAL".to_string()));
        assert!(!scheduler.contains(&"KORE_BOT_ID".to_string()));
        let worker = names("worker");
        assert!(worker.contains(&"KORE_BOT_ID".to_string()));
        assert!(!worker.iter().any(|n| n.starts_with("KHOROS_TOKEN ")));
        let ingress = names("ingress");
        assert!(ingress.contains(&"KHOROS_HMAC_KEYS (_FILE)".to_string()));
        assert!(ingress.contains(&"HMAC_MAX_SKEW".to_string()));
        assert!(env_help("ingress").contains("[default: 0.0.0.0:8080]"));
    }
}
