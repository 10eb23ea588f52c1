//! ClickHouse connection settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default ClickHouse HTTP URL of the local stack (contract section 1).
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:18123";

/// How to reach ClickHouse and where the tables live. `Debug` shows whether
/// the password is set, never the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL (`https://` for the server's `https_port`). Env:
    /// `CCTV_CLICKHOUSE_URL`.
    pub url: String,
    /// CA certificate(s), PEM, that the server's certificate must be issued
    /// by; the URL (and every replica's) must then be `https://`. Without it
    /// an `https://` URL is checked against the system's roots. Env:
    /// `CCTV_CLICKHOUSE_TLS_CA`.
    pub tls_ca_file: Option<PathBuf>,
    /// Database holding the tables. Env: `CCTV_CLICKHOUSE_DATABASE`.
    pub database: String,
    /// User name. Env: `CCTV_CLICKHOUSE_USER`. The password comes only from
    /// `CCTV_CLICKHOUSE_PASSWORD`.
    pub user: String,
    /// Time zone of the `day` column of `offence_totals` (tz database name).
    pub timezone: String,
    /// Compress insert bodies with LZ4.
    pub compression: bool,
    /// Time allowed for one insert, from first byte to the server's answer.
    #[serde(with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// Password, from `CCTV_CLICKHOUSE_PASSWORD` only.
    #[serde(skip)]
    pub password: Option<String>,
    /// Shards of replicas (`[clickhouse.cluster]`); unset: one server at `url`.
    pub cluster: Option<ClusterConfig>,
}

/// A ClickHouse cluster: shards of replicated tables behind `Distributed`
/// tables. `url` is then the node that analysts' queries (`cctvctl totals`,
/// `audit`) go to; every node can answer them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name in the servers' `remote_servers` (the `Distributed`
    /// tables name it).
    pub name: String,
    /// The shards, in order: partition `p` of the events stream is written
    /// to shard `p mod shards`. Fixed once data is written.
    pub shards: Vec<ShardConfig>,
}

/// One shard: the HTTP URLs of its replicas, the preferred one first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Replica URLs (`http://host:8123`).
    pub replicas: Vec<String>,
}

impl ClusterConfig {
    /// The shard partition `partition` is written to.
    pub fn shard_of(&self, partition: u16) -> usize {
        usize::from(partition) % self.shards.len().max(1)
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_CLICKHOUSE_URL.to_string(),
            tls_ca_file: None,
            database: "cctv".to_string(),
            user: "default".to_string(),
            timezone: "Asia/Almaty".to_string(),
            compression: true,
            insert_timeout: Duration::from_secs(60),
            password: None,
            cluster: None,
        }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("timezone", &self.timezone)
            .field("compression", &self.compression)
            .field("insert_timeout", &self.insert_timeout)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl ClickHouseConfig {
    /// Applies the documented environment overrides through `lookup`.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.is_empty());
        if let Some(url) = non_empty("CCTV_CLICKHOUSE_URL") {
            self.url = url;
        }
        if let Some(database) = non_empty("CCTV_CLICKHOUSE_DATABASE") {
            self.database = database;
        }
        if let Some(user) = non_empty("CCTV_CLICKHOUSE_USER") {
            self.user = user;
        }
        if let Some(path) = non_empty("CCTV_CLICKHOUSE_TLS_CA") {
            self.tls_ca_file = Some(PathBuf::from(path));
        }
        if let Some(password) = non_empty("CCTV_CLICKHOUSE_PASSWORD") {
            self.password = Some(password);
        }
    }

    /// Checks the settings: the database must be a plain identifier and the
    /// time zone a tz database name, because both end up in DDL.
    pub fn validate(&self) -> Result<(), String> {
        // A password in a URL would be printed wherever the URL is (errors,
        // logs); it comes from CCTV_CLICKHOUSE_PASSWORD. The URL is not echoed.
        let replica_urls = self.cluster.iter().flat_map(|cluster| {
            cluster
                .shards
                .iter()
                .flat_map(|shard| shard.replicas.iter())
        });
        if std::iter::once(&self.url)
            .chain(replica_urls)
            .any(|url| has_credentials(url))
        {
            return Err(
                "a clickhouse URL carries credentials (user:password@host); set CCTV_CLICKHOUSE_USER and CCTV_CLICKHOUSE_PASSWORD instead"
                    .into(),
            );
        }
        if !is_identifier(&self.database) {
            return Err(format!(
                "clickhouse.database {:?} is not a plain identifier",
                self.database
            ));
        }
        let tz_ok = !self.timezone.is_empty()
            && self.timezone.len() <= 64
            && self
                .timezone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !tz_ok {
            return Err(format!(
                "clickhouse.timezone {:?} is not a tz database name",
                self.timezone
            ));
        }
        let is_url = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !is_url(&self.url) {
            return Err(format!(
                "clickhouse.url {:?} must start with http:// or https://",
                self.url
            ));
        }
        if let Some(cluster) = &self.cluster {
            if !is_identifier(&cluster.name) {
                return Err(format!(
                    "clickhouse.cluster.name {:?} is not a plain identifier",
                    cluster.name
                ));
            }
            if cluster.shards.is_empty() {
                return Err("clickhouse.cluster needs at least one shard".into());
            }
            for (index, shard) in cluster.shards.iter().enumerate() {
                if shard.replicas.is_empty() {
                    return Err(format!("clickhouse.cluster shard {index} has no replica"));
                }
                if let Some(bad) = shard.replicas.iter().find(|url| !is_url(url)) {
                    return Err(format!(
                        "clickhouse.cluster shard {index}: replica {bad:?} must start with http:// or https://"
                    ));
                }
            }
        }
        // A CA file means TLS: a plain-text URL beside it would send the
        // password and the rows unencrypted, so it is refused, not used.
        if let Some(ca) = &self.tls_ca_file {
            let plain = std::iter::once(&self.url)
                .chain(self.cluster.iter().flat_map(|cluster| {
                    cluster
                        .shards
                        .iter()
                        .flat_map(|shard| shard.replicas.iter())
                }))
                .find(|url| !url.starts_with("https://"));
            if let Some(plain) = plain {
                return Err(format!(
                    "clickhouse.tls_ca_file {} is set but {plain:?} is not an https:// URL",
                    ca.display()
                ));
            }
        }
        Ok(())
    }
}

