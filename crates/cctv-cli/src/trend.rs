//! `cctvctl trend`: offences day by day over a range, each day beside the
//! same day of the previous period (the range of equal length just before),
//! with the change. Days without events are filled here (ClickHouse 18.16
//! has no `WITH FILL`).

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use cctv_store::{Dimension, GroupedRow, Store, TotalsFilter};
use chrono::{Days, NaiveDate};

use crate::{CliConfig, FilterArgs, Lang, Names, OutputFormat};

/// Days of the range when `--from` is not given.
pub const DEFAULT_TREND_DAYS: u64 = 14;
/// Widest bar of the table.
const BAR_CHARS: u64 = 24;

/// Flags of `cctvctl trend`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrendArgs {
    /// Time range (default: the 14 days up to today), regions and types.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

/// One day of the range beside its day in the previous period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TrendDay {
    /// The day.
    pub day: NaiveDate,
    /// Its offences.
    pub events: u64,
    /// The same day of the previous period (`day` minus the range's length).
    pub previous_day: NaiveDate,
    /// Offences of `previous_day`.
    pub previous_events: u64,
}

/// A range's days and the totals of both periods.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trend {
    /// Every day of the range, in order.
    pub days: Vec<TrendDay>,
    /// Offences of the range.
    pub total: u64,
    /// Offences of the previous period.
    pub previous_total: u64,
}

/// `new` against `old` in percent (none when `old` is zero).
pub fn change_percent(new: u64, old: u64) -> Option<f64> {
    if old == 0 {
        return None;
    }
    Some((new as f64 - old as f64) * 100.0 / old as f64)
}

/// The previous period of `from..=to`: the range of equal length just before.
pub fn previous_period(from: NaiveDate, to: NaiveDate) -> Option<(NaiveDate, NaiveDate)> {
    let length = u64::try_from((to - from).num_days()).ok()? + 1;
    Some((from.checked_sub_days(Days::new(length))?, from.pred_opt()?))
}

/// Builds the trend of `from..=to` from day counts (`key1` = `YYYY-MM-DD`)
/// that cover the previous period too; missing days count zero.
pub fn build_trend(from: NaiveDate, to: NaiveDate, rows: &[GroupedRow]) -> Option<Trend> {
    let (previous_from, _) = previous_period(from, to)?;
    let by_day: HashMap<NaiveDate, u64> = rows
        .iter()
        .filter_map(|row| {
            let day = NaiveDate::parse_from_str(&row.key1, "%Y-%m-%d").ok()?;
            Some((day, row.events))
        })
        .collect();
    let count = |day: NaiveDate| by_day.get(&day).copied().unwrap_or(0);
    let days: Vec<TrendDay> = from
        .iter_days()
        .take_while(|day| *day <= to)
        .zip(previous_from.iter_days())
        .map(|(day, previous_day)| TrendDay {
            day,
            events: count(day),
            previous_day,
            previous_events: count(previous_day),
        })
        .collect();
    Some(Trend {
        total: days.iter().map(|d| d.events).sum(),
        previous_total: days.iter().map(|d| d.previous_events).sum(),
        days,
    })
}

fn percent_text(new: u64, old: u64) -> String {
    change_percent(new, old).map_or_else(|| "n/a".to_string(), |p| format!("{p:+.1}%"))
}

/// Renders a trend in `format`.
pub fn render_trend(trend: &Trend, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => render_trend_table(trend),
        OutputFormat::Csv => {
            let mut out =
                String::from("day,events,previous_day,previous_events,change,change_percent\n");
            for day in &trend.days {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{}",
                    day.day,
                    day.events,
                    day.previous_day,
                    day.previous_events,
                    i128::from(day.events) - i128::from(day.previous_events),
                    change_percent(day.events, day.previous_events)
                        .map_or_else(String::new, |p| format!("{p:.1}"))
                );
            }
            out
        }
        OutputFormat::Json => {
            let mut value = serde_json::json!(trend);
            value["change_percent"] =
                serde_json::json!(change_percent(trend.total, trend.previous_total));
            let mut text = value.to_string();
            text.push('\n');
            text
        }
    }
}

