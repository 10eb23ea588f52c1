//! The `cctv-aggregator` binary as the crash tests run it. Having an integration
//! test also makes `cargo test` build the plain binary into `target/debug`,
//! where `tests/pipeline/faults.rs` spawns it; with the `fault-injection`
//! feature (on in `cargo test --workspace`, through the tests package) an
//! armed fault point must abort it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_binary_runs_and_aborts_at_an_armed_fault_point_when_compiled_in() {
    let binary = env!("CARGO_BIN_EXE_cctv-aggregator");
    let help = Command::new(binary).arg("--help").output().unwrap();
    assert!(help.status.success(), "{help:?}");
    if !cctv_runtime::FAULT_INJECTION_COMPILED {
        return;
    }
    // Aborts before reading any configuration or touching the network.
    let aborted = Command::new(binary)
        .env(cctv_runtime::FAULT_ENV, "on_start")
        .env("CCTV_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(aborted.status.signal(), Some(6), "{aborted:?}");
    let stderr = String::from_utf8_lossy(&aborted.stderr);
    assert!(stderr.contains("fault injected at on_start"), "{stderr}");
}