/// Whether `url` has a user-info part (`scheme://user[:password]@host`).
fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.contains('@')
}

/// `[A-Za-z_][A-Za-z0-9_]{0,63}`.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_and_timezone_must_be_safe_for_ddl() {
        assert!(ClickHouseConfig::default().validate().is_ok());
        let bad_db = ClickHouseConfig {
            database: "cctv; DROP TABLE x".into(),
            ..ClickHouseConfig::default()
        };
        assert!(bad_db.validate().is_err());
        let bad_tz = ClickHouseConfig {
            timezone: "Asia/Almaty')".into(),
            ..ClickHouseConfig::default()
        };
        assert!(bad_tz.validate().is_err());
        assert!(is_identifier("t_abc_1"));
        assert!(!is_identifier("1abc"));
        assert!(!is_identifier(""));
    }

    #[test]
    fn a_cluster_names_its_shards_and_replicas() {
        let config: ClickHouseConfig = toml::from_str(
            "url = \"http://ch1:8123\"\n\
             [cluster]\nname = \"cctv\"\n\
             [[cluster.shards]]\nreplicas = [\"http://ch1:8123\", \"http://ch2:8123\"]\n\
             [[cluster.shards]]\nreplicas = [\"http://ch3:8123\", \"http://ch4:8123\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.validate().is_ok());
        let cluster = config
            .cluster
            .as_ref()
            .unwrap_or_else(|| panic!("a cluster"));
        assert_eq!(cluster.shards.len(), 2);
        assert_eq!(cluster.shard_of(0), 0);
        assert_eq!(cluster.shard_of(5), 1);
        let mut no_replica = config.clone();
        if let Some(cluster) = no_replica.cluster.as_mut() {
            cluster.shards[1].replicas.clear();
        }
        assert!(no_replica.validate().is_err());
        let mut bad_name = config;
        if let Some(cluster) = bad_name.cluster.as_mut() {
            cluster.name = "a b".into();
        }
        assert!(bad_name.validate().is_err());
    }

    #[test]
    fn env_overrides_apply_and_the_password_is_env_only() {
        let mut config = ClickHouseConfig::default();
        config.apply_env(|name| match name {
            "CCTV_CLICKHOUSE_URL" => Some("http://ch:8123".into()),
            "CCTV_CLICKHOUSE_PASSWORD" => Some("pw".into()),
            _ => None,
        });
        assert_eq!(config.url, "http://ch:8123");
        assert_eq!(config.password.as_deref(), Some("pw"));
        assert!(config.validate().is_ok());
        config.apply_env(|name| match name {
            "CCTV_CLICKHOUSE_TLS_CA" => Some("/etc/cctv/ca.pem".into()),
            _ => None,
        });
        assert_eq!(config.tls_ca_file, Some(PathBuf::from("/etc/cctv/ca.pem")));
        // A CA beside a plain-text URL is refused, never silently unused.
        assert!(config
            .validate()
            .is_err_and(|error| error.contains("not an https:// URL")));
        config.url = "https://ch:8443".into();
        assert!(config.validate().is_ok());
        // The password never shows: not in Debug, not from a URL.
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("\"pw\"") && shown.contains("<redacted>"),
            "{shown}"
        );
        config.url = "https://writer:s3cretPassword@ch:8443".into();
        let refused = config.validate().err().unwrap_or_default();
        assert!(refused.contains("carries credentials"), "{refused}");
        assert!(!refused.contains("s3cretPassword"), "{refused}");
        assert!(toml::from_str::<ClickHouseConfig>("password = \"x\"").is_err());
    }
}
