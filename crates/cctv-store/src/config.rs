//! ClickHouse connection settings.

use std::time::Duration;

use serde::Deserialize;

/// Default ClickHouse HTTP URL of the local stack (contract section 1).
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:18123";

/// How to reach ClickHouse and where the tables live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL. Env: `CCTV_CLICKHOUSE_URL`.
    pub url: String,
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
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_CLICKHOUSE_URL.to_string(),
            database: "cctv".to_string(),
            user: "default".to_string(),
            timezone: "Asia/Almaty".to_string(),
            compression: true,
            insert_timeout: Duration::from_secs(60),
            password: None,
        }
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
        if let Some(password) = non_empty("CCTV_CLICKHOUSE_PASSWORD") {
            self.password = Some(password);
        }
    }

    /// Checks the settings: the database must be a plain identifier and the
    /// time zone a tz database name, because both end up in DDL.
    pub fn validate(&self) -> Result<(), String> {
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
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "clickhouse.url {:?} must start with http:// or https://",
                self.url
            ));
        }
        Ok(())
    }
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
    fn env_overrides_apply_and_the_password_is_env_only() {
        let mut config = ClickHouseConfig::default();
        config.apply_env(|name| match name {
            "CCTV_CLICKHOUSE_URL" => Some("http://ch:8123".into()),
            "CCTV_CLICKHOUSE_PASSWORD" => Some("pw".into()),
            _ => None,
        });
        assert_eq!(config.url, "http://ch:8123");
        assert_eq!(config.password.as_deref(), Some("pw"));
        assert!(toml::from_str::<ClickHouseConfig>("password = \"x\"").is_err());
    }
}
