//! Telemetry settings shared by the services, and reading their config
//! files.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default; for log shippers).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Where the HTTP endpoint listens and how logs look.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address of the `/metrics` and `/healthz` endpoint; port 0 picks a free
    /// port; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            log_format: LogFormat::Json,
        }
    }
}

/// Reads a program's config file. A file without a single setting (empty,
/// or blank lines and comments only) is refused: one given on purpose but
/// truncated or not yet written would otherwise run on the built-in
/// defaults, which name other servers (seen in the bench: an aggregator
/// that read its file while it was being rewritten retried the default
/// ClickHouse URL for two minutes). To run on the defaults, give no file.
///
/// # Errors
/// The file cannot be read, or holds no setting; the text says which file.
pub fn read_config_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))?;
    let has_setting = text
        .lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with('#'));
    if !has_setting {
        return Err(format!(
            "config file {} holds no setting (it is empty or all comments); \
             to run on the built-in defaults, give no config file",
            path.display()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<String, String> {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        read_config_file(file.path())
    }

    #[test]
    fn a_file_without_a_setting_is_refused_and_named() {
        for text in ["", "\n  \n", "# only a comment\n\n   # another\n"] {
            let error = read(text).expect_err(text);
            assert!(error.contains("holds no setting"), "{error}");
        }
        let missing = read_config_file(Path::new("/nonexistent/cctv.toml")).expect_err("missing");
        assert!(missing.contains("/nonexistent/cctv.toml"), "{missing}");
    }

    #[test]
    fn a_file_with_a_setting_is_read_whole() {
        let text = "# comment\n[nats]\nurl = \"nats://127.0.0.1:4222\"\n";
        assert_eq!(read(text).expect("read"), text);
    }
}
