//! Errors of the gateway.

/// Why the gateway could not start, or an operation of it failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The spool holds as many bytes as it may: the push is refused, not dropped.
    #[error("spool full: {pending_bytes} bytes wait for NATS, at most {max_bytes}")]
    SpoolFull {
        /// Bytes of records not yet acknowledged by NATS.
        pending_bytes: u64,
        /// The configured bound.
        max_bytes: u64,
    },
    /// A spool file could not be read or written.
    #[error("spool {operation} failed on {path}: {source}")]
    SpoolIo {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spool's writer is gone (the gateway is stopping).
    #[error("spool closed")]
    SpoolClosed,
    /// A listener could not be set up (address in use, bad certificate).
    #[error("cannot serve {what}: {message}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// Cause.
        message: String,
    },
    /// The connection to the MQTT broker broke (a write or flush failed).
    #[error("mqtt connection failed: {message}")]
    MqttConnection {
        /// Cause.
        message: String,
    },
    /// NATS or JetStream failed.
    #[error(transparent)]
    Bus(#[from] cctv_bus::BusError),
}

impl GatewayError {
    /// Whether retrying the same operation later may succeed: a full spool
    /// drains as NATS acks, NATS comes back; bad settings and a broken disk
    /// do not heal.
    pub fn is_transient(&self) -> bool {
        match self {
            GatewayError::SpoolFull { .. } | GatewayError::MqttConnection { .. } => true,
            GatewayError::Bus(error) => error.is_transient(),
            GatewayError::Config(_)
            | GatewayError::SpoolIo { .. }
            | GatewayError::SpoolClosed
            | GatewayError::Listen { .. } => false,
        }
    }

    /// A [`GatewayError::SpoolIo`] of `operation` on `path`.
    pub(crate) fn spool_io(
        operation: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        GatewayError::SpoolIo {
            operation,
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spool_is_transient_a_broken_one_is_not() {
        let full = GatewayError::SpoolFull {
            pending_bytes: 10,
            max_bytes: 10,
        };
        assert!(full.is_transient());
        let broken = GatewayError::spool_io(
            "write",
            std::path::Path::new("/spool/1.seg"),
            std::io::Error::other("disk gone"),
        );
        assert!(!broken.is_transient());
        assert!(broken.to_string().contains("/spool/1.seg"), "{broken}");
        assert!(!GatewayError::Config("x".into()).is_transient());
    }
}
