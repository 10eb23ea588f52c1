//! Runtime pieces every binary shares: structured logs, the Prometheus
//! recorder with `/metrics` and `/healthz` over HTTP, shutdown on signals, and
//! the crash tests' fault points (compiled only with `fault-injection`).

mod config;
mod fault;
mod health;
mod http;
mod signals;

pub use config::{read_config_file, LogFormat, TelemetryConfig};
pub use fault::{fault_fails, fault_point, FAULT_AFTER_ENV, FAULT_ENV, FAULT_INJECTION_COMPILED};
pub use health::Health;
pub use http::{install_metrics, serve};
pub use signals::shutdown_on_signals;

/// Sets up `tracing` once for the process: JSON or text lines on stderr,
/// filtered by `CCTV_LOG` (else `RUST_LOG`, else `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("CCTV_LOG")
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests calling several `main`-like paths) keeps the first.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
