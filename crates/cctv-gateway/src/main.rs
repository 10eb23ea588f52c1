//! `cctv-gateway`: camera HTTP pushes and MQTT messages onto NATS.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Accepts camera pushes (HTTP, MQTT), spools them on disk and publishes
/// them to NATS.
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
    let config = cctv_gateway::GatewayConfig::load(args.config.as_deref())
        .context("failed to load configuration")?;
    cctv_runtime::init_tracing(config.telemetry.log_format);
    let shutdown = cctv_runtime::shutdown_on_signals();
    cctv_gateway::run(config, shutdown)
        .await
        .context("gateway failed")
}
