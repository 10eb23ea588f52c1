//! Errors of the TLS settings: a file that cannot be used.

use std::path::PathBuf;

/// A configured TLS file cannot be used. Never transient: the file has to be
/// fixed, so a service stops at start instead of retrying.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {setting} {}: {source}", path.display())]
    Read {
        /// The setting that names the file (e.g. `nats.tls_ca_file`).
        setting: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds nothing usable of what the setting needs.
    #[error("{setting} {}: {problem}", path.display())]
    Invalid {
        /// The setting that names the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The system's trusted roots could not be loaded (no CA file configured).
    #[error("no CA file configured and the system's trusted roots cannot be loaded: {0}")]
    SystemRoots(String),
}

impl TlsError {
    /// Whether retrying later may succeed: never, the file must be fixed.
    pub fn is_transient(&self) -> bool {
        false
    }
}
