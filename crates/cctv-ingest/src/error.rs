//! Errors that stop the ingest service.

/// Why the ingest service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reference data (taxonomy, regions, registry) could not be loaded.
    #[error("failed to load reference data: {0}")]
    Data(#[from] cctv_event::DataError),
    /// NATS or JetStream failed in a way that retrying did not fix.
    #[error(transparent)]
    Bus(#[from] cctv_bus::BusError),
}
