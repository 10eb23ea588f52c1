//! Errors raised while loading reference data.

/// A reference data file could not be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// Path of the file.
        path: String,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The TOML could not be parsed.
    #[error("failed to parse {what}: {source}")]
    Toml {
        /// Which data set.
        what: &'static str,
        /// Parser error.
        source: toml::de::Error,
    },
    /// The CSV could not be parsed.
    #[error("failed to parse camera registry line {line}: {message}")]
    Csv {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The data parsed but breaks a rule (duplicate code, unknown reference).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which data set.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
}
