//! `cctvctl simulate`: runs the simulator of `cctv-simulate` against the
//! configured NATS and raw stream, then prints the expected totals table.

use cctv_event::Regions;
use cctv_simulate::{SimulateArgs, SimulateRun};

use anyhow::Context as _;

use crate::{render_totals, CliConfig, OutputFormat};

/// Publishes a simulated fleet's messages (see [`SimulateArgs`]) and prints
/// the totals the pipeline must end up with, unless `--quiet`.
///
/// # Errors
/// Those of [`cctv_simulate::run_simulate`].
pub async fn run_simulate(config: &CliConfig, args: &SimulateArgs) -> anyhow::Result<SimulateRun> {
    let run = cctv_simulate::run_simulate(&config.nats, &config.streams.raw.name, args).await?;
    if !args.quiet {
        let regions = Regions::builtin().context("failed to load the builtin regions")?;
        println!("expected totals ({} events):", run.expectation.count);
        print!(
            "{}",
            render_totals(&run.expectation.totals, &regions, OutputFormat::Table)
        );
    }
    Ok(run)
}
