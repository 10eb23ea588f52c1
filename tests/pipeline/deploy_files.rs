//! The container and systemd deployment files, checked with real parsers because
//! nothing here can run them (no container engine, no systemd as PID 1):
//!
//! - `deploy/compose/compose.yaml`, parsed as YAML: every image pinned to an exact
//!   version, healthchecks, restart policies and stop grace periods, `depends_on`
//!   conditions that the named services can meet, mounted files that exist, secrets
//!   only as `${VAR}` references that `.env.example` lists, services that can run as
//!   several instances, NATS and ClickHouse given every password their files name;
//! - `deploy/docker/Dockerfile`, read instruction by instruction: pinned `FROM`s, a
//!   locked release build, and in each target a `COPY --from` the builder, a non-root
//!   `USER` and no secret;
//! - `deploy/systemd/*.service`, read as INI: the hardening keys with their values, the
//!   binary and its config, an `EnvironmentFile`, a stop timeout above the service's
//!   shutdown grace;
//! - the TOML configs of both, parsed and validated with the services' own config
//!   types, so they cannot rot.
//!
//! Every check collects what is wrong and fails with the whole list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cctv_aggregator::AggregatorConfig;
use cctv_cli::CliConfig;
use cctv_ingest::IngestConfig;
use yaml_serde::Value;

/// The directory of the compose deployment, relative to the repository.
const COMPOSE_DIR: &str = "deploy/compose";

/// The Dockerfile compose builds every image of ours from.
const DOCKERFILE: &str = "deploy/docker/Dockerfile";

/// The directory of the systemd units and their files.
const SYSTEMD_DIR: &str = "deploy/systemd";

/// Where deployments keep the configs and env files the units name.
const SYSTEMD_ETC: &str = "/etc/cctv/";

/// Environment variable names that hold secrets.
const SECRET_MARKERS: [&str; 6] = ["PASSWORD", "TOKEN", "SECRET", "KEY", "SEED", "CREDS"];

/// Restart policies of compose services that keep running.
const RESTARTING_POLICIES: [&str; 3] = ["always", "unless-stopped", "on-failure"];

/// Hardening settings every unit must carry, with their exact values.
const UNIT_HARDENING: [(&str, &str); 15] = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallFilter", "@system-service"),
    ("CapabilityBoundingSet", ""),
];

/// Each binary of ours: its config kind, which also names the default shutdown
/// grace a stop timeout must exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    Ingest,
    Aggregator,
    Cli,
}

impl Binary {
    /// The binary named `name`, if it is one of ours.
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "cctv-ingest" => Some(Self::Ingest),
            "cctv-aggregator" => Some(Self::Aggregator),
            "cctvctl" => Some(Self::Cli),
            _ => None,
        }
    }
}

/// What a config file of ours says that the deployment files must agree with.
#[derive(Debug, Default)]
struct ConfigFacts {
    /// NATS URL(s).
    nats_url: String,
    /// NATS user, when the file names one.
    nats_user: Option<String>,
    /// ClickHouse URL and user, for the binaries that use ClickHouse.
    clickhouse: Option<(String, String)>,
    /// Port of `/metrics` and `/healthz`, for the services.
    telemetry_port: Option<u16>,
    /// Time the service allows itself to stop, for the services.
    shutdown_grace: Option<Duration>,
}

/// Parses `text` with `binary`'s own config type, applies the environment the
/// deployment gives it (`env` names the variables set, each to a placeholder) and
/// validates it as the binary does at start.
fn load_config(binary: Binary, text: &str, env: &BTreeSet<String>) -> Result<ConfigFacts, String> {
    let lookup = |name: &str| env.contains(name).then(|| "p0placeholder".to_string());
    match binary {
        Binary::Ingest => {
            let mut config = IngestConfig::from_toml(text).map_err(|e| e.to_string())?;
            config.apply_env(lookup);
            config.validate().map_err(|e| e.to_string())?;
            Ok(ConfigFacts {
                nats_url: config.nats.url,
                nats_user: config.nats.user,
                clickhouse: None,
                telemetry_port: config.telemetry.listen.map(|address| address.port()),
                shutdown_grace: Some(config.ingest.shutdown_grace),
            })
        }
        Binary::Aggregator => {
            let mut config = AggregatorConfig::from_toml(text).map_err(|e| e.to_string())?;
            config.apply_env(lookup);
            config.validate().map_err(|e| e.to_string())?;
            // The deployments run the aggregator as the insert-only writer, which
            // may not run DDL: the schema comes from `cctvctl setup`.
            if config.aggregator.migrate_on_start {
                return Err(
                    "aggregator.migrate_on_start must be false: the writer user may not run DDL"
                        .into(),
                );
            }
            Ok(ConfigFacts {
                nats_url: config.nats.url,
                nats_user: config.nats.user,
                clickhouse: Some((config.clickhouse.url, config.clickhouse.user)),
                telemetry_port: config.telemetry.listen.map(|address| address.port()),
                shutdown_grace: Some(config.aggregator.shutdown_grace),
            })
        }
        Binary::Cli => {
            let mut config = CliConfig::from_toml(text).map_err(|e| e.to_string())?;
            config.apply_env(lookup);
            config.validate().map_err(|e| format!("{e:#}"))?;
            Ok(ConfigFacts {
                nats_url: config.nats.url,
                nats_user: config.nats.user,
                clickhouse: Some((config.clickhouse.url, config.clickhouse.user)),
                telemetry_port: None,
                shutdown_grace: None,
            })
        }
    }
}

// --- shared readers ---------------------------------------------------------------

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of `path`, relative to the repository.
fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fails with every problem found, one per line.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// Whether an environment variable's name says it holds a secret.
fn is_secret_name(name: &str) -> bool {
    SECRET_MARKERS.iter().any(|marker| name.contains(marker))
}

