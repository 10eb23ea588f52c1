//! The `cctvctl` binary as operators and the pipeline tests run it. Having an
//! integration test also makes `cargo test` build the plain binary into
//! `target/debug`, where `tests/pipeline/tls.rs` and the replay tests spawn it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Every subcommand is listed, and no password set in the environment shows
/// up in any help text (clap prints `[env: NAME=value]` for `env` arguments
/// unless told not to).
#[test]
fn the_help_lists_every_command_and_no_password() {
    let binary = env!("CARGO_BIN_EXE_cctvctl");
    let secrets = [
        ("CCTV_CLICKHOUSE_PASSWORD", "ch-secret-3141"),
        ("CCTV_NATS_PASSWORD", "nats-secret-2718"),
        ("CCTV_NATS_TOKEN", "nats-token-1618"),
    ];
    let help = |args: &[&str]| {
        let output = Command::new(binary)
            .args(args)
            .envs(secrets)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&["--help"]);
    let commands = [
        "setup", "simulate", "totals", "top", "trend", "report", "dlq", "status", "audit",
    ];
    for command in commands {
        assert!(
            top.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "`{command}` missing from:\n{top}"
        );
    }
    for command in commands {
        let text = help(&[command, "--help"]);
        for (name, value) in secrets {
            assert!(
                !text.contains(value),
                "{command} --help shows {name}:\n{text}"
            );
        }
    }
    for (name, value) in secrets {
        assert!(!top.contains(value), "--help shows {name}:\n{top}");
    }
}
