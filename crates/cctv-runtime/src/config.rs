//! Telemetry settings shared by the services.

use std::net::SocketAddr;

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
