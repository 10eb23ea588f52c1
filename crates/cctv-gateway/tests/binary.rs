//! The `cctv-gateway` binary as the pipeline tests run it. Having an
//! integration test also makes `cargo test` build the plain binary into
//! `target/debug`, where `tests/pipeline/gateway.rs` spawns it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_binary_runs_and_refuses_a_device_whose_secret_is_missing() {
    let binary = env!("CARGO_BIN_EXE_cctv-gateway");
    let help = Command::new(binary).arg("--help").output().unwrap();
    assert!(help.status.success(), "{help:?}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[[devices]]\nid = \"cam1\"\nformat = \"hikvision\"\nauth = \"basic\"\n\
         secret_env = \"CCTV_GW_TEST_UNSET_SECRET\"\n",
    )
    .unwrap();
    let refused = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env_remove("CCTV_GW_TEST_UNSET_SECRET")
        .env_remove(cctv_gateway::SECRETS_FILE_ENV)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CCTV_GW_TEST_UNSET_SECRET"), "{stderr}");
}
