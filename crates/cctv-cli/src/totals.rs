//! `cctvctl totals`: counts by one or two dimensions (`--by`, region x
//! offence type by default) from ClickHouse as a compact pivot table, CSV
//! or JSON, with names in English, Russian or Kazakh; or the region x type
//! totals compared with (and waited for against) a simulation's expectation.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cctv_event::{Regions, Taxonomy, UNKNOWN_REGION};
use cctv_store::{Dimension, Store, TotalsFilter, TotalsRow};
use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cctv_simulate::{compare_totals, parse_day, CellDiff, Expectation};

use crate::{
    render_counts, render_totals, CliConfig, Counts, Lang, Names, OutputFormat, TableLayout,
};

/// Pause between polls of `--wait`.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Without a terminal, `--wait` prints its progress every this many polls.
const POLLS_PER_PROGRESS_LINE: u32 = 5;

/// Flags of `cctvctl totals`.
#[derive(Debug, Clone, clap::Args)]
pub struct TotalsArgs {
    /// One or two dimensions, comma-separated: day, week, month, region,
    /// type, family, category, camera, gateway, format. The first makes the
    /// lines of the table, the second its columns.
    #[arg(long, value_delimiter = ',', value_parser = parse_dimension, default_value = "region,type")]
    pub by: Vec<Dimension>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only events from gateways whose id starts with this.
    #[arg(long)]
    pub gateway_prefix: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Language of region and offence names.
    #[arg(long, value_enum, default_value = "en")]
    pub lang: Lang,
    /// Width of the table (default: `COLUMNS`, else 100).
    #[arg(long)]
    pub width: Option<usize>,
    /// Compare with the expectation written by `cctvctl simulate --expect-out`
    /// (filters by its gateway prefix); exit code 1 when they differ.
    #[arg(long, conflicts_with_all = ["from", "to", "regions", "offence_types", "gateway_prefix", "by"])]
    pub expect: Option<PathBuf>,
    /// With `--expect`: poll until the totals match or this time is up (`300s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration, requires = "expect")]
    pub wait: Option<Duration>,
}

/// Parses one `--by` name.
pub fn parse_dimension(text: &str) -> Result<Dimension, String> {
    let dimension = match text.trim().to_ascii_lowercase().as_str() {
        "day" => Dimension::Day,
        "week" => Dimension::Week,
        "month" => Dimension::Month,
        "region" => Dimension::Region,
        "type" | "offence_type" | "offence" => Dimension::OffenceType,
        "family" => Dimension::Family,
        "category" | "legal_category" => Dimension::LegalCategory,
        "camera" | "camera_id" => Dimension::Camera,
        "gateway" | "gateway_id" => Dimension::Gateway,
        "format" | "source_format" => Dimension::Format,
        other => {
            return Err(format!(
                "unknown dimension {other:?}: day, week, month, region, type, family, category, \
                 camera, gateway or format"
            ))
        }
    };
    Ok(dimension)
}

/// The time range, region and type flags shared by `totals`, `top`,
/// `trend` and `report`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// First detection day, `YYYY-MM-DD` (or `today`, `yesterday`), inclusive.
    #[arg(long, value_parser = parse_day)]
    pub from: Option<NaiveDate>,
    /// Last detection day, inclusive.
    #[arg(long, value_parser = parse_day)]
    pub to: Option<NaiveDate>,
    /// Region code (`KZ-75`, `KZ-ALA`, `75` or `unknown`); repeatable.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Canonical offence code (`traffic.speeding`); repeatable.
    #[arg(long = "type")]
    pub offence_types: Vec<String>,
}

impl FilterArgs {
    /// The store filter, region and type flags checked against the data.
    pub fn to_filter(&self, names: &Names) -> anyhow::Result<TotalsFilter> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                bail!("--from {from} is after --to {to}");
            }
        }
        Ok(TotalsFilter {
            from_day: self.from,
            to_day: self.to,
            regions: normalise_regions(&self.regions, names.regions())?,
            offence_types: check_offence_types(&self.offence_types, names.taxonomy())?,
            gateway_prefix: None,
        })
    }
}

/// Normalises region flags to stored codes (`KZ-ALA` -> `KZ-75`).
fn normalise_regions(codes: &[String], regions: &Regions) -> anyhow::Result<Vec<String>> {
    codes
        .iter()
        .map(|code| {
            if code.eq_ignore_ascii_case(UNKNOWN_REGION) {
                return Ok(UNKNOWN_REGION.to_string());
            }
            match regions.resolve(code) {
                Some(region) => Ok(region.code.clone()),
                None => bail!("unknown region code {code:?}"),
            }
        })
        .collect()
}

/// Checks offence flags against the taxonomy.
fn check_offence_types(codes: &[String], taxonomy: &Taxonomy) -> anyhow::Result<Vec<String>> {
    codes
        .iter()
        .map(|code| {
            let code = code.trim().to_ascii_lowercase();
            match taxonomy.by_code(&code) {
                Some(offence) => Ok(offence.code.clone()),
                None => bail!("unknown offence type {code:?}"),
            }
        })
        .collect()
}

/// The verdict line of a comparison.
fn verdict(expectation: &Expectation, diffs: &[CellDiff], regions: &Regions) -> String {
    if diffs.is_empty() {
        let region_count = expectation
            .totals
            .iter()
            .map(|r| &r.region)
            .collect::<BTreeSet<_>>()
            .len();
        let type_count = expectation
            .totals
            .iter()
            .map(|r| &r.offence_type)
            .collect::<BTreeSet<_>>()
            .len();
        return format!(
            "totals match: {} events in {region_count} regions x {type_count} offence types\n",
            expectation.count
        );
    }
    let mut text = String::from("totals DO NOT match:\n");
    for diff in diffs {
        text.push_str(&format!(
            "  {} ({}) {}: expected {}, counted {}\n",
            diff.region,
            regions.name_of(&diff.region),
            diff.offence_type,
            diff.expected,
            diff.actual
        ));
    }
    text
}

