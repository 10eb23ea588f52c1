//! The error type of the test kit.

/// Everything that can go wrong while starting, stopping or querying a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The server binary was found neither via its env override, `PATH`, `/usr/sbin`
    /// nor `/usr/bin`.
    #[error(
        "server binary `{name}` not found (looked at its env override, PATH, /usr/sbin, /usr/bin){hint}"
    )]
    BinaryNotFound {
        /// Binary name or the path given in the env override.
        name: String,
        /// Where else was looked and how to install it (empty, or starting with `; `).
        hint: String,
    },
    /// The server binary is older than the oldest release the project supports.
    #[error("{binary} is nats-server {found}, older than the supported minimum {minimum}; {hint}")]
    TooOld {
        /// The binary that was run.
        binary: String,
        /// The version it reported, e.g. "2.9.10".
        found: String,
        /// The oldest supported version, e.g. "2.10.0".
        minimum: String,
        /// How to install a supported release (`scripts/install-nats.sh`).
        hint: String,
    },
    /// The server binary's `--version` output did not name a version.
    #[error("{binary} --version did not report a nats-server version: {output}")]
    UnknownVersion {
        /// The binary that was run.
        binary: String,
        /// What it printed (stdout and stderr).
        output: String,
    },
    /// An operating-system level operation failed.
    #[error("failed to {what}")]
    Io {
        /// What was being attempted, e.g. "create temp dir".
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not become ready before its deadline.
    #[error("{server} not ready after {waited_ms} ms; log tail:\n{log_tail}")]
    NotReady {
        /// Which server, e.g. "nats-server".
        server: String,
        /// How long readiness was polled.
        waited_ms: u64,
        /// The last lines of the server's log, stdout and stderr.
        log_tail: String,
    },
    /// The server process exited while it was expected to start.
    #[error("{server} exited during startup with {status}; log tail:\n{log_tail}")]
    Exited {
        /// Which server, e.g. "clickhouse-server".
        server: String,
        /// The exit status as text.
        status: String,
        /// The last lines of the server's log, stdout and stderr.
        log_tail: String,
    },
    /// A helper tool (`openssl`) failed.
    #[error("{command} failed: {output}")]
    Tool {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// ClickHouse answered a query with a non-200 status.
    #[error("clickhouse query failed with http status {status}: {body}")]
    Query {
        /// HTTP status code.
        status: u16,
        /// Response body, usually a ClickHouse exception text.
        body: String,
    },
    /// A condition polled by [`crate::wait_until`] did not hold before the deadline.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long it was polled.
        waited_ms: u64,
    },
    /// No free port could be found that was not handed out before.
    #[error("no free port found after {attempts} attempts")]
    NoFreePort {
        /// How many ports were tried.
        attempts: u32,
    },
}

impl TestkitError {
    /// Builds an [`TestkitError::Io`] with a description of the failed action.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the server exited because one of its ports was already taken, which
    /// makes a retry with other ports (or after a short wait) worthwhile.
    pub(crate) fn is_port_conflict(&self) -> bool {
        match self {
            Self::Exited { log_tail, .. } => log_tail
                .to_ascii_lowercase()
                .contains("address already in use"),
            _ => false,
        }
    }
}
