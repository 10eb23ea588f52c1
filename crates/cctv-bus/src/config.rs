//! NATS settings: where to connect, how to authenticate, and the streams.
//!
//! Secrets never come from files of ours: passwords, tokens and nkey seeds are
//! read from the environment only (see [`NatsConfig::apply_env`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default NATS URL of the local stack (contract section 1).
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:14222";

/// How to reach and authenticate to NATS. `Debug` shows whether a secret is
/// set, never the secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated. Env: `CCTV_NATS_URL`.
    pub url: String,
    /// User name for user/password auth. Env: `CCTV_NATS_USER`. The password
    /// comes only from `CCTV_NATS_PASSWORD`.
    pub user: Option<String>,
    /// Credentials file (JWT + nkey seed). Env: `CCTV_NATS_CREDS`.
    pub creds_file: Option<PathBuf>,
    /// CA certificate to verify the server. Env: `CCTV_NATS_TLS_CA`.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS. Env: `CCTV_NATS_TLS_CERT`.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key for mutual TLS. Env: `CCTV_NATS_TLS_KEY`.
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even without a CA file.
    pub tls_required: bool,
    /// Prefix of this client's reply subjects (JetStream API answers, publish
    /// acks and pull-consumer deliveries arrive on `<prefix>.<id>`). Default:
    /// `_INBOX_<user>` with user/password auth, so a server can give every user
    /// a private inbox (`deploy/nats/auth.conf`); `_INBOX` otherwise. Env:
    /// `CCTV_NATS_INBOX_PREFIX`.
    pub inbox_prefix: Option<String>,
    /// Time allowed for one connection attempt.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for a JetStream API request or publish acknowledgement.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Password, from `CCTV_NATS_PASSWORD` only.
    #[serde(skip)]
    pub password: Option<String>,
    /// Token, from `CCTV_NATS_TOKEN` only.
    #[serde(skip)]
    pub token: Option<String>,
    /// Nkey seed, from `CCTV_NATS_NKEY_SEED` only.
    #[serde(skip)]
    pub nkey_seed: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_string(),
            user: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            inbox_prefix: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            password: None,
            token: None,
            nkey_seed: None,
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("nkey_seed", &secret(&self.nkey_seed))
            .finish()
    }
}

impl NatsConfig {
    /// Applies the documented environment overrides through `lookup` (pass
    /// `|name| std::env::var(name).ok()` in binaries).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.is_empty());
        if let Some(url) = non_empty("CCTV_NATS_URL") {
            self.url = url;
        }
        if let Some(user) = non_empty("CCTV_NATS_USER") {
            self.user = Some(user);
        }
        if let Some(path) = non_empty("CCTV_NATS_CREDS") {
            self.creds_file = Some(PathBuf::from(path));
        }
        if let Some(path) = non_empty("CCTV_NATS_TLS_CA") {
            self.tls_ca_file = Some(PathBuf::from(path));
        }
        if let Some(path) = non_empty("CCTV_NATS_TLS_CERT") {
            self.tls_cert_file = Some(PathBuf::from(path));
        }
        if let Some(path) = non_empty("CCTV_NATS_TLS_KEY") {
            self.tls_key_file = Some(PathBuf::from(path));
        }
        if let Some(prefix) = non_empty("CCTV_NATS_INBOX_PREFIX") {
            self.inbox_prefix = Some(prefix);
        }
        self.password = non_empty("CCTV_NATS_PASSWORD");
        self.token = non_empty("CCTV_NATS_TOKEN");
        self.nkey_seed = non_empty("CCTV_NATS_NKEY_SEED");
    }

    /// Checks combinations that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("nats.url is empty".into());
        }
        // A password in a URL would be printed wherever the URL is (errors,
        // logs); secrets come from their own variables. The URL is not echoed.
        if self.url.split(',').any(|url| has_credentials(url.trim())) {
            return Err(
                "nats.url carries credentials (user:password@host); set CCTV_NATS_USER and CCTV_NATS_PASSWORD (or CCTV_NATS_TOKEN) instead"
                    .into(),
            );
        }
        let methods = [
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
            self.nkey_seed.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|&&used| used).count() > 1 {
            return Err(
                "choose one NATS auth method: user/password, token, nkey seed or creds file".into(),
            );
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("NATS user and CCTV_NATS_PASSWORD must be set together".into());
        }
        if let Some(prefix) = &self.inbox_prefix {
            let valid = !prefix.is_empty()
                && prefix.split('.').all(|token| {
                    !token.is_empty()
                        && token != "*"
                        && token != ">"
                        && !token.contains(char::is_whitespace)
                });
            if !valid {
                return Err(format!(
                    "nats.inbox_prefix {prefix:?} is not a subject prefix"
                ));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("nats.tls_cert_file and nats.tls_key_file must be set together".into());
        }
        Ok(())
    }
}

impl NatsConfig {
    /// The prefix of this client's reply subjects: `inbox_prefix` if set, else
    /// `_INBOX_<user>` when the user name is one subject token, else `_INBOX`.
    pub fn effective_inbox_prefix(&self) -> String {
        if let Some(prefix) = &self.inbox_prefix {
            return prefix.clone();
        }
        match &self.user {
            Some(user) if crate::subjects::is_valid_gateway_id(user) => {
                format!("_INBOX_{user}")
            }
            _ => "_INBOX".to_string(),
        }
    }
}