/// Prints totals, or compares them with an expectation; exit code 1 on a
/// mismatch.
pub async fn run_totals(config: &CliConfig, args: &TotalsArgs) -> anyhow::Result<ExitCode> {
    let names = Names::builtin(args.lang)?;
    let store = Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
    let Some(expect_path) = &args.expect else {
        let (first, second) = match args.by.as_slice() {
            [first] => (*first, None),
            [first, second] if first != second => (*first, Some(*second)),
            _ => bail!("--by takes one or two different dimensions"),
        };
        let filter = TotalsFilter {
            gateway_prefix: args.gateway_prefix.clone().filter(|p| !p.is_empty()),
            ..args.filter.to_filter(&names)?
        };
        let rows = store
            .grouped(first, second, &filter)
            .await
            .context("failed to query totals")?;
        let counts = Counts {
            first,
            second,
            rows: &rows,
        };
        let layout = TableLayout::from_terminal(args.width);
        print!("{}", render_counts(counts, &names, args.format, layout));
        return Ok(ExitCode::SUCCESS);
    };
    let regions = names.regions();

    let expectation = Expectation::load(expect_path)?;
    let (rows, diffs) =
        wait_for_expectation(&store, &expectation, args.wait.unwrap_or_default()).await?;
    print!("{}", render_totals(&rows, &names, args.format));
    let verdict = verdict(&expectation, &diffs, regions);
    // Keep stdout machine-readable for csv and json.
    if args.format == OutputFormat::Table {
        print!("{verdict}");
    } else {
        eprint!("{verdict}");
    }
    if diffs.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}

/// Polls the totals of the expectation's gateways until they match or `wait`
/// is over; returns the last totals and their differences.
async fn wait_for_expectation(
    store: &Store,
    expectation: &Expectation,
    wait: Duration,
) -> anyhow::Result<(Vec<TotalsRow>, Vec<CellDiff>)> {
    let filter = TotalsFilter {
        gateway_prefix: Some(expectation.gateway_prefix.clone()),
        ..TotalsFilter::default()
    };
    let deadline = tokio::time::Instant::now() + wait;
    let bar = (!wait.is_zero() && std::io::stderr().is_terminal()).then(|| {
        let bar =
            ProgressBar::with_draw_target(Some(expectation.count), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "counted [{elapsed_precise}] {wide_bar} {pos}/{len} ({msg})",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let mut polls = 0u32;
    let outcome = loop {
        polls += 1;
        let out_of_time = tokio::time::Instant::now() >= deadline;
        match store.totals(&filter).await {
            Ok(rows) => {
                let diffs = compare_totals(&expectation.totals, &rows);
                if diffs.is_empty() || out_of_time {
                    break (rows, diffs);
                }
                let counted: u64 = rows.iter().map(|row| row.events).sum();
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match &bar {
                    Some(bar) => {
                        bar.set_position(counted);
                        bar.set_message(format!(
                            "{} cells differ, {}s left",
                            diffs.len(),
                            remaining.as_secs()
                        ));
                    }
                    None if polls % POLLS_PER_PROGRESS_LINE == 1 => eprintln!(
                        "counted {counted}/{} ({} cells differ, {}s left)",
                        expectation.count,
                        diffs.len(),
                        remaining.as_secs()
                    ),
                    None => {}
                }
            }
            Err(error) if !out_of_time => {
                tracing::warn!(error = %error, "totals query failed, retrying");
            }
            Err(error) => return Err(error).context("failed to query totals"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_and_type_flags_are_normalised() {
        let regions = Regions::builtin().unwrap();
        let codes = ["KZ-ALA", "75", "kz-10", "Unknown"].map(String::from);
        assert_eq!(
            normalise_regions(&codes, &regions).unwrap(),
            vec!["KZ-75", "KZ-75", "KZ-10", "unknown"]
        );
        assert!(normalise_regions(&["KZ-XX".to_string()], &regions).is_err());
        let taxonomy = Taxonomy::builtin().unwrap();
        assert_eq!(
            check_offence_types(&["Traffic.Speeding".to_string()], &taxonomy).unwrap(),
            vec!["traffic.speeding"]
        );
        assert!(check_offence_types(&["speeding".to_string()], &taxonomy).is_err());
    }

    #[test]
    fn verdict_names_totals_or_differing_cells() {
        let regions = Regions::builtin().unwrap();
        let rows = vec![
            TotalsRow {
                region: "KZ-75".into(),
                offence_type: "traffic.speeding".into(),
                events: 3,
            },
            TotalsRow {
                region: "KZ-10".into(),
                offence_type: "traffic.red_light".into(),
                events: 2,
            },
        ];
        let expectation = Expectation {
            run_id: "r".into(),
            gateway_prefix: "sim-r-".into(),
            count: 5,
            totals: rows.clone(),
            raw: None,
        };
        assert_eq!(
            verdict(&expectation, &[], &regions),
            "totals match: 5 events in 2 regions x 2 offence types\n"
        );
        let diffs = compare_totals(&rows, &rows[..1]);
        let text = verdict(&expectation, &diffs, &regions);
        assert_eq!(
            text,
            "totals DO NOT match:\n  KZ-10 (Abai Region) traffic.red_light: expected 2, counted 0\n"
        );
    }
}
