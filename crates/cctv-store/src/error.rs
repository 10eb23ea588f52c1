//! Errors of the store crate, classed as transient or not.

/// A ClickHouse operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The settings are unusable.
    #[error("invalid clickhouse settings: {0}")]
    Settings(String),
    /// The server could not be reached, or the request timed out.
    #[error("clickhouse unreachable during {operation}: {message}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// Cause.
        message: String,
    },
    /// Nothing listens at the server's address (connection refused): the
    /// server process is not running, so no query of it runs either.
    #[error("clickhouse refused the connection during {operation}: {message}")]
    Refused {
        /// What was being done.
        operation: &'static str,
        /// Cause.
        message: String,
    },
    /// TLS to the server failed in a way retrying does not fix: its
    /// certificate is expired, not from the configured CA or not for the
    /// host name, or it does not speak TLS.
    #[error("TLS to clickhouse failed during {operation}: {message}")]
    Tls {
        /// What was being done.
        operation: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The server answered with an error.
    #[error("clickhouse refused {operation}: {message}")]
    Server {
        /// What was being done.
        operation: &'static str,
        /// The server's message.
        message: String,
        /// The server's error code, when it could be read.
        code: Option<u32>,
    },
    /// The schema in the database is newer than this build knows.
    #[error("database schema version {found} is newer than this build's {known}")]
    SchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest version this build knows.
        known: u32,
    },
}

/// Server error codes that go away by themselves: memory and concurrency
/// limits, timeouts, network trouble, too many parts, readonly replicas, a
/// query cancelled (the server shutting down, or `KILL QUERY`), and the
/// replication ones (no ZooKeeper, too few live replicas, a previous quorum
/// insert not yet confirmed, a replica not in the quorum, an insert of
/// unknown status).
const TRANSIENT_CODES: [u32; 16] = [
    159, 164, 202, 209, 210, 225, 241, 242, 252, 285, 286, 289, 319, 394, 425, 999,
];

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } | StoreError::Refused { .. } => true,
            StoreError::Server { code, .. } => {
                code.is_some_and(|code| TRANSIENT_CODES.contains(&code))
            }
            StoreError::Settings(_) | StoreError::Tls { .. } | StoreError::SchemaTooNew { .. } => {
                false
            }
        }
    }

    pub(crate) fn from_clickhouse(
        operation: &'static str,
        error: clickhouse::error::Error,
    ) -> Self {
        use clickhouse::error::Error;
        if let Error::Network(cause) = &error {
            if let Some(message) = cctv_tls::describe_failure(cause.as_ref()) {
                return StoreError::Tls { operation, message };
            }
            if is_refused(cause.as_ref()) {
                return StoreError::Refused {
                    operation,
                    message: error.to_string(),
                };
            }
        }
        match error {
            Error::Network(_) | Error::TimedOut => StoreError::Unavailable {
                operation,
                message: error.to_string(),
            },
            Error::BadResponse(message) if body_unread(&message) => StoreError::Unavailable {
                operation,
                message: format!("ClickHouse answered {message}; the rest was not received"),
            },
            Error::BadResponse(message) => {
                let code = parse_code(&message);
                StoreError::Server {
                    operation,
                    message,
                    code,
                }
            }
            other => StoreError::Server {
                operation,
                message: other.to_string(),
                code: None,
            },
        }
    }
}

/// Whether a network error was a refused connection (some error in its
/// source chain is an `io::Error` of that kind).
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

/// Reads `Code: 60` from a ClickHouse error text.
fn parse_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether the client could not read the server's reason: it stands in a
/// bare status line ("500 Internal Server Error") for an error body it
/// lost, found empty or could not decode, when no exception-code header
/// came (18.16 sends none; current releases send one, and then the code
/// decides). Only 500, 502, 503 and 504 are taken for a passing failure
/// (a server going down, a proxy without its upstream); any other status,
/// or a body of text without a ClickHouse code (a proxy's error page), is
/// not. Treated as permanent, such an answer (a connection lost while
/// ClickHouse goes down) would end an aggregator (clickhouse 0.15,
/// `response.rs`).
fn body_unread(message: &str) -> bool {
    ["500 ", "502 ", "503 ", "504 "]
        .iter()
        .any(|status| message.starts_with(status))
        && !message.contains("Code: ")
        && !message.contains('\n')
        && message.len() <= 40
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_and_classified() {
        assert_eq!(
            parse_code("Code: 241, e.displayText() = DB::Exception: Memory limit"),
            Some(241)
        );
        assert_eq!(parse_code("no code here"), None);
        let transient = StoreError::Server {
            operation: "insert",
            message: String::new(),
            code: Some(241),
        };
        assert!(transient.is_transient());
        let permanent = StoreError::Server {
            operation: "insert",
            message: String::new(),
            code: Some(60),
        };
        assert!(!permanent.is_transient());
        assert!(StoreError::Unavailable {
            operation: "insert",
            message: String::new()
        }
        .is_transient());
    }

    #[test]
    fn an_answer_whose_body_was_lost_is_transient() {
        use clickhouse::error::Error;
        for message in [
            "500 Internal Server Error",
            "502 Bad Gateway",
            "503 Service Unavailable",
            "504 Gateway Timeout",
        ] {
            let error = StoreError::from_clickhouse("insert", Error::BadResponse(message.into()));
            assert!(error.is_transient(), "{message}: {error:?}");
        }
        // The exception-code header, as the client writes it: the code decides.
        let timeout = StoreError::from_clickhouse("insert", Error::BadResponse("Code: 159".into()));
        assert!(timeout.is_transient(), "{timeout:?}");
        let unknown_table =
            StoreError::from_clickhouse("insert", Error::BadResponse("Code: 60".into()));
        assert!(!unknown_table.is_transient(), "{unknown_table:?}");
        // A server's own text with a permanent code stays permanent; so do a
        // status that will not change on a retry and a proxy's own page.
        for message in [
            "Code: 62, e.displayText() = DB::Exception: Syntax error",
            "500 Internal Server Error: Code: 60, e.displayText() = DB::Exception: Table x doesn't exist",
            "501 Not Implemented",
            "505 HTTP Version Not Supported",
            "403 Forbidden",
            "<html><head><title>502 Bad Gateway</title></head></html>",
        ] {
            let error = StoreError::from_clickhouse("insert", Error::BadResponse(message.into()));
            assert!(!error.is_transient(), "{message}: {error:?}");
        }
    }
}
