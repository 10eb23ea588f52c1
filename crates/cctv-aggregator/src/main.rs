//! `cctv-aggregator`: canonical events from `CCTV_EVENTS` into ClickHouse.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes canonical offence events from NATS into ClickHouse, exactly once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (defaults apply without one).
    #[arg(long, env = "CCTV_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = cctv_aggregator::AggregatorConfig::load(args.config.as_deref())
        .context("failed to load configuration")?;
    cctv_runtime::init_tracing(config.telemetry.log_format);
    let shutdown = cctv_runtime::shutdown_on_signals();
    cctv_aggregator::run(
        config,
        shutdown,
        cctv_aggregator::AggregatorStats::default(),
    )
    .await
    .context("aggregator failed")
}
