//! `cctvctl`: parses flags, loads the configuration, sets up text logs on
//! stderr and runs one subcommand of the `cctv_cli` library.

use std::path::PathBuf;
use std::process::ExitCode;

use cctv_cli::{
    AuditArgs, CliConfig, DlqCommand, ReportArgs, SetupArgs, StatusArgs, TopArgs, TotalsArgs,
    TrendArgs,
};
use cctv_simulate::SimulateArgs;
use clap::{Parser, Subcommand};

/// Operator and analyst command line of the CCTV offence pipeline.
#[derive(Debug, Parser)]
#[command(name = "cctvctl", version, about)]
struct Cli {
    /// Configuration file (TOML with [nats], [streams], [clickhouse]).
    #[arg(long, global = true, env = "CCTV_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or verify the NATS streams and lease bucket (partition count) and
    /// migrate the ClickHouse schema.
    Setup(SetupArgs),
    /// Publish a simulated camera fleet's messages in any vendor format, alone
    /// or in gateway batches.
    Simulate(SimulateArgs),
    /// Print counts by one or two dimensions (region x offence type by
    /// default) as a compact table, CSV or JSON, or check region x type
    /// totals against a simulation.
    Totals(TotalsArgs),
    /// The cameras, places or plates with the most offences in a range.
    Top(TopArgs),
    /// Offences day by day, beside the previous period of equal length.
    Trend(TrendArgs),
    /// Write one self-contained HTML report (map of the regions, offence
    /// types, daily trend, top cameras, freshness) for a range of days.
    Report(ReportArgs),
    /// Inspect dead letters without consuming them.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Show partitions, their owners, lease ages and backlog per partition.
    ///
    /// Exit code 0 when every partition has an owner, 1 when some has none,
    /// 2 on usage or connection errors.
    Status(StatusArgs),
    /// Compare the events stream with ClickHouse, by event id.
    ///
    /// Reports, per stream: events in the stream with no row in ClickHouse
    /// (by stream sequence ranges), event ids stored more than once, and rows
    /// of no event of the stream; then every rolled-up day of the rollups
    /// behind `offence_totals` against its rows. Exit code 0 when clean, 1 on
    /// any difference, 2 on usage or connection errors. `--repair` first
    /// counts every rolled-up day that differs from its rows into the rollups
    /// again (the rows are the truth; a rollup is never lowered).
    Audit(AuditArgs),
}

/// Log filter of an interactive tool when neither `CCTV_LOG` nor `RUST_LOG`
/// is set: warnings only, since results go to stdout.
const DEFAULT_LOG_FILTER: &str = "warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("CCTV_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
        // Still single-threaded here: the runtime is built below.
        std::env::set_var("CCTV_LOG", DEFAULT_LOG_FILTER);
    }
    cctv_runtime::init_tracing(cctv_runtime::LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = CliConfig::load(cli.config.as_deref(), |name| std::env::var(name).ok())?;
    match &cli.command {
        Command::Setup(args) => cctv_cli::run_setup(&config, args).await?,
        Command::Simulate(args) => {
            cctv_cli::run_simulate(&config, args).await?;
        }
        Command::Totals(args) => return cctv_cli::run_totals(&config, args).await,
        Command::Top(args) => cctv_cli::run_top(&config, args).await?,
        Command::Trend(args) => cctv_cli::run_trend(&config, args).await?,
        Command::Report(args) => cctv_cli::run_report(&config, args).await?,
        Command::Dlq { command } => cctv_cli::run_dlq(&config, command).await?,
        Command::Status(args) => return cctv_cli::run_status(&config, args).await,
        Command::Audit(args) => return cctv_cli::run_audit(&config, args).await,
    }
    Ok(ExitCode::SUCCESS)
}
