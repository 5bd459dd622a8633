//! The three binaries' command lines: `--help` and `--version` everywhere, every subcommand
//! with its own help, the environment each reads, and the documented exit codes. Run through
//! the tests' process bins, which call the very `cli` functions the binaries call.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_clear()
        .output()
        .expect("run the binary")
}

const INGRESS: &str = env!("CARGO_BIN_EXE_ingress-process");
const WORKER: &str = env!("CARGO_BIN_EXE_worker-process");
const SCHEDULER: &str = env!("CARGO_BIN_EXE_scheduler-process");

/// `--help` of the binary and of each subcommand exits 0 and lists the variables.
#[test]
fn help_and_version_work_everywhere_and_list_the_environment() {
    let cases: [(&str, &str, &[&str], &[&str]); 3] = [
        (
            INGRESS,
            "ingress",
            &["serve"],
            &["INGRESS_LISTEN", "KHOROS_HMAC_KEYS"],
        ),
        (
            WORKER,
            "worker",
            &["serve", "dlq-list", "dlq-replay"],
            &["KORE_BOT_ID", "WORKER_CONCURRENCY"],
        ),
        (
            SCHEDULER,
            "scheduler",
            &["serve", "rotate-now", "token-status"],
            &[
                "TOKEN_ROTATE_EVERY",
                "KHOROS_TOKEN",
                "TOKEN_VERIFY_INTERVAL",
            ],
        ),
    ];
    for (bin, name, subcommands, own) in cases {
        let mut invocations: Vec<Vec<&str>> = vec![vec!["--help"]];
        invocations.extend(subcommands.iter().map(|s| vec![*s, "--help"]));
        for args in invocations {
            let out = run(bin, &args);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {args:?}: {out:?}");
            for var in ["NATS_URL", "[default: nats://127.0.0.1:4222]", "Exit codes"]
                .iter()
                .chain(own)
            {
                assert!(text.contains(var), "{name} {args:?} lacks {var}:\n{text}");
            }
        }
        let help = String::from_utf8_lossy(&run(bin, &["--help"]).stdout).into_owned();
        for sub in subcommands {
            assert!(help.contains(sub), "{name} --help lacks {sub}");
        }
        let version = run(bin, &["--version"]);
        assert!(version.status.success());
        assert!(String::from_utf8_lossy(&version.stdout).starts_with(name));
    }
}

/// Usage errors exit 2, configuration errors 3 (README.md, "Operations").
#[test]
fn usage_and_configuration_errors_have_their_own_exit_codes() {
    for (bin, args) in [
        (INGRESS, &["bogus"][..]),
        (WORKER, &["dlq-replay"][..]),
        (WORKER, &["dlq-replay", "--all", "7"][..]),
        (SCHEDULER, &["rotate"][..]),
    ] {
        let out = run(bin, args);
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {out:?}");
    }
    // No KHOROS_APP_ID: a configuration error, reported before NATS is contacted.
    let out = run(SCHEDULER, &["token-status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("KHOROS_APP_ID"));
    // A store deadline shorter than one attempt's PubAck deadline could never be honoured.
    let out = Command::new(INGRESS)
        .env_clear()
        .envs([
            ("KHOROS_AUTH", "basic"),
            ("KHOROS_BASIC_USER", "u"),
            ("KHOROS_BASIC_PASSWORD", "p"),
            ("PUBLISH_TIMEOUT", "2s"),
            ("STORE_DEADLINE", "1s"),
        ])
        .output()
        .expect("run the ingress");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STORE_DEADLINE") && stderr.contains("PUBLISH_TIMEOUT"),
        "{stderr}"
    );
}
