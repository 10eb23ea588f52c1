//! The dependency directions written in ARCHITECTURE.md, checked from the
//! crates' manifests: the pure crates know no IO, the bus knows no
//! ClickHouse, the store knows no NATS, the services never depend on each
//! other, the runtime crate knows no domain crate, the simulator knows no
//! service, the gateway knows no service and no service knows it, nothing
//! depends on the test kit or the command line.

use std::collections::BTreeSet;

fn dependencies(krate: &str) -> BTreeSet<String> {
    manifest_dependencies(&format!("crates/{krate}"))
}

/// The `[dependencies]` of the manifest in `dir` (relative to the workspace).
fn manifest_dependencies(dir: &str) -> BTreeSet<String> {
    let path = format!("{}/../{dir}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let manifest: toml_like::Manifest = toml_like::parse(&text);
    manifest.dependencies
}

/// A tiny reader of `[dependencies]` keys: enough for our own manifests.
mod toml_like {
    use std::collections::BTreeSet;

    pub(super) struct Manifest {
        pub(super) dependencies: BTreeSet<String>,
    }

    pub(super) fn parse(text: &str) -> Manifest {
        let mut in_dependencies = false;
        let mut dependencies = BTreeSet::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_dependencies = line == "[dependencies]";
                continue;
            }
            if in_dependencies {
                if let Some((name, _)) = line.split_once(['=', '.']) {
                    let name = name.trim();
                    if !name.is_empty() && !name.starts_with('#') {
                        dependencies.insert(name.to_string());
                    }
                }
            }
        }
        Manifest { dependencies }
    }
}

/// The names of `forbidden` that `found` holds.
fn violations(found: &BTreeSet<String>, forbidden: &[&str]) -> Vec<String> {
    forbidden
        .iter()
        .filter(|name| found.contains(**name))
        .map(|name| (*name).to_string())
        .collect()
}

fn assert_none(krate: &str, forbidden: &[&str]) {
    let found = dependencies(krate);
    assert!(!found.is_empty(), "{krate} manifest read no dependencies");
    let broken = violations(&found, forbidden);
    assert!(broken.is_empty(), "{krate} must not depend on {broken:?}");
}

/// The checker itself: a manifest that breaks a rule is caught, in any of
/// the forms a dependency is written in.
#[test]
fn a_broken_rule_is_caught() {
    let manifest = toml_like::parse(
        "[package]\nname = \"x\"\n\n[dependencies]\nserde.workspace = true\n\
         cctv-store = { path = \"../cctv-store\" }\ntokio = \"1\"\n\n\
         [dev-dependencies]\ncctv-testkit.workspace = true\n",
    );
    assert_eq!(
        violations(
            &manifest.dependencies,
            &["cctv-store", "tokio", "clickhouse"]
        ),
        ["cctv-store", "tokio"]
    );
    // A dev-dependency is not a run-time dependency.
    assert!(violations(&manifest.dependencies, &["cctv-testkit"]).is_empty());
}

/// `cctv-runtime` (metrics, health, logs, signals, fault points) is used by
/// every service and knows none of them, nor the domain.
#[test]
fn runtime_knows_no_domain_crate() {
    let found = dependencies("cctv-runtime");
    assert!(
        !found.is_empty(),
        "cctv-runtime manifest read no dependencies"
    );
    let domain: Vec<&String> = found
        .iter()
        .filter(|name| name.starts_with("cctv-"))
        .collect();
    assert!(
        domain.is_empty(),
        "cctv-runtime must not depend on {domain:?}"
    );
}

/// `cctv-tls` (the TLS files and handshake failures of both clients) knows
/// no other `cctv-*` crate and neither client library: the bus and the
/// store share it without learning of each other.
#[test]
fn tls_knows_no_domain_crate_and_no_client() {
    let found = dependencies("cctv-tls");
    assert!(!found.is_empty(), "cctv-tls manifest read no dependencies");
    let domain: Vec<&String> = found
        .iter()
        .filter(|name| name.starts_with("cctv-"))
        .collect();
    assert!(domain.is_empty(), "cctv-tls must not depend on {domain:?}");
    assert_none("cctv-tls", &["async-nats", "clickhouse", "tokio"]);
}

#[test]
fn dependency_directions_hold() {
    const IO: [&str; 5] = [
        "tokio",
        "async-nats",
        "clickhouse",
        "cctv-bus",
        "cctv-store",
    ];
    assert_none("cctv-event", &IO);
    assert_none("cctv-normalize", &IO);
    assert_none("cctv-bus", &["clickhouse", "cctv-store"]);
    assert_none("cctv-store", &["async-nats", "cctv-bus"]);
    assert_none(
        "cctv-ingest",
        &["cctv-aggregator", "clickhouse", "cctv-store"],
    );
    assert_none("cctv-aggregator", &["cctv-ingest", "cctv-normalize"]);
    assert_none(
        "cctv-simulate",
        &["cctv-ingest", "cctv-aggregator", "cctv-runtime"],
    );
    // The gateway sits at the edge: the bus, the runtime and the batch
    // writer of the normaliser, never a service, the store or the simulator;
    // and no service depends on it.
    assert_none(
        "cctv-gateway",
        &[
            "cctv-ingest",
            "cctv-aggregator",
            "cctv-store",
            "clickhouse",
            "cctv-simulate",
        ],
    );
    for service in ["cctv-ingest", "cctv-aggregator"] {
        assert_none(service, &["cctv-gateway"]);
    }
}

/// No crate of `crates/` depends on the test kit or the command line at run
/// time (`[dev-dependencies]` may name the test kit), and the benchmarks do
/// not depend on the command line (they run the simulator of `cctv-simulate`
/// and the test kit's servers).
#[test]
fn no_crate_depends_on_the_testkit_or_the_cli() {
    let benches = manifest_dependencies("benches");
    assert!(!benches.is_empty(), "benches manifest read no dependencies");
    assert!(
        !benches.contains("cctv-cli"),
        "benches must not depend on cctv-cli"
    );
    let dir = format!("{}/../crates", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "cctv-testkit" {
            continue;
        }
        let found = dependencies(&name);
        assert!(
            !found.contains("cctv-testkit"),
            "{name} must not depend on cctv-testkit"
        );
        if name != "cctv-cli" {
            assert!(
                !found.contains("cctv-cli"),
                "{name} must not depend on cctv-cli"
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} crates found in {dir}");
}

/// Inside `cctv-normalize` the files import downwards only: the normaliser
/// imports the decoders, so no decoder (outside its tests) imports the
/// normaliser.
#[test]
fn normaliser_files_import_downwards_only() {
    let dir = format!(
        "{}/../crates/cctv-normalize/src",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "normalizer.rs" || name == "lib.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in code
            .lines()
            .filter(|line| line.trim_start().starts_with("use "))
        {
            assert!(
                !line.contains("normalizer") && !line.contains("Normalizer"),
                "{name} imports the normaliser: {line}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} files found in {dir}");
}
