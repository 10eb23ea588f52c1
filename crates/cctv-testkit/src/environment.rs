//! Finding server binaries and reading the "servers are required" switch.

use std::path::PathBuf;

use crate::TestkitError;

/// Directories searched after `PATH`, where the Debian packages install servers.
const FALLBACK_DIRS: [&str; 2] = ["/usr/sbin", "/usr/bin"];

/// Returns true when tests must not skip for lack of servers: the `CI` env var is
/// `true` or `CCTV_REQUIRE_SERVERS` is `1`.
pub fn require_servers() -> bool {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    let required = std::env::var("CCTV_REQUIRE_SERVERS").is_ok_and(|value| value == "1");
    ci || required
}

/// Finds `binary_name`: the path in `env_override` if that variable is set and
/// non-empty, else the first match in `PATH`, `/usr/sbin` and `/usr/bin`.
pub(crate) fn find_binary(binary_name: &str, env_override: &str) -> Result<PathBuf, TestkitError> {
    if let Some(value) = std::env::var_os(env_override).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(&value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(TestkitError::BinaryNotFound {
            name: path.display().to_string(),
            hint: String::new(),
        });
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback_dirs = FALLBACK_DIRS.iter().map(PathBuf::from);
    path_dirs
        .into_iter()
        .chain(fallback_dirs)
        .map(|dir| dir.join(binary_name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| TestkitError::BinaryNotFound {
            name: binary_name.to_owned(),
            hint: String::new(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_rejects_missing_binary() {
        assert!(find_binary("sh", "CCTV_TESTKIT_UNSET_OVERRIDE").is_ok());
        let missing = find_binary("cctv-no-such-binary", "CCTV_TESTKIT_UNSET_OVERRIDE");
        assert!(matches!(missing, Err(TestkitError::BinaryNotFound { .. })));
    }
}
