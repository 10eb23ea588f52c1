//! Errors that stop the aggregator.

/// Why the aggregator could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// NATS or JetStream failed in a way retrying did not fix.
    #[error(transparent)]
    Bus(#[from] cctv_bus::BusError),
    /// ClickHouse failed with an error that is not transient.
    #[error(transparent)]
    Store(#[from] cctv_store::StoreError),
}