fn render_trend_table(trend: &Trend) -> String {
    let largest = trend
        .days
        .iter()
        .map(|d| d.events.max(d.previous_events))
        .max()
        .unwrap_or(0);
    let width = trend
        .total
        .max(trend.previous_total)
        .to_string()
        .len()
        .max("previous".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10}  {:>width$}  {:<10}  {:>width$}  {:>8}",
        "day", "events", "previous", "events", "change"
    );
    for day in &trend.days {
        let bar = if largest == 0 {
            0
        } else {
            (day.events * BAR_CHARS).div_ceil(largest)
        };
        let _ = writeln!(
            out,
            "{:<10}  {:>width$}  {:<10}  {:>width$}  {:>8}  {}",
            day.day.to_string(),
            day.events,
            day.previous_day.to_string(),
            day.previous_events,
            percent_text(day.events, day.previous_events),
            "█".repeat(usize::try_from(bar).unwrap_or(0))
        );
    }
    let _ = writeln!(
        out,
        "{:<10}  {:>width$}  {:<10}  {:>width$}  {:>8}",
        "total",
        trend.total,
        "",
        trend.previous_total,
        percent_text(trend.total, trend.previous_total)
    );
    out
}

/// Queries the day counts of the range and of the previous period.
pub async fn query_trend(
    store: &Store,
    from: NaiveDate,
    to: NaiveDate,
    filter: &TotalsFilter,
) -> anyhow::Result<Trend> {
    let Some((previous_from, _)) = previous_period(from, to) else {
        bail!("the range {from}..{to} has no previous period");
    };
    let filter = TotalsFilter {
        from_day: Some(previous_from),
        to_day: Some(to),
        ..filter.clone()
    };
    let rows = store
        .grouped(Dimension::Day, None, &filter)
        .await
        .context("failed to query day counts")?;
    build_trend(from, to, &rows).context("the range is out of the calendar")
}

/// The range of `filter`: `--to` (default today) and `--from` (default
/// `default_days` days up to `--to`).
pub fn day_range(filter: &FilterArgs, default_days: u64) -> anyhow::Result<(NaiveDate, NaiveDate)> {
    let to = match filter.to {
        Some(to) => to,
        None => cctv_simulate::parse_day("today").map_err(anyhow::Error::msg)?,
    };
    let from = match filter.from {
        Some(from) => from,
        None => to
            .checked_sub_days(Days::new(default_days.saturating_sub(1)))
            .context("--to is out of the calendar")?,
    };
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    Ok((from, to))
}

/// Prints the trend.
pub async fn run_trend(config: &CliConfig, args: &TrendArgs) -> anyhow::Result<()> {
    let names = Names::builtin(Lang::En)?;
    let (from, to) = day_range(&args.filter, DEFAULT_TREND_DAYS)?;
    let filter = args.filter.to_filter(&names)?;
    let store = Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
    let trend = query_trend(&store, from, to, &filter).await?;
    print!("{}", render_trend(&trend, args.format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn count(key: &str, events: u64) -> GroupedRow {
        GroupedRow {
            key1: key.into(),
            key2: String::new(),
            events,
        }
    }

    #[test]
    fn days_are_filled_and_set_against_the_previous_period() {
        let rows = [
            count("2026-11-28", 4),
            count("2026-11-30", 2),
            count("2026-12-01", 5),
            count("2026-12-03", 3),
        ];
        let trend = build_trend(day("2026-12-01"), day("2026-12-03"), &rows).unwrap();
        assert_eq!(
            previous_period(day("2026-12-01"), day("2026-12-03")),
            Some((day("2026-11-28"), day("2026-11-30")))
        );
        let summary: Vec<(String, u64, String, u64)> = trend
            .days
            .iter()
            .map(|d| {
                (
                    d.day.to_string(),
                    d.events,
                    d.previous_day.to_string(),
                    d.previous_events,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("2026-12-01".into(), 5, "2026-11-28".into(), 4),
                ("2026-12-02".into(), 0, "2026-11-29".into(), 0),
                ("2026-12-03".into(), 3, "2026-11-30".into(), 2),
            ]
        );
        assert_eq!((trend.total, trend.previous_total), (8, 6));
        let table = render_trend(&trend, OutputFormat::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains("+25.0%"), "{table}");
        assert!(lines[2].contains("n/a"), "{table}");
        assert!(lines[4].starts_with("total") && lines[4].contains("+33.3%"));
        let csv = render_trend(&trend, OutputFormat::Csv);
        assert!(
            csv.contains("\n2026-12-03,3,2026-11-30,2,1,50.0\n"),
            "{csv}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_trend(&trend, OutputFormat::Json)).unwrap();
        assert_eq!(json["days"][0]["previous_events"], 4);
        assert_eq!(json["total"], 8);
        assert!((json["change_percent"].as_f64().unwrap() - 33.333).abs() < 0.01);
    }
}
