//! Which `nats-server` the tests run, and whether it is new enough.
//!
//! The project pins one release in `scripts/versions.env` (`NATS_SERVER_VERSION`),
//! which `scripts/install-nats.sh` installs into
//! `.local/tools/nats-server-<version>/nats-server` under the workspace root. The
//! lookup order is: the `CCTV_NATS_SERVER_BIN` override, that pinned install, then
//! `nats-server` on `PATH` (and `/usr/sbin`, `/usr/bin`). Whatever is found must
//! report at least [`NATS_SERVER_MINIMUM`], or it is refused with
//! [`TestkitError::TooOld`]: Debian's 2.9.10 lacks features the project uses.
//!
//! Parsing and comparing versions is pure (strings in, values out) and unit-tested
//! without a server.

use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{environment::find_binary, TestkitError};

/// Binary name looked up in `PATH`, `/usr/sbin` and `/usr/bin`.
const NATS_BINARY: &str = "nats-server";

/// Env var that overrides the binary path.
const NATS_BINARY_ENV: &str = "CCTV_NATS_SERVER_BIN";

/// The oldest supported nats-server; equal to `NATS_SERVER_MINIMUM` of
/// `scripts/versions.env` (a unit test keeps the two in step).
const NATS_SERVER_MINIMUM: &str = "2.10.0";

/// The versions file, relative to the workspace root.
const VERSIONS_FILE: &str = "scripts/versions.env";

/// Key of the pinned release in [`VERSIONS_FILE`].
const PINNED_VERSION_KEY: &str = "NATS_SERVER_VERSION";

/// What to tell someone whose nats-server is missing or too old.
const INSTALL_HINT: &str =
    "run scripts/install-nats.sh, or set CCTV_NATS_SERVER_BIN to a nats-server 2.10 or later";

/// The nats-server to run: `CCTV_NATS_SERVER_BIN` if set, else the pinned release
/// installed by `scripts/install-nats.sh` under the workspace root, else
/// `nats-server` on `PATH`, `/usr/sbin` or `/usr/bin`.
///
/// Runs `<binary> --version` and refuses a release older than 2.10.0 with
/// [`TestkitError::TooOld`]. A missing binary is [`TestkitError::BinaryNotFound`].
pub fn nats_server_binary() -> Result<PathBuf, TestkitError> {
    require_minimum(locate_binary()?)
}

/// `binary` when it reports [`NATS_SERVER_MINIMUM`] or later, else
/// [`TestkitError::TooOld`].
fn require_minimum(binary: PathBuf) -> Result<PathBuf, TestkitError> {
    let found = nats_server_version(&binary)?;
    if !is_at_least(&found, NATS_SERVER_MINIMUM) {
        return Err(TestkitError::TooOld {
            binary: binary.display().to_string(),
            found,
            minimum: NATS_SERVER_MINIMUM.to_owned(),
            hint: INSTALL_HINT.to_owned(),
        });
    }
    Ok(binary)
}

/// The version `binary --version` reports, without the `v` (e.g. `2.15.1` from
/// `nats-server: v2.15.1`).
pub fn nats_server_version(binary: &Path) -> Result<String, TestkitError> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|source| {
            TestkitError::io(format!("run {} --version", binary.display()), source)
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let unknown = || TestkitError::UnknownVersion {
        binary: binary.display().to_string(),
        output: format!("{}{}", text, String::from_utf8_lossy(&output.stderr))
            .trim()
            .to_owned(),
    };
    if !output.status.success() {
        return Err(unknown());
    }
    parse_version_output(&text).ok_or_else(unknown)
}

/// The release pinned in `scripts/versions.env` of the workspace, if that file is
/// found (see [`workspace_root`]) and names one.
pub fn pinned_nats_version() -> Option<String> {
    let root = workspace_root()?;
    let text = std::fs::read_to_string(root.join(VERSIONS_FILE)).ok()?;
    env_file_value(&text, PINNED_VERSION_KEY)
}