/// Whether `url` has a user-info part (`scheme://user[:password]@host`).
fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.contains('@')
}

/// Settings of one stream.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// How long messages are kept.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Size cap in bytes; -1 for none.
    pub max_bytes: i64,
    /// Replicas (1 on a single server, 3 on a cluster).
    pub replicas: usize,
}

/// The three streams of the contract.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Raw vendor messages, `cctv.raw.>`.
    pub raw: StreamSettings,
    /// Canonical event batches, `cctv.events.p<k>`. Its duplicate window is
    /// only a first filter (2 min): the aggregator's seen-set is the dedup
    /// horizon.
    pub events: StreamSettings,
    /// Dead letters, `cctv.dlq.>`.
    pub dlq: StreamSettings,
    /// The KV bucket of partition count, members and leases.
    pub leases: crate::LeaseBucketSettings,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self {
            raw: StreamSettings {
                name: "CCTV_RAW".into(),
                max_age: hours(72),
                duplicate_window: Duration::from_secs(120),
                max_bytes: -1,
                replicas: 1,
            },
            events: StreamSettings {
                name: "CCTV_EVENTS".into(),
                max_age: hours(24 * 7),
                duplicate_window: Duration::from_secs(120),
                max_bytes: -1,
                replicas: 1,
            },
            dlq: StreamSettings {
                name: "CCTV_DLQ".into(),
                max_age: hours(24 * 30),
                duplicate_window: Duration::from_secs(120),
                max_bytes: -1,
                replicas: 1,
            },
            leases: crate::LeaseBucketSettings::default(),
        }
    }
}

impl StreamsConfig {
    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), String> {
        for settings in [&self.raw, &self.events, &self.dlq] {
            if settings.name.is_empty() || settings.name.contains(['.', ' ', '*', '>']) {
                return Err(format!("stream name {:?} is not valid", settings.name));
            }
            if settings.duplicate_window > settings.max_age {
                return Err(format!(
                    "stream {}: duplicate_window exceeds max_age",
                    settings.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_secrets_come_from_the_environment() {
        let mut config = NatsConfig::default();
        config.apply_env(|name| match name {
            "CCTV_NATS_URL" => Some("nats://10.0.0.1:4222".into()),
            "CCTV_NATS_USER" => Some("ingest".into()),
            "CCTV_NATS_PASSWORD" => Some("s3cret".into()),
            _ => None,
        });
        assert_eq!(config.url, "nats://10.0.0.1:4222");
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn each_user_gets_a_private_inbox_unless_one_is_configured() {
        let mut config = NatsConfig::default();
        assert_eq!(config.effective_inbox_prefix(), "_INBOX");
        config.user = Some("cctv_ingest".into());
        assert_eq!(config.effective_inbox_prefix(), "_INBOX_cctv_ingest");
        config.user = Some("not a token".into());
        assert_eq!(config.effective_inbox_prefix(), "_INBOX");
        config.apply_env(|name| match name {
            "CCTV_NATS_INBOX_PREFIX" => Some("_INBOX.gw7".into()),
            _ => None,
        });
        assert_eq!(config.effective_inbox_prefix(), "_INBOX.gw7");
        for bad in ["", "_INBOX.>", "a..b", "in box"] {
            let config = NatsConfig {
                inbox_prefix: Some(bad.into()),
                ..NatsConfig::default()
            };
            assert!(config.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn conflicting_auth_is_refused() {
        let mut config = NatsConfig::default();
        config.apply_env(|name| match name {
            "CCTV_NATS_TOKEN" => Some("t".into()),
            "CCTV_NATS_NKEY_SEED" => Some("SU...".into()),
            _ => None,
        });
        assert!(config.validate().is_err());
        let user_only = NatsConfig {
            user: Some("u".into()),
            ..NatsConfig::default()
        };
        assert!(user_only.validate().is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_urls() {
        let mut config = NatsConfig::default();
        config.apply_env(|name| match name {
            "CCTV_NATS_USER" => Some("cctv_ingest".into()),
            "CCTV_NATS_PASSWORD" => Some("s3cretPassword".into()),
            _ => None,
        });
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cretPassword"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let in_url = NatsConfig {
            url: "nats://127.0.0.1:4222,nats://u:s3cretPassword@10.0.0.2:4222".into(),
            ..NatsConfig::default()
        };
        let refused = in_url.validate().err().unwrap_or_default();
        assert!(refused.contains("carries credentials"), "{refused}");
        assert!(!refused.contains("s3cretPassword"), "{refused}");
        assert!(!has_credentials("tls://nats.example.kz:4222/path@x"));
    }

    #[test]
    fn secrets_cannot_be_set_from_a_file() {
        let parsed: Result<NatsConfig, _> = toml::from_str("password = \"x\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn stream_defaults_are_valid_and_the_event_window_is_short() {
        let streams = StreamsConfig::default();
        assert!(streams.validate().is_ok());
        assert_eq!(streams.events.duplicate_window, Duration::from_secs(120));
        let bad = StreamsConfig {
            raw: StreamSettings {
                name: "A.B".into(),
                ..streams.raw.clone()
            },
            ..streams
        };
        assert!(bad.validate().is_err());
    }
}
