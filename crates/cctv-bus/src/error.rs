//! Errors of the bus crate.

/// A NATS or JetStream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The connection could not be made.
    #[error("failed to connect to NATS at {url}: {message}")]
    Connect {
        /// Server URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The server refused the credentials.
    #[error("NATS at {url} refused the credentials: {message}")]
    Unauthorized {
        /// Server URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// TLS to the server failed in a way retrying does not fix: the server's
    /// certificate is expired, not from the configured CA or not for the
    /// host name, the server wants a client certificate or refused ours, or
    /// it does not speak TLS.
    #[error("TLS to NATS at {url} failed: {message}")]
    Tls {
        /// Server URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The settings are unusable (missing file, bad combination).
    #[error("invalid NATS settings: {0}")]
    Settings(String),
    /// A stream exists with a configuration that conflicts with ours.
    #[error("stream {stream} exists with subjects {found:?}, expected {expected:?}")]
    StreamMismatch {
        /// Stream name.
        stream: String,
        /// Subjects found on the server.
        found: Vec<String>,
        /// Subjects we need.
        expected: Vec<String>,
    },
    /// A JetStream API call failed.
    #[error("jetstream {operation} failed: {message}")]
    JetStream {
        /// What was being done.
        operation: &'static str,
        /// Cause.
        message: String,
    },
    /// Shared state holds a value that cannot be used (e.g. a partition count).
    #[error("{0}")]
    Invalid(String),
}

impl BusError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BusError::Connect { .. } | BusError::JetStream { .. })
    }

    /// Wraps any JetStream error with what was being done.
    pub fn jetstream(operation: &'static str, error: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            operation,
            message: error.to_string(),
        }
    }
}