/// An image reference pinned to an exact version: a `@sha256:` digest, or a tag
/// holding a full `major.minor.patch` version or a `YYYYMMDD` build date. `latest`,
/// no tag, and bare major or minor tags (`2`, `2.15-alpine`, `bookworm-slim`) float.
fn check_pinned_image(reference: &str) -> Result<(), String> {
    if let Some((_, digest)) = reference.split_once("@sha256:") {
        let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        return if valid {
            Ok(())
        } else {
            Err(format!("{reference}: malformed sha256 digest"))
        };
    }
    // The tag follows the last ':' after the last '/' (a registry host may have a port).
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    let Some((_, tag)) = reference[name_start..].split_once(':') else {
        return Err(format!("{reference}: no tag (means `latest`)"));
    };
    let full_version = tag.split('-').next().is_some_and(|version| {
        let parts: Vec<&str> = version.split('.').collect();
        parts.len() >= 3
            && parts
                .iter()
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    });
    let build_date = tag.split('-').any(|part| {
        part.len() == 8 && part.starts_with("20") && part.bytes().all(|b| b.is_ascii_digit())
    });
    if full_version || build_date {
        Ok(())
    } else {
        Err(format!("{reference}: tag {tag:?} is not an exact version"))
    }
}

/// A duration as systemd (`30s`, `5min`, `1min 30s`, a bare number of seconds) or
/// compose (`1m30s`, `500ms`) writes it.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let unit_length = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_seconds = match &rest[..unit_length] {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[unit_length..];
                continue;
            }
            "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" | "hr" => 3600,
            _ => return None,
        };
        total += Duration::from_secs(number * unit_seconds);
        rest = &rest[unit_length..];
    }
    Some(total)
}

/// `KEY=value` lines of an env file (comments and blank lines skipped).
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The port of the `http://host:port/...` URL in `text`, if there is one.
fn url_port(text: &str) -> Option<u16> {
    let after_scheme = text.split_once("://")?.1;
    let authority = after_scheme.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// The host of a URL such as `nats://nats:4222` or `http://clickhouse:8123`.
fn url_host(url: &str) -> Option<&str> {
    let after_scheme = url.split_once("://")?.1;
    let authority = after_scheme.split('/').next()?;
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    )
}

#[test]
fn the_pin_check_tells_exact_versions_from_floating_tags() {
    for pinned in [
        "rust:1.95.0-bookworm",
        "debian:bookworm-20260803-slim",
        "nats:2.15.1-alpine",
        "clickhouse/clickhouse-server:25.8.33.6",
        "registry.example:5000/team/image:1.2.3",
        "gcr.io/distroless/cc-debian12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(check_pinned_image(pinned), Ok(()), "{pinned}");
    }
    for floating in [
        "nats",
        "nats:latest",
        "nats:2",
        "nats:2.15-alpine",
        "rust:1-bookworm",
        "debian:bookworm-slim",
        "registry.example:5000/team/image",
        "image@sha256:abc",
    ] {
        assert!(check_pinned_image(floating).is_err(), "{floating}");
    }
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("1min 30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
    assert_eq!(parse_duration("soon"), None);
}

// --- the Dockerfile -----------------------------------------------------------------

/// One stage of a Dockerfile.
#[derive(Debug)]
struct Stage {
    /// What `FROM` names: an image, or an earlier stage.
    base: String,
    /// The `AS` name.
    name: Option<String>,
    /// The stage's instructions after `FROM`: keyword (uppercase) and arguments.
    instructions: Vec<(String, String)>,
}

impl Stage {
    /// The arguments of every `keyword` instruction of the stage.
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> + '_ {
        let keyword = keyword.to_string();
        self.instructions
            .iter()
            .filter(move |(name, _)| *name == keyword)
            .map(|(_, arguments)| arguments.as_str())
    }

    /// The arguments of the stage's last `keyword` instruction.
    fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).last()
    }

    /// The value of `ENV name=value` in this stage.
    fn env(&self, name: &str) -> Option<&str> {
        self.all("ENV")
            .filter_map(|arguments| arguments.split_once('='))
            .filter(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim())
            .last()
    }

    /// The program of the exec-form `ENTRYPOINT`.
    fn entrypoint_program(&self) -> Option<String> {
        let entrypoint = self.last("ENTRYPOINT")?;
        let list: Vec<String> = yaml_serde::from_str(entrypoint).ok()?;
        list.into_iter().next()
    }
}

/// The stages of a Dockerfile: continuation lines joined, comments dropped.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let instruction = std::mem::take(&mut pending);
        let (keyword, arguments) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction.as_str(), ""));
        instructions.push((keyword.to_uppercase(), arguments.trim().to_string()));
    }
    let mut stages: Vec<Stage> = Vec::new();
    for (keyword, arguments) in instructions {
        if keyword == "FROM" {
            let words: Vec<&str> = arguments
                .split_whitespace()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_keyword, name] if as_keyword.eq_ignore_ascii_case("as") => {
                    Some(name.to_string())
                }
                _ => None,
            };
            stages.push(Stage {
                base: words
                    .first()
                    .map(|word| word.to_string())
                    .unwrap_or_default(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((keyword, arguments));
        }
    }
    stages
}