/// The override, the pinned install, or the `PATH` lookup, in that order; no
/// version check.
fn locate_binary() -> Result<PathBuf, TestkitError> {
    if std::env::var_os(NATS_BINARY_ENV).is_some_and(|value| !value.is_empty()) {
        return find_binary(NATS_BINARY, NATS_BINARY_ENV);
    }
    let pinned = pinned_install_path();
    if let Some(path) = pinned.as_ref().filter(|path| path.is_file()) {
        return Ok(path.clone());
    }
    find_binary(NATS_BINARY, NATS_BINARY_ENV).map_err(|error| match (error, pinned) {
        (TestkitError::BinaryNotFound { name, .. }, Some(path)) => TestkitError::BinaryNotFound {
            name,
            hint: format!("; not at {} either: {INSTALL_HINT}", path.display()),
        },
        (error, _) => error,
    })
}

/// `<workspace root>/.local/tools/nats-server-<pinned>/nats-server`, installed or not.
fn pinned_install_path() -> Option<PathBuf> {
    let root = workspace_root()?;
    let version = pinned_nats_version()?;
    Some(
        root.join(".local/tools")
            .join(format!("nats-server-{version}"))
            .join(NATS_BINARY),
    )
}

/// The nearest directory holding `scripts/versions.env`, walking up from the
/// running package's `CARGO_MANIFEST_DIR`, then from the current directory, then
/// from this crate's own manifest directory (for binaries run outside cargo).
fn workspace_root() -> Option<PathBuf> {
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    starts.into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .find(|dir| dir.join(VERSIONS_FILE).is_file())
            .map(Path::to_path_buf)
    })
}

/// The value of `key` in shell `KEY=value` lines (comments and blank lines
/// skipped, surrounding quotes removed); the last assignment wins, as in a shell.
fn env_file_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().trim_matches(['"', '\'']).to_owned())
        .rfind(|value| !value.is_empty())
}

/// The version in `nats-server --version` output: `nats-server: v2.15.1` gives
/// `2.15.1`. `None` when the output has no `nats-server: v<digits>...` line.
fn parse_version_output(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let version = line.trim().strip_prefix("nats-server:")?.trim();
        let version = version.strip_prefix('v').unwrap_or(version);
        numeric_parts(version)?;
        Some(version.to_owned())
    })
}

/// The numeric `major.minor.patch` of a version (missing parts are 0; a
/// pre-release or build suffix after `-` or `+` is ignored). `None` when the
/// major part is not a number.
fn numeric_parts(version: &str) -> Option<[u64; 3]> {
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let mut parts = core.split('.');
    let mut numbers = [0_u64; 3];
    numbers[0] = parts.next()?.parse().ok()?;
    for number in numbers.iter_mut().skip(1) {
        match parts.next() {
            Some(part) => *number = part.parse().ok()?,
            None => break,
        }
    }
    Some(numbers)
}

