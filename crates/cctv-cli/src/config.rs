//! The `cctvctl` configuration file: NATS, stream and ClickHouse settings.
//!
//! Loaded from `--config <path>` (or `CCTV_CONFIG`); without a file the
//! defaults of the local stack apply. Environment overrides of the NATS and
//! ClickHouse sections (`CCTV_NATS_*`, `CCTV_CLICKHOUSE_*`) are applied after
//! the file, and secrets come from the environment only.

use std::path::Path;

use anyhow::Context as _;
use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_store::ClickHouseConfig;
use serde::Deserialize;

/// Settings of `cctvctl`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CliConfig {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Names and limits of the three streams.
    pub streams: StreamsConfig,
    /// How to reach ClickHouse and where the tables live.
    pub clickhouse: ClickHouseConfig,
}

impl CliConfig {
    /// Opens (or creates) the deployment's lease bucket.
    pub async fn lease_bucket(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> anyhow::Result<cctv_bus::LeaseBucket> {
        cctv_bus::LeaseBucket::open(js, &self.streams.leases)
            .await
            .with_context(|| {
                format!(
                    "failed to open the lease bucket {}",
                    self.streams.leases.name
                )
            })
    }

    /// Parses a configuration document (no environment overrides applied).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads `path` if given (defaults otherwise), applies the environment
    /// overrides through `lookup` and validates the result.
    pub fn load(
        path: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut config = match path {
            Some(path) => {
                let text = cctv_runtime::read_config_file(path).map_err(anyhow::Error::msg)?;
                Self::from_toml(&text)
                    .with_context(|| format!("failed to parse config file {}", path.display()))?
            }
            None => Self::default(),
        };
        config.apply_env(lookup);
        config.validate()?;
        Ok(config)
    }

    /// Applies the documented environment overrides of NATS and ClickHouse.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        self.nats.apply_env(&lookup);
        self.clickhouse.apply_env(&lookup);
    }

    /// Checks every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.nats
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid [nats] settings")?;
        self.streams
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid [streams] settings")?;
        self.clickhouse
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid [clickhouse] settings")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_example_config_parses_and_validates() {
        let text = include_str!("../../../deploy/local/cctvctl.toml");
        let config = CliConfig::from_toml(text).unwrap();
        assert_eq!(config.nats.url, "nats://127.0.0.1:14222");
        assert_eq!(config.clickhouse.database, "cctv");
        assert_eq!(config.streams.dlq.name, "CCTV_DLQ");
        config.validate().unwrap();
    }

    #[test]
    fn environment_overrides_win_over_the_file_and_unknown_keys_are_refused() {
        let mut config = CliConfig::from_toml("[clickhouse]\ndatabase = \"a\"\n").unwrap();
        config.apply_env(|name| match name {
            "CCTV_CLICKHOUSE_DATABASE" => Some("cli_try".into()),
            "CCTV_NATS_URL" => Some("nats://127.0.0.1:24222".into()),
            _ => None,
        });
        assert_eq!(config.clickhouse.database, "cli_try");
        assert_eq!(config.nats.url, "nats://127.0.0.1:24222");
        assert!(CliConfig::from_toml("[nats]\nbogus = 1\n").is_err());
        assert!(CliConfig::from_toml("[other]\n").is_err());
    }
}
