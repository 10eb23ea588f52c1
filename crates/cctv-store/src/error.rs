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

/// Reads `Code: 60` from a ClickHouse error text; a text that is only a
/// number is the code itself (the client's stand-in for an error body it
/// could not read, from the `X-ClickHouse-Exception-Code` header).
fn parse_code(message: &str) -> Option<u32> {
    if !message.is_empty() && message.bytes().all(|byte| byte.is_ascii_digit()) {
        return message.parse().ok();
    }
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether the client gave up reading an answer, so that nothing of the
/// server's reason is known: it stands in a 5xx status line ("500 Internal
/// Server Error") for an error body the connection lost, and names a result
/// whose header never arrived. Whatever failed, the request may be repeated
/// (clickhouse 0.15, `response.rs` and `cursors/row.rs`); treated as
/// permanent, such an answer (a connection lost while ClickHouse goes
/// down) would end an aggregator.
fn body_unread(message: &str) -> bool {
    let status_line = message.len() >= 4
        && message.as_bytes()[0] == b'5'
        && message.as_bytes()[..3].iter().all(u8::is_ascii_digit)
        && message.as_bytes()[3] == b' '
        && !message.contains("Code: ");
    status_line
        || message == "Could not read columns header"
        || message == "Expected at least one column in the header"
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
        // The client's stand-in when the body was lost: the header's code.
        assert_eq!(parse_code("210"), Some(210));
        assert_eq!(parse_code(""), None);
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
            "503 Service Unavailable",
            "Could not read columns header",
            "Expected at least one column in the header",
        ] {
            let error = StoreError::from_clickhouse("insert", Error::BadResponse(message.into()));
            assert!(error.is_transient(), "{message}: {error:?}");
        }
        // The code header alone: classified by the code.
        let timeout = StoreError::from_clickhouse("insert", Error::BadResponse("159".into()));
        assert!(timeout.is_transient(), "{timeout:?}");
        let unknown_table = StoreError::from_clickhouse("insert", Error::BadResponse("60".into()));
        assert!(!unknown_table.is_transient(), "{unknown_table:?}");
        // A server's own text with a permanent code stays permanent, and a
        // refusal without a body too.
        for message in [
            "Code: 62, e.displayText() = DB::Exception: Syntax error",
            "500 Internal Server Error: Code: 60, e.displayText() = DB::Exception: Table x doesn't exist",
            "403 Forbidden",
        ] {
            let error = StoreError::from_clickhouse("insert", Error::BadResponse(message.into()));
            assert!(!error.is_transient(), "{message}: {error:?}");
        }
    }
}