/// Whether `found` is `minimum` or later; an unparsable `found` is not.
fn is_at_least(found: &str, minimum: &str) -> bool {
    match (numeric_parts(found), numeric_parts(minimum)) {
        (Some(found), Some(minimum)) => found.cmp(&minimum) != Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_line() {
        assert_eq!(
            parse_version_output("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            parse_version_output("nats-server: v2.9.10").as_deref(),
            Some("2.9.10")
        );
        assert_eq!(
            parse_version_output("warning: x\nnats-server: v2.11.0-RC.2\n").as_deref(),
            Some("2.11.0-RC.2")
        );
        assert_eq!(parse_version_output("nats-server: vX"), None);
        assert_eq!(parse_version_output("gnatsd version 1.4.1"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn compares_versions_numerically() {
        assert!(is_at_least("2.15.1", "2.10.0"));
        assert!(is_at_least("2.10.0", "2.10.0"));
        assert!(is_at_least("2.10", "2.10.0"));
        assert!(is_at_least("3.0.0", "2.10.0"));
        // 2.9.10 is older than 2.10.0: numbers, not strings, are compared.
        assert!(!is_at_least("2.9.10", "2.10.0"));
        assert!(!is_at_least("2.2.0", "2.10.0"));
        assert!(!is_at_least("1.99.99", "2.10.0"));
        assert!(!is_at_least("garbage", "2.10.0"));
        assert_eq!(numeric_parts("2.11.0-RC.2"), Some([2, 11, 0]));
        assert_eq!(numeric_parts("2.x.0"), None);
    }

    #[test]
    fn reads_shell_assignments() {
        let text =
            "# comment\nNATS_SERVER_VERSION=2.15.1\nOTHER=\"x\"\n\nNATS_SERVER_MINIMUM='2.10.0'\n";
        assert_eq!(
            env_file_value(text, "NATS_SERVER_VERSION").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            env_file_value(text, "NATS_SERVER_MINIMUM").as_deref(),
            Some("2.10.0")
        );
        assert_eq!(env_file_value(text, "MISSING"), None);
        assert_eq!(
            env_file_value("#NATS_SERVER_VERSION=1", "NATS_SERVER_VERSION"),
            None
        );
    }

    #[test]
    fn minimum_matches_versions_env() {
        let root = workspace_root().expect("scripts/versions.env above the testkit");
        let text = std::fs::read_to_string(root.join(VERSIONS_FILE)).expect("versions.env");
        assert_eq!(
            env_file_value(&text, "NATS_SERVER_MINIMUM").as_deref(),
            Some(NATS_SERVER_MINIMUM)
        );
        let pinned = pinned_nats_version().expect("a pinned version");
        assert!(
            is_at_least(&pinned, NATS_SERVER_MINIMUM),
            "pinned {pinned} is older than the minimum"
        );
    }

    #[test]
    fn resolved_binary_is_new_enough() -> Result<(), TestkitError> {
        let binary = nats_server_binary()?;
        let version = nats_server_version(&binary)?;
        assert!(
            is_at_least(&version, NATS_SERVER_MINIMUM),
            "{} reports {version}",
            binary.display()
        );
        Ok(())
    }

    #[test]
    fn prefers_the_pinned_install_over_path() -> Result<(), TestkitError> {
        let version = pinned_nats_version().expect("a pinned version");
        let pinned = pinned_install_path().expect("a pinned install path");
        assert!(
            pinned.ends_with(format!(".local/tools/nats-server-{version}/nats-server")),
            "{}",
            pinned.display()
        );
        // Only without the override and once scripts/install-nats.sh has run is the
        // pinned binary the one chosen.
        if std::env::var_os(NATS_BINARY_ENV).is_none() && pinned.is_file() {
            assert_eq!(locate_binary()?, pinned);
        }
        Ok(())
    }

    #[test]
    fn old_or_unknown_binaries_are_refused() {
        // `sh --version` is no nats-server: its output has no version line.
        let unknown = nats_server_version(Path::new("/bin/sh"));
        assert!(
            matches!(unknown, Err(TestkitError::UnknownVersion { .. })),
            "{unknown:?}"
        );

        // A stand-in that reports Debian's release.
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").expect("write");
        let mut permissions = std::fs::metadata(&fake).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&fake, permissions).expect("chmod");
        assert_eq!(nats_server_version(&fake).ok().as_deref(), Some("2.9.10"));
        match require_minimum(fake.clone()) {
            Err(error @ TestkitError::TooOld { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&fake.display().to_string()), "{message}");
                assert!(message.contains("2.9.10"), "{message}");
                assert!(message.contains("2.10.0"), "{message}");
                assert!(message.contains("scripts/install-nats.sh"), "{message}");
            }
            other => panic!("expected TooOld, got {other:?}"),
        }
    }
}
