//! `cctvctl simulate`: runs the simulator of `cctv-simulate` against the
//! configured NATS and raw stream, then prints what the pipeline must count
//! in one line (`cctvctl totals --expect` prints the table once counted).

use std::collections::BTreeSet;

use cctv_simulate::{SimulateArgs, SimulateRun};

use crate::CliConfig;

/// Publishes a simulated fleet's messages (see [`SimulateArgs`]) and prints
/// how many offences in how many regions and types the pipeline must end up
/// with, unless `--quiet`.
///
/// # Errors
/// Those of [`cctv_simulate::run_simulate`].
pub async fn run_simulate(config: &CliConfig, args: &SimulateArgs) -> anyhow::Result<SimulateRun> {
    let run = cctv_simulate::run_simulate(&config.nats, &config.streams.raw.name, args).await?;
    if !args.quiet {
        let totals = &run.expectation.totals;
        let regions: BTreeSet<&str> = totals.iter().map(|row| row.region.as_str()).collect();
        let types: BTreeSet<&str> = totals.iter().map(|row| row.offence_type.as_str()).collect();
        println!(
            "expected: {} offences in {} regions x {} offence types",
            run.expectation.count,
            regions.len(),
            types.len()
        );
    }
    Ok(run)
}
