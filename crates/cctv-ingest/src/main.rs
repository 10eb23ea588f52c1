//! `cctv-ingest`: raw vendor messages from `CCTV_RAW` to canonical events.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// mimalloc instead of glibc's malloc: the hot path allocates and frees many
/// small buffers per message, and glibc consolidates its fast bins on every
/// free of a large (>= 64 KiB) buffer such as a gateway batch (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reads raw camera messages from NATS and publishes canonical offence events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (defaults apply without one).
    #[arg(long, env = "CCTV_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // No transparent huge pages for this process: with THP `always` each
    // first touch of the allocator's arenas faults in and zeroes 2 MiB, so
    // the resident set grows in 2 MiB steps with what was ever in flight
    // (hostile input: 82 MiB peak without THP, 109-136 MiB with it, for the
    // same messages). The flag is the process's, set before the work starts;
    // where the kernel refuses it, THP stays as the system has it.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let args = Args::parse();
    let config = cctv_ingest::IngestConfig::load(args.config.as_deref())
        .context("failed to load configuration")?;
    cctv_runtime::init_tracing(config.telemetry.log_format);
    let shutdown = cctv_runtime::shutdown_on_signals();
    cctv_ingest::run(config, shutdown, cctv_ingest::IngestStats::default())
        .await
        .context("ingest service failed")
}
