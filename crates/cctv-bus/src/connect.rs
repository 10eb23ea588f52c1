//! Connecting to NATS with the configured auth and TLS.
//!
//! Server errors the client sees after connecting (a `Permissions Violation`
//! for a publish or subscription the server's permissions refuse, a slow
//! consumer) are logged: a refused publish is otherwise silent, and a refused
//! JetStream API request only shows as a timeout.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{BusError, NatsConfig};

/// Connections (first and every reconnect) of this process's clients.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// How many times this process's clients connected, the first time and every
/// reconnect. A pull consumer's stream can stay silent after a reconnect (its
/// pull requests went with the old connection): a reader that sees this
/// number change starts a new one.
pub fn connection_generation() -> u64 {
    CONNECTIONS.load(Ordering::Relaxed)
}

/// Connects once, with the configured auth, TLS and timeouts. The returned
/// client reconnects by itself after a lost connection.
pub async fn connect(
    config: &NatsConfig,
    connection_name: &str,
) -> Result<async_nats::Client, BusError> {
    config.validate().map_err(BusError::Settings)?;
    let mut options = async_nats::ConnectOptions::new()
        .name(connection_name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        // Keep publishing through short reconnects; the client buffers up to
        // this many bytes before publishes fail.
        .client_capacity(8192)
        .subscription_capacity(65_536)
        .custom_inbox_prefix(config.effective_inbox_prefix())
        .event_callback(|event| async move { log_event(&event) });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &config.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await.map_err(|error| {
            BusError::Settings(format!(
                "cannot read creds file {}: {error}",
                path.display()
            ))
        })?;
    }
    if let Some(tls) = tls_client_config(config)? {
        // TLS is required whenever it is configured: the client upgrades
        // every connection whatever the server's INFO says, so a server
        // without TLS fails the handshake instead of being used in plain text.
        options = options.tls_client_config(tls).require_tls(true);
    }
    // A comma-separated list names several servers of a cluster: the client
    // connects to any that answers and fails over between them (it also
    // learns the cluster's other servers from the one it reaches).
    let servers: Vec<&str> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    options.connect(servers).await.map_err(|error| {
        // A rejected certificate does not get better by retrying either.
        if let Some(message) = cctv_tls::describe_failure(&error) {
            return BusError::Tls {
                url: config.url.clone(),
                message,
            };
        }
        connect_error(config, error)
    })
}

/// The client's TLS settings when TLS is configured (a CA file, a client
/// certificate, `tls_required`, or a `tls://` URL), read from the files now
/// so a bad file stops the caller at once, naming the setting and the path.
fn tls_client_config(config: &NatsConfig) -> Result<Option<cctv_tls::ClientConfig>, BusError> {
    let tls_url = config
        .url
        .split(',')
        .any(|url| url.trim().starts_with("tls://"));
    let wanted = config.tls_ca_file.is_some()
        || config.tls_cert_file.is_some()
        || config.tls_required
        || tls_url;
    if !wanted {
        return Ok(None);
    }
    let identity = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert_file), Some(key_file)) => Some(cctv_tls::ClientIdentity {
            cert_file,
            key_file,
        }),
        _ => None,
    };
    cctv_tls::client_config("nats", config.tls_ca_file.as_deref(), identity)
        .map(Some)
        .map_err(|error| BusError::Settings(error.to_string()))
}

/// Classifies a connect error that is not a TLS failure.
fn connect_error(config: &NatsConfig, error: async_nats::ConnectError) -> BusError {
    match error.kind() {
        // Wrong credentials do not get better by retrying.
        async_nats::ConnectErrorKind::AuthorizationViolation
        | async_nats::ConnectErrorKind::Authentication => BusError::Unauthorized {
            url: config.url.clone(),
            message: error.to_string(),
        },
        _ => BusError::Connect {
            url: config.url.clone(),
            message: error.to_string(),
        },
    }
}

/// Logs what the client reports after connecting. Server errors are warnings:
/// a permissions violation means the server's permissions and our calls
/// disagree (a misconfiguration) or something tried what it must not.
fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::ServerError(error) => {
            tracing::warn!(%error, "NATS server reported an error");
        }
        async_nats::Event::ClientError(error) => {
            tracing::warn!(%error, "NATS client error");
        }
        async_nats::Event::Disconnected => tracing::warn!("NATS connection lost"),
        async_nats::Event::Connected => {
            CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            tracing::info!("NATS connected");
        }
        other => tracing::debug!(event = %other, "NATS connection event"),
    }
}

/// Connects, retrying with backoff (up to 5 s between attempts) while the
/// server is unreachable. Returns `Ok(None)` when `shutdown` comes first;
/// settings errors fail at once.
pub async fn connect_with_retry(
    config: &NatsConfig,
    connection_name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<async_nats::Client>, BusError> {
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match connect(config, connection_name).await {
            Ok(client) => return Ok(Some(client)),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "NATS not reachable yet; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}