/// The package that builds binary `binary`: the crate folder (named like the
/// package) whose manifest has a `[[bin]]` of that name.
fn package_of_binary(binary: &str) -> Option<String> {
    let crates = repo().join("crates");
    let entries =
        std::fs::read_dir(&crates).unwrap_or_else(|e| panic!("{}: {e}", crates.display()));
    entries.flatten().find_map(|entry| {
        let manifest = std::fs::read_to_string(entry.path().join("Cargo.toml")).ok()?;
        let declares = manifest.split("[[bin]]").skip(1).any(|section| {
            section
                .lines()
                .any(|line| line.replace(' ', "") == format!("name=\"{binary}\""))
        });
        declares.then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// The problems of the Dockerfile's targets `targets` (the stages compose builds).
fn dockerfile_problems(stages: &[Stage], targets: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    if stages.len() < 2 {
        problems.push(format!(
            "{} stage(s): a build and a runtime stage are needed",
            stages.len()
        ));
    }
    let mut earlier_stages = BTreeSet::new();
    for stage in stages {
        let label = stage.name.clone().unwrap_or_else(|| stage.base.clone());
        if !earlier_stages.contains(&stage.base) {
            if let Err(problem) = check_pinned_image(&stage.base) {
                problems.push(format!("stage {label}: FROM {problem}"));
            }
        }
        for keyword in ["ENV", "ARG"] {
            for arguments in stage.all(keyword) {
                let name = arguments.split(['=', ' ']).next().unwrap_or_default();
                if is_secret_name(name) {
                    problems.push(format!(
                        "stage {label}: {keyword} {name} would bake a secret into the image"
                    ));
                }
            }
        }
        if let Some(name) = &stage.name {
            earlier_stages.insert(name.clone());
        }
    }
    for target in targets {
        let Some(stage) = stages
            .iter()
            .find(|stage| stage.name.as_deref() == Some(target.as_str()))
        else {
            problems.push(format!("target {target}: no stage of that name"));
            continue;
        };
        match stage.last("USER") {
            None => problems.push(format!("target {target}: no USER, so it runs as root")),
            Some(user) => {
                let name = user.split(':').next().unwrap_or_default();
                if name == "root" || name == "0" {
                    problems.push(format!("target {target}: USER {user} is root"));
                }
            }
        }
        let Some(program) = stage.entrypoint_program() else {
            problems.push(format!("target {target}: no exec-form ENTRYPOINT"));
            continue;
        };
        let binary = program.rsplit('/').next().unwrap_or_default().to_string();
        let copy = stage.all("COPY").find_map(|arguments| {
            let from = arguments
                .split_whitespace()
                .find_map(|word| word.strip_prefix("--from="))?;
            let destination = arguments.split_whitespace().last()?;
            (destination == program).then(|| (from.to_string(), arguments.to_string()))
        });
        let Some((builder_name, copy)) = copy else {
            problems.push(format!(
                "target {target}: no COPY --from=<builder> of {program}"
            ));
            continue;
        };
        if !copy.contains(&format!("/release/{binary} ")) {
            problems.push(format!(
                "target {target}: `COPY {copy}` does not copy the release build of {binary}"
            ));
        }
        let Some(builder) = stages
            .iter()
            .find(|stage| stage.name.as_deref() == Some(builder_name.as_str()))
        else {
            problems.push(format!(
                "target {target}: COPY --from={builder_name} names no stage"
            ));
            continue;
        };
        let build = builder
            .all("RUN")
            .find(|command| command.contains("cargo build"));
        let Some(build) = build else {
            problems.push(format!("stage {builder_name}: no `cargo build`"));
            continue;
        };
        for flag in ["--release", "--locked"] {
            if !build.split_whitespace().any(|word| word == flag) {
                problems.push(format!("stage {builder_name}: `{build}` lacks {flag}"));
            }
        }
        match package_of_binary(&binary) {
            Some(package) if build.contains(&format!("-p {package}")) => {}
            Some(package) => problems.push(format!(
                "stage {builder_name}: `{build}` does not build -p {package} ({binary})"
            )),
            None => problems.push(format!(
                "target {target}: no crate declares the binary {binary}"
            )),
        }
    }
    problems
}

#[test]
fn the_dockerfile_builds_locked_and_runs_each_binary_pinned_and_unprivileged() {
    let stages = parse_dockerfile(&read(DOCKERFILE));
    let targets: BTreeSet<String> = ["cctv-ingest", "cctv-aggregator", "cctvctl"]
        .map(String::from)
        .into();
    assert_no_problems(DOCKERFILE, &dockerfile_problems(&stages, &targets));

    // The checks themselves fail on the mistakes they are there for.
    let broken = read(DOCKERFILE)
        .replace("FROM rust:1.95.0-bookworm", "FROM rust:latest")
        .replace("USER 10001:10001", "USER root")
        .replace("--locked", "");
    let problems = dockerfile_problems(&parse_dockerfile(&broken), &targets).join("\n");
    for expected in ["rust:latest", "USER root is root", "lacks --locked"] {
        assert!(
            problems.contains(expected),
            "{expected} not caught in:\n{problems}"
        );
    }

    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect();
    for needed in ["target", ".local", ".git", "**/.env"] {
        assert!(
            ignored.contains(needed),
            ".dockerignore does not exclude {needed}"
        );
    }
}

// --- compose ------------------------------------------------------------------------

/// The parsed compose file.
fn compose() -> Value {
    let path = format!("{COMPOSE_DIR}/compose.yaml");
    yaml_serde::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The services of a compose file, by name.
fn services(compose: &Value) -> BTreeMap<String, &Value> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("compose.yaml has services")
        .iter()
        .map(|(name, service)| {
            (
                name.as_str()
                    .expect("service names are strings")
                    .to_string(),
                service,
            )
        })
        .collect()
}

/// The string at `key` of a mapping.
fn string_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A service's environment as a map (compose also allows a list; we do not).
fn environment(service: &Value) -> BTreeMap<String, Option<String>> {
    let Some(environment) = service.get("environment") else {
        return BTreeMap::new();
    };
    let mapping = environment
        .as_mapping()
        .expect("environment is written as a mapping, so each secret is one reference");
    mapping
        .iter()
        .map(|(key, value)| {
            let key = key
                .as_str()
                .expect("variable names are strings")
                .to_string();
            (key, value.as_str().map(String::from))
        })
        .collect()
}

/// A bind mount or named volume of a service: (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    service
        .get("volumes")
        .and_then(Value::as_sequence)
        .map(|volumes| {
            volumes
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|volume| {
                    let mut parts = volume.split(':');
                    Some((parts.next()?.to_string(), parts.next()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a mount source is a path on the host (else a named volume).
fn is_bind_source(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// The repository file bind-mounted at `target` in `service`.
fn mounted_file(service: &Value, target: &str) -> Option<PathBuf> {
    mounts(service)
        .into_iter()
        .find(|(source, mount_target)| mount_target == target && is_bind_source(source))
        .map(|(source, _)| repo().join(COMPOSE_DIR).join(source))
}

/// The names of every `${NAME}` reference in the string values of `value`.
fn variable_references(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                rest = &rest[start + 2..];
                let length = rest
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                names.insert(rest[..length].to_string());
            }
        }
        Value::Sequence(items) => items
            .iter()
            .for_each(|item| variable_references(item, names)),
        Value::Mapping(mapping) => mapping
            .values()
            .for_each(|item| variable_references(item, names)),
        Value::Tagged(tagged) => variable_references(&tagged.value, names),
        _ => {}
    }
}

/// Whether `value` is exactly one `${NAME}` reference (with an optional `:?message`
/// or `:-default`), the only way a secret may appear in compose.yaml.
fn is_single_reference(value: &str) -> bool {
    let Some(inner) = value
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return false;
    };
    let name = inner.split([':', '?', '-']).next().unwrap_or_default();
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !inner.contains('$')
}

/// The build target of a service built from our Dockerfile.
fn build_target(service: &Value) -> Option<&str> {
    service
        .get("build")
        .and_then(|build| string_at(build, "target"))
}

/// The problems of a parsed compose file (see the module docs for the rules).
fn compose_problems(compose: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let services = services(compose);
    let stages = parse_dockerfile(&read(DOCKERFILE));
    let declared_volumes: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|volumes| {
            volumes
                .keys()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();

    for (name, service) in &services {
        // Images: pinned, or built from our Dockerfile's target.
        match (string_at(service, "image"), service.get("build")) {
            (Some(image), None) => {
                if let Err(problem) = check_pinned_image(image) {
                    problems.push(format!("{name}: image {problem}"));
                }
            }
            (None, Some(build)) => {
                let context = string_at(build, "context").unwrap_or(".");
                let dockerfile = string_at(build, "dockerfile").unwrap_or("Dockerfile");
                let path = repo().join(COMPOSE_DIR).join(context).join(dockerfile);
                if !path.is_file() {
                    problems.push(format!(
                        "{name}: build.dockerfile {} does not exist",
                        path.display()
                    ));
                }
                match build_target(service) {
                    Some(target)
                        if stages
                            .iter()
                            .any(|stage| stage.name.as_deref() == Some(target)) => {}
                    target => problems.push(format!(
                        "{name}: build.target {target:?} is no stage of {DOCKERFILE}"
                    )),
                }
            }
            _ => problems.push(format!("{name}: needs exactly one of image and build")),
        }

        // Restart policy and healthcheck: one-shots exit, everything else restarts
        // and says when it is ready.
        let restart = service.get("restart");
        let one_shot = restart.and_then(Value::as_str) == Some("no");
        match restart.and_then(Value::as_str) {
            Some(policy) if one_shot || RESTARTING_POLICIES.contains(&policy) => {}
            _ => problems.push(format!(
                "{name}: restart must be a quoted policy, got {restart:?}"
            )),
        }
        let healthcheck = service
            .get("healthcheck")
            .and_then(|check| check.get("test"));
        if !one_shot {
            let command: Vec<&str> = healthcheck
                .and_then(Value::as_sequence)
                .map(|words| words.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if command.first() != Some(&"CMD")
                || !command
                    .iter()
                    .any(|word| word.starts_with("http://127.0.0.1:"))
            {
                problems.push(format!("{name}: healthcheck.test must be [\"CMD\", ..., \"http://127.0.0.1:<port>/...\"]"));
            }
        }

        // Dependencies name services, with conditions those services can meet.
        let depends_on = service.get("depends_on");
        if depends_on.is_some_and(|depends_on| !depends_on.is_mapping()) {
            problems.push(format!(
                "{name}: depends_on must map each service to a condition"
            ));
        }
        if let Some(depends_on) = depends_on.and_then(Value::as_mapping) {
            for (dependency, settings) in depends_on {
                let dependency = dependency.as_str().unwrap_or_default();
                let Some(target) = services.get(dependency) else {
                    problems.push(format!(
                        "{name}: depends_on names no service {dependency:?}"
                    ));
                    continue;
                };
                match string_at(settings, "condition") {
                    Some("service_healthy") if target.get("healthcheck").is_none() => {
                        problems.push(format!("{name}: waits for {dependency} to be healthy, which has no healthcheck"))
                    }
                    Some("service_completed_successfully") if string_at(target, "restart") != Some("no") => {
                        problems.push(format!("{name}: waits for {dependency} to complete, which restarts"))
                    }
                    Some("service_healthy" | "service_completed_successfully" | "service_started") => {}
                    condition => problems.push(format!("{name}: depends_on {dependency} has condition {condition:?}")),
                }
            }
        }

        // Mounts: files of the repository and declared volumes.
        for (source, target) in mounts(service) {
            if is_bind_source(&source) {
                if !repo().join(COMPOSE_DIR).join(&source).exists() {
                    problems.push(format!(
                        "{name}: mounts {source} (at {target}), which does not exist"
                    ));
                }
            } else if !declared_volumes.contains(&source) {
                problems.push(format!(
                    "{name}: volume {source} is not declared under `volumes`"
                ));
            }
        }

        // Secrets: only ever one `${VAR}` reference each.
        for (variable, value) in environment(service) {
            let value = value.unwrap_or_default();
            if is_secret_name(&variable) && !is_single_reference(&value) {
                problems.push(format!(
                    "{name}: {variable} must be a ${{VAR}} reference, not an inline value"
                ));
            }
        }
    }
    problems.extend(service_problems(&services, &stages));
    problems
}

/// The problems of the services built from our Dockerfile: their configs, the
/// environment those configs need, healthcheck ports, stop grace and instances.
fn service_problems(services: &BTreeMap<String, &Value>, stages: &[Stage]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in services {
        let Some(target) = build_target(service) else {
            continue;
        };
        let Some(stage) = stages
            .iter()
            .find(|stage| stage.name.as_deref() == Some(target))
        else {
            continue;
        };
        let Some(binary) = stage
            .entrypoint_program()
            .and_then(|program| Binary::from_name(program.rsplit('/').next().unwrap_or_default()))
        else {
            problems.push(format!("{name}: target {target} runs none of our binaries"));
            continue;
        };
        // The image reads its config from CCTV_CONFIG; compose must mount a file there.
        let Some(config_path) = stage.env("CCTV_CONFIG") else {
            problems.push(format!("{name}: target {target} sets no CCTV_CONFIG"));
            continue;
        };
        let Some(config_file) = mounted_file(service, config_path) else {
            problems.push(format!(
                "{name}: nothing is mounted at the image's config path {config_path}"
            ));
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&config_file) else {
            problems.push(format!(
                "{name}: {} is not a readable file",
                config_file.display()
            ));
            continue;
        };
        // The variables the service sets, with a non-empty value (a `:-` default of
        // nothing is unset for the binaries, which ignore empty variables).
        let set: BTreeSet<String> = environment(service)
            .into_iter()
            .filter(|(_, value)| value.as_deref().is_some_and(|value| !value.contains(":-}")))
            .map(|(variable, _)| variable)
            .collect();
        let facts = match load_config(binary, &text, &set) {
            Ok(facts) => facts,
            Err(error) => {
                problems.push(format!("{name}: {}: {error}", config_file.display()));
                continue;
            }
        };
        // Other containers reach the servers by their compose service names.
        let mut servers = vec![("nats.url", facts.nats_url.clone())];
        if let Some((url, _)) = &facts.clickhouse {
            servers.push(("clickhouse.url", url.clone()));
        }
        for (key, url) in servers {
            match url_host(&url) {
                Some(host) if services.contains_key(host) => {}
                _ => problems.push(format!(
                    "{name}: {key} {url} does not name a compose service"
                )),
            }
        }
        if let Some(port) = facts.telemetry_port {
            let healthcheck = service
                .get("healthcheck")
                .and_then(|check| check.get("test"))
                .and_then(Value::as_sequence)
                .and_then(|words| {
                    words
                        .iter()
                        .filter_map(Value::as_str)
                        .find(|word| word.contains("://"))
                });
            if healthcheck.and_then(url_port) != Some(port)
                || !healthcheck.is_some_and(|url| url.ends_with("/healthz"))
            {
                problems.push(format!("{name}: healthcheck {healthcheck:?} is not /healthz on the config's port {port}"));
            }
            let exposed: Vec<&str> = stage.all("EXPOSE").collect();
            if !exposed.contains(&port.to_string().as_str()) {
                problems.push(format!(
                    "{name}: target {target} exposes {exposed:?}, not the metrics port {port}"
                ));
            }
            // Services are stopped with SIGTERM and then killed after the grace period.
            let grace = string_at(service, "stop_grace_period").and_then(parse_duration);
            match (grace, facts.shutdown_grace) {
                (Some(grace), Some(shutdown)) if grace > shutdown => {}
                (grace, shutdown) => problems.push(format!(
                    "{name}: stop_grace_period {grace:?} must exceed the service's shutdown_grace {shutdown:?}"
                )),
            }
            // Several instances: replicas, and nothing that two replicas would share.
            let replicas = service
                .get("deploy")
                .and_then(|deploy| deploy.get("replicas"))
                .and_then(Value::as_u64);
            if replicas.unwrap_or(1) < 2 {
                problems.push(format!(
                    "{name}: deploy.replicas {replicas:?}: run at least two instances"
                ));
            }
            for key in ["container_name", "ports"] {
                if service.get(key).is_some() {
                    problems.push(format!(
                        "{name}: {key} keeps replicas from starting side by side"
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn the_compose_file_pins_checks_and_orders_every_service() {
    let compose = compose();
    let services = services(&compose);
    for expected in [
        "nats",
        "clickhouse",
        "setup",
        "cctv-ingest",
        "cctv-aggregator",
    ] {
        assert!(
            services.contains_key(expected),
            "compose.yaml has no service {expected}"
        );
    }
    assert_no_problems("compose.yaml", &compose_problems(&compose));

    // The checks themselves fail on the mistakes they are there for.
    let broken_text = read(format!("{COMPOSE_DIR}/compose.yaml"))
        .replace("nats:2.15.1-alpine", "nats:latest")
        .replace(
            "condition: service_completed_successfully",
            "condition: service_healthy",
        )
        .replace("stop_grace_period: 30s", "stop_grace_period: 10s")
        .replace(
            "CCTV_CLICKHOUSE_PASSWORD: ${CCTV_CLICKHOUSE_WRITER_PASSWORD:?set it in .env}",
            "CCTV_CLICKHOUSE_PASSWORD: hunter2",
        );
    let broken: Value = yaml_serde::from_str(&broken_text).unwrap();
    let problems = compose_problems(&broken).join("\n");
    for expected in [
        "nats:latest",
        "waits for setup to be healthy",
        "must exceed the service's shutdown_grace",
        "CCTV_CLICKHOUSE_PASSWORD must be a ${VAR} reference",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not caught in:\n{problems}"
        );
    }
}

#[test]
fn compose_secrets_are_references_to_the_variables_of_env_example() {
    let mut used = BTreeSet::new();
    variable_references(&compose(), &mut used);
    // The optional Grafana file reads the same .env (tests/pipeline/grafana.rs).
    let grafana: Value = yaml_serde::from_str(&read(format!("{COMPOSE_DIR}/grafana.yaml")))
        .expect("grafana.yaml is YAML");
    variable_references(&grafana, &mut used);
    let example = parse_env_file(&read(format!("{COMPOSE_DIR}/.env.example")));
    let listed: BTreeSet<String> = example.keys().cloned().collect();
    let missing: Vec<&String> = used.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "used in compose.yaml, missing from .env.example: {missing:?}"
    );
    let unused: Vec<&String> = listed.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "listed in .env.example, used nowhere: {unused:?}"
    );
    // No value at all: a placeholder left in place must stop `docker compose up`
    // (`${VAR:?}` refuses empty values) instead of becoming a password.
    for (variable, value) in &example {
        assert!(value.is_empty(), ".env.example gives {variable} a value");
    }
    // The filled-in file is never committed.
    let ignored = read(format!("{COMPOSE_DIR}/.gitignore"));
    assert!(
        ignored.lines().any(|line| line.trim() == ".env"),
        "deploy/compose/.gitignore must ignore .env"
    );
}

#[test]
fn compose_servers_get_every_password_and_user_their_files_name() {
    let compose = compose();
    let services = services(&compose);

    // NATS: the command's config, auth.conf beside it (the include is relative), and
    // every password variable auth.conf reads from the server's environment.
    let nats = services["nats"];
    let command: Vec<&str> = nats
        .get("command")
        .and_then(Value::as_sequence)
        .map(|words| words.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let config_target = command
        .windows(2)
        .find(|pair| pair[0] == "--config" || pair[0] == "-c")
        .map(|pair| pair[1])
        .expect("nats runs with --config");
    let nats_conf =
        std::fs::read_to_string(mounted_file(nats, config_target).expect("nats.conf is mounted"))
            .unwrap();
    assert!(
        nats_conf.contains("\njetstream {"),
        "nats.conf does not turn JetStream on"
    );
    assert!(
        nats_conf
            .lines()
            .any(|line| line.trim() == "include ./auth.conf"),
        "nats.conf does not include ./auth.conf"
    );
    let auth_target = config_target
        .rsplit_once('/')
        .map(|(dir, _)| format!("{dir}/auth.conf"))
        .unwrap();
    let auth_file =
        mounted_file(nats, &auth_target).expect("auth.conf is mounted beside nats.conf");
    assert_eq!(
        auth_file.canonicalize().unwrap(),
        repo().join("deploy/nats/auth.conf").canonicalize().unwrap(),
        "compose must mount the auth.conf that tests/pipeline/security.rs proves"
    );
    let auth = read("deploy/nats/auth.conf");
    let nats_environment = environment(nats);
    let assignments = auth
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'));
    for word in assignments
        .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')))
    {
        if let Some(variable) = word
            .strip_prefix('$')
            .filter(|name| name.starts_with("CCTV_"))
        {
            assert!(
                nats_environment.contains_key(variable),
                "auth.conf reads {variable}, which nats is not given"
            );
        }
    }
    // The healthcheck asks the monitoring port that nats.conf opens.
    let monitoring_port = nats_conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("http:"))
        .and_then(|address| address.trim().rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let healthcheck_url = nats["healthcheck"]["test"].as_sequence().and_then(|words| {
        words
            .iter()
            .filter_map(Value::as_str)
            .find(|word| word.contains("://"))
    });
    assert_eq!(
        healthcheck_url.and_then(url_port),
        monitoring_port,
        "nats healthcheck port"
    );

    // ClickHouse: the users file in users.d, every `from_env` variable given, no
    // password written in the file.
    let clickhouse = services["clickhouse"];
    let users_file = mounts(clickhouse)
        .into_iter()
        .find(|(_, target)| target.starts_with("/etc/clickhouse-server/users.d/"))
        .map(|(source, _)| repo().join(COMPOSE_DIR).join(source))
        .expect("a users file is mounted into users.d");
    let users = std::fs::read_to_string(&users_file).unwrap();
    assert!(
        !users.contains("<password>"),
        "a password is written in {}",
        users_file.display()
    );
    let clickhouse_environment = environment(clickhouse);
    for fragment in users.split("from_env=\"").skip(1) {
        let variable = fragment.split('"').next().unwrap();
        assert!(
            clickhouse_environment.contains_key(variable),
            "users.xml reads {variable}, which clickhouse is not given"
        );
    }

    // Every user a config of ours logs in as exists on its server.
    for (name, service) in &services {
        let Some(binary) = build_target(service).and_then(Binary::from_name) else {
            continue;
        };
        let config_path = match binary {
            Binary::Ingest => "/etc/cctv/ingest.toml",
            Binary::Aggregator => "/etc/cctv/aggregator.toml",
            Binary::Cli => "/etc/cctv/cctvctl.toml",
        };
        let text = std::fs::read_to_string(mounted_file(service, config_path).unwrap()).unwrap();
        let facts = load_config(binary, &text, &["CCTV_NATS_PASSWORD".to_string()].into()).unwrap();
        let nats_user = facts
            .nats_user
            .unwrap_or_else(|| panic!("{name}: no NATS user"));
        assert!(
            auth.contains(&format!("user: {nats_user}\n")),
            "{name}: NATS user {nats_user} is not in auth.conf"
        );
        if let Some((_, clickhouse_user)) = facts.clickhouse {
            // Users only: a profile may carry the same name.
            let definition = users
                .split("<users>")
                .nth(1)
                .and_then(|section| section.split(&format!("<{clickhouse_user}>")).nth(1))
                .and_then(|rest| rest.split(&format!("</{clickhouse_user}>")).next());
            assert!(
                definition.is_some_and(|definition| definition.contains("from_env=")),
                "{name}: ClickHouse user {clickhouse_user} is not defined with a from_env password"
            );
        }
    }
}

// --- systemd ------------------------------------------------------------------------

/// A unit file: every assignment of each section, in order.
type Unit = BTreeMap<String, Vec<(String, String)>>;

/// Reads a unit file as INI: `[Section]` headers, `Key=Value` lines, `#` and `;`
/// comments, backslash continuations.
fn parse_unit(text: &str) -> Result<Unit, String> {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if pending.is_empty()
            && (trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not `Key=Value`: {line}", number + 1));
        };
        let Some(section) = &section else {
            return Err(format!(
                "line {}: assignment before any section",
                number + 1
            ));
        };
        unit.entry(section.clone())
            .or_default()
            .push((key.trim().to_string(), value.trim().to_string()));
    }
    Ok(unit)
}

/// The last value assigned to `key` in `section` (what systemd uses for
/// single-valued settings).
fn unit_value<'a>(unit: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?
        .iter()
        .rev()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The problems of unit file `file_name` (its text `text`).
fn unit_problems(file_name: &str, text: &str) -> Vec<String> {
    let unit = match parse_unit(text) {
        Ok(unit) => unit,
        Err(error) => return vec![format!("{file_name}: {error}")],
    };
    let mut problems = Vec::new();
    let mut problem = |message: String| problems.push(format!("{file_name}: {message}"));
    for section in ["Unit", "Service", "Install"] {
        if !unit.contains_key(section) {
            problem(format!("no [{section}] section"));
        }
    }
    let service = |key: &str| unit_value(&unit, "Service", key);
    for (key, expected) in UNIT_HARDENING {
        match service(key) {
            Some(value) if value == expected => {}
            value => problem(format!("{key}={value:?}, expected {expected:?}")),
        }
    }
    let dynamic_user = service("DynamicUser") == Some("yes");
    let dedicated_user = service("User").is_some_and(|user| user != "root" && user != "0");
    if !dynamic_user && !dedicated_user {
        problem("neither DynamicUser=yes nor a User= other than root".into());
    }
    if service("LimitNOFILE")
        .and_then(|limit| limit.parse::<u64>().ok())
        .is_none()
    {
        problem("LimitNOFILE= is not a number".into());
    }
    if service("KillSignal") != Some("SIGTERM") {
        problem("KillSignal= is not SIGTERM".into());
    }
    let one_shot = service("Type") == Some("oneshot");
    if !one_shot && service("Restart") != Some("on-failure") {
        problem(format!(
            "Restart={:?}, expected \"on-failure\"",
            service("Restart")
        ));
    }

    // ExecStart: one of our binaries in /usr/local/bin, with a config of
    // deploy/systemd installed in /etc/cctv/.
    let exec_start = service("ExecStart").unwrap_or_default();
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    let binary = words
        .first()
        .and_then(|program| program.strip_prefix("/usr/local/bin/"))
        .and_then(Binary::from_name);
    let Some(binary) = binary else {
        problem(format!(
            "ExecStart={exec_start:?} does not start one of our binaries in /usr/local/bin"
        ));
        return problems;
    };
    let config = words
        .windows(2)
        .find(|pair| pair[0] == "--config")
        .map(|pair| pair[1]);
    let Some(config_file) = config.and_then(|path| path.strip_prefix(SYSTEMD_ETC)) else {
        problem(format!(
            "ExecStart={exec_start:?} names no --config {SYSTEMD_ETC}<file>"
        ));
        return problems;
    };
    let Some(env_file) = service("EnvironmentFile").and_then(|path| path.strip_prefix(SYSTEMD_ETC))
    else {
        problem(format!(
            "no EnvironmentFile={SYSTEMD_ETC}<name>.env for the secrets"
        ));
        return problems;
    };
    let env_example = repo().join(SYSTEMD_DIR).join(format!("{env_file}.example"));
    let Ok(env_text) = std::fs::read_to_string(&env_example) else {
        problem(format!(
            "EnvironmentFile {env_file} has no {}",
            env_example.display()
        ));
        return problems;
    };
    let env = parse_env_file(&env_text);
    for (variable, value) in &env {
        if !value.is_empty() {
            problem(format!(
                "{} gives {variable} a value",
                env_example.display()
            ));
        }
    }
    // The config, as the unit starts it: the env file's variables filled in, and
    // the unit's own Environment= (the per-instance metrics address).
    let mut set: BTreeSet<String> = env.keys().cloned().collect();
    set.extend(
        unit["Service"]
            .iter()
            .filter(|(key, _)| key == "Environment")
            .filter_map(|(_, value)| {
                value
                    .split_once('=')
                    .map(|(variable, _)| variable.to_string())
            }),
    );
    let config_text = match std::fs::read_to_string(repo().join(SYSTEMD_DIR).join(config_file)) {
        Ok(text) => text,
        Err(error) => {
            problem(format!("{SYSTEMD_DIR}/{config_file}: {error}"));
            return problems;
        }
    };
    // The metrics address of a template instance is not known here; the file's own
    // address stands in for it.
    set.retain(|variable| !variable.ends_with("_METRICS_LISTEN"));
    match load_config(binary, &config_text, &set) {
        Ok(facts) => {
            let stop = service("TimeoutStopSec").and_then(parse_duration);
            let grace = facts.shutdown_grace.unwrap_or(Duration::ZERO);
            if stop.is_none_or(|stop| stop <= grace) {
                problem(format!(
                    "TimeoutStopSec={stop:?} must exceed the shutdown grace {grace:?}"
                ));
            }
        }
        Err(error) => problem(format!("{SYSTEMD_DIR}/{config_file}: {error}")),
    }
    problems
}

#[test]
fn the_systemd_units_are_hardened_and_start_the_binaries_with_their_files() {
    let directory = repo().join(SYSTEMD_DIR);
    let mut units: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".service"))
        .collect();
    units.sort();
    assert_eq!(
        units,
        [
            "cctv-aggregator@.service",
            "cctv-ingest@.service",
            "cctvctl-setup.service"
        ]
    );
    let mut problems = Vec::new();
    for name in &units {
        let text = read(format!("{SYSTEMD_DIR}/{name}"));
        problems.extend(unit_problems(name, &text));
        // A template's instance is the metrics port: each instance its own endpoint.
        if name.ends_with("@.service") && !text.contains("_METRICS_LISTEN=127.0.0.1:%i") {
            problems.push(format!(
                "{name}: a template must give each instance its own metrics port (%i)"
            ));
        }
    }
    assert_no_problems(SYSTEMD_DIR, &problems);

    // The checks themselves fail on the mistakes they are there for.
    let broken = read(format!("{SYSTEMD_DIR}/cctv-ingest@.service"))
        .replace("ProtectSystem=strict", "ProtectSystem=full")
        .replace("TimeoutStopSec=30s", "TimeoutStopSec=10s")
        .replace("EnvironmentFile=/etc/cctv/ingest.env\n", "")
        .replace("CapabilityBoundingSet=\n", "");
    let problems = unit_problems("broken", &broken).join("\n");
    for expected in [
        "ProtectSystem=Some(\"full\")",
        "CapabilityBoundingSet=None",
        "no EnvironmentFile",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not caught in:\n{problems}"
        );
    }
    let slow_stop = read(format!("{SYSTEMD_DIR}/cctv-ingest@.service"))
        .replace("TimeoutStopSec=30s", "TimeoutStopSec=10s");
    assert!(unit_problems("slow", &slow_stop)
        .join("\n")
        .contains("must exceed the shutdown grace"));
}

// --- the TOML configs ---------------------------------------------------------------

#[test]
fn every_deployment_config_parses_and_validates_with_its_binarys_own_type() {
    let secrets: BTreeSet<String> = ["CCTV_NATS_PASSWORD", "CCTV_CLICKHOUSE_PASSWORD"]
        .map(String::from)
        .into();
    let configs = [
        (Binary::Ingest, "deploy/compose/ingest.toml"),
        (Binary::Aggregator, "deploy/compose/aggregator.toml"),
        (Binary::Cli, "deploy/compose/cctvctl.toml"),
        (Binary::Ingest, "deploy/systemd/ingest.toml"),
        (Binary::Aggregator, "deploy/systemd/aggregator.toml"),
        (Binary::Cli, "deploy/systemd/cctvctl.toml"),
    ];
    let mut problems = Vec::new();
    for (binary, path) in configs {
        if let Err(error) = load_config(binary, &read(path), &secrets) {
            problems.push(format!("{path}: {error}"));
        }
    }
    assert_no_problems("deployment configs", &problems);

    // The same types refuse what would rot: an unknown key, a DDL-running writer.
    let misspelt = read("deploy/compose/ingest.toml").replace("batch_linger", "batch_lingr");
    assert!(load_config(Binary::Ingest, &misspelt, &secrets).is_err());
    let migrating = read("deploy/compose/aggregator.toml")
        .replace("migrate_on_start = false", "migrate_on_start = true");
    assert!(load_config(Binary::Aggregator, &migrating, &secrets).is_err());
    let no_password = read("deploy/compose/ingest.toml");
    assert!(load_config(Binary::Ingest, &no_password, &BTreeSet::new()).is_err());
}

/// The loopback cluster's configs (`make cluster-up`): they parse with the
/// binaries' own types, list the nodes of `deploy/cluster/layout.env` (every
/// NATS node, every ClickHouse replica in its shard), and replicate every
/// stream and the lease bucket three times.
#[test]
fn the_cluster_configs_name_the_layouts_nodes_and_replicate_three_times() {
    let layout = read("deploy/cluster/layout.env");
    let block = |name: &str| -> Vec<Vec<String>> {
        let start = layout
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{name} in layout.env"));
        let rest = &layout[start + name.len() + 2..];
        let end = rest.find('"').unwrap_or(rest.len());
        rest[..end]
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|fields| !fields.is_empty())
            .collect()
    };
    let nats_urls: Vec<String> = block("NATS_NODES")
        .iter()
        .map(|node| format!("nats://{}:{}", node[1], node[2]))
        .collect();
    assert_eq!(nats_urls.len(), 3);
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in block("CLICKHOUSE_NODES") {
        shards
            .entry(node[0].clone())
            .or_default()
            .push(format!("http://{}:{}", node[2], node[3]));
    }
    let expected_shards: Vec<Vec<String>> = shards.into_values().collect();
    assert_eq!(expected_shards.len(), 2);
    assert!(expected_shards.iter().all(|replicas| replicas.len() == 2));

    let check = |streams: &cctv_bus::StreamsConfig, nats_url: &str, path: &str| {
        assert_eq!(nats_url, nats_urls.join(","), "{path}: NATS nodes");
        for settings in [&streams.raw, &streams.events, &streams.dlq] {
            assert_eq!(settings.replicas, 3, "{path}: stream {}", settings.name);
        }
        assert_eq!(streams.leases.replicas, 3, "{path}: lease bucket");
    };
    let check_clickhouse = |clickhouse: &cctv_store::ClickHouseConfig, path: &str| {
        let cluster = clickhouse
            .cluster
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: a cluster"));
        let shards: Vec<Vec<String>> = cluster
            .shards
            .iter()
            .map(|shard| shard.replicas.clone())
            .collect();
        assert_eq!(shards, expected_shards, "{path}: shards and replicas");
        assert!(
            layout.contains(&format!("CLICKHOUSE_CLUSTER={}", cluster.name)),
            "{path}"
        );
    };
    let ingest = IngestConfig::from_toml(&read("deploy/cluster/ingest.toml")).expect("ingest.toml");
    ingest.validate().expect("ingest.toml validates");
    check(&ingest.streams, &ingest.nats.url, "ingest.toml");
    let aggregator = AggregatorConfig::from_toml(&read("deploy/cluster/aggregator.toml"))
        .expect("aggregator.toml");
    aggregator.validate().expect("aggregator.toml validates");
    assert!(
        !aggregator.aggregator.migrate_on_start,
        "the writer may not run DDL"
    );
    check(&aggregator.streams, &aggregator.nats.url, "aggregator.toml");
    check_clickhouse(&aggregator.clickhouse, "aggregator.toml");
    let cli = CliConfig::from_toml(&read("deploy/cluster/cctvctl.toml")).expect("cctvctl.toml");
    cli.validate().expect("cctvctl.toml validates");
    check(&cli.streams, &cli.nats.url, "cctvctl.toml");
    check_clickhouse(&cli.clickhouse, "cctvctl.toml");
}

/// Every program given a config file without a single setting (empty, or
/// comments only: truncated, or not yet written) refuses to start and names
/// the file, instead of running on the built-in defaults. Seen in the bench:
/// an aggregator that read its file while it was being rewritten retried
/// the default ClickHouse URL for two minutes.
#[test]
fn a_config_file_without_a_setting_is_refused_by_every_program() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "# written later\n\n").expect("write the file");
    let test_executable = std::env::current_exe().expect("path of the test executable");
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    for (program, args) in [
        ("cctv-ingest", &[][..]),
        ("cctv-aggregator", &[][..]),
        ("cctv-gateway", &[][..]),
        ("cctvctl", &["status"][..]),
    ] {
        let binary = profile_dir.join(program);
        assert!(
            binary.is_file(),
            "{} is missing: build the binaries first (make test does)",
            binary.display()
        );
        let mut child = std::process::Command::new(&binary)
            .arg("--config")
            .arg(&empty)
            .args(args)
            .env_remove("CCTV_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the program");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} kept running on an empty config file");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr piped"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{program} exited with {status}");
        assert!(
            stderr.contains("holds no setting") && stderr.contains(&*empty.to_string_lossy()),
            "{program}: {stderr}"
        );
    }
}
