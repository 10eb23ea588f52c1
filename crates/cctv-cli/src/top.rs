//! `cctvctl top`: the cameras, places (0.01 degree cells of the events'
//! coordinates) or plates with the most offences in a range.
//!
//! Plates are shown as stored: with plate privacy on (`privacy.plates =
//! "keyed_hash"` in the ingest config) they are `hmac:` keyed hashes, which
//! still rank repeat offenders; the output says which it is.

use std::fmt::Write as _;

use anyhow::Context as _;
use cctv_store::{Store, TopRow, TopSubject};

use crate::table::csv_field;
use crate::{CliConfig, FilterArgs, Lang, Names, OutputFormat};

/// What `top` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopWhat {
    /// Cameras.
    Cameras,
    /// Places: cells of 0.01 degree (about 1 km) of the events' coordinates.
    Places,
    /// Plates as stored (keyed hashes when plate privacy is on).
    Plates,
}

impl TopWhat {
    fn subject(self) -> TopSubject {
        match self {
            TopWhat::Cameras => TopSubject::Cameras,
            TopWhat::Places => TopSubject::Places,
            TopWhat::Plates => TopSubject::Plates,
        }
    }

    fn key_column(self) -> &'static str {
        match self {
            TopWhat::Cameras => "camera_id",
            TopWhat::Places => "place",
            TopWhat::Plates => "plate",
        }
    }
}

/// Flags of `cctvctl top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// What to rank.
    #[arg(value_enum)]
    pub what: TopWhat,
    /// Time range, regions and types.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Lines to print.
    #[arg(long, default_value_t = 10)]
    pub limit: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Language of region names.
    #[arg(long, value_enum, default_value = "en")]
    pub lang: Lang,
}

/// Plates stored by plate privacy start with this.
const HASHED_PLATE_PREFIX: &str = "hmac:";

/// The note printed under a plate ranking.
pub fn plate_note(rows: &[TopRow]) -> &'static str {
    if rows
        .iter()
        .any(|row| row.key.starts_with(HASHED_PLATE_PREFIX))
    {
        return "plates are shown as stored: hmac: values are keyed hashes (plate privacy on); \
                hash a plate with the key (CCTV_PLATE_HASH_KEY) to find it\n";
    }
    "plates are shown as stored, in clear (plate privacy off for these events)\n"
}

/// Renders a top list in `format`.
pub fn render_top(what: TopWhat, rows: &[TopRow], names: &Names, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => render_top_table(what, rows, names),
        OutputFormat::Csv => {
            let mut out = format!(
                "rank,{},region,region_name,detail,cameras,events\n",
                what.key_column()
            );
            for (rank, row) in rows.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    rank + 1,
                    csv_field(&row.key),
                    csv_field(&row.region),
                    csv_field(names.region(&row.region)),
                    csv_field(&row.detail),
                    row.cameras,
                    row.events
                );
            }
            out
        }
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .enumerate()
                .map(|(rank, row)| {
                    serde_json::json!({
                        "rank": rank + 1,
                        what.key_column(): row.key,
                        "region": row.region,
                        "region_name": names.region(&row.region),
                        "detail": row.detail,
                        "cameras": row.cameras,
                        "events": row.events,
                    })
                })
                .collect();
            let mut text = serde_json::Value::Array(items).to_string();
            text.push('\n');
            text
        }
    }
}

fn render_top_table(what: TopWhat, rows: &[TopRow], names: &Names) -> String {
    if rows.is_empty() {
        return "no events\n".to_string();
    }
    let key_width = rows
        .iter()
        .map(|row| row.key.chars().count())
        .chain([what.key_column().len()])
        .max()
        .unwrap_or(0);
    let regions: Vec<String> = rows
        .iter()
        .map(|row| names.label(cctv_store::Dimension::Region, &row.region))
        .collect();
    let region_width = regions
        .iter()
        .map(|label| label.chars().count())
        .chain(["region".len()])
        .max()
        .unwrap_or(0);
    let events_width = rows
        .iter()
        .map(|row| row.events.to_string().len())
        .chain(["events".len()])
        .max()
        .unwrap_or(0);
    let with_cameras = what != TopWhat::Cameras;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>4}  {:<key_width$}  {:<region_width$}  {:>events_width$}",
        "rank",
        what.key_column(),
        "region",
        "events"
    );
    if with_cameras {
        let _ = write!(out, "  {:>7}", "cameras");
    }
    if what == TopWhat::Places {
        let _ = write!(out, "  district");
    }
    out.push('\n');
    for (rank, (row, region)) in rows.iter().zip(&regions).enumerate() {
        let _ = write!(
            out,
            "{:>4}  {:<key_width$}  {:<region_width$}  {:>events_width$}",
            rank + 1,
            row.key,
            region,
            row.events
        );
        if with_cameras {
            let _ = write!(out, "  {:>7}", row.cameras);
        }
        if what == TopWhat::Places {
            let _ = write!(out, "  {}", row.detail);
        }
        out.push('\n');
    }
    if what == TopWhat::Plates {
        out.push_str(plate_note(rows));
    }
    out
}

/// Prints the top cameras, places or plates.
pub async fn run_top(config: &CliConfig, args: &TopArgs) -> anyhow::Result<()> {
    let names = Names::builtin(args.lang)?;
    let filter = args.filter.to_filter(&names)?;
    let store = Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
    let rows = store
        .top(args.what.subject(), &filter, args.limit)
        .await
        .context("failed to query the top list")?;
    print!("{}", render_top(args.what, &rows, &names, args.format));
    if args.what == TopWhat::Plates && args.format != OutputFormat::Table {
        // Keep stdout machine-readable.
        eprint!("{}", plate_note(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_row(key: &str, region: &str, cameras: u64, events: u64) -> TopRow {
        TopRow {
            key: key.into(),
            region: region.into(),
            detail: String::new(),
            cameras,
            events,
        }
    }

    #[test]
    fn plates_say_whether_they_are_hashed() {
        let names = Names::builtin(Lang::Ru).unwrap();
        let hashed = [
            top_row("hmac:0a1b2c3d4e5f60718293a4b5c6d7e8f9", "KZ-75", 2, 9),
            top_row("404ZXC16", "several", 3, 4),
        ];
        let text = render_top(TopWhat::Plates, &hashed, &names, OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("   1  hmac:0a1b") && lines[1].contains("Алматы"));
        assert!(lines[2].contains("several"), "{text}");
        assert!(text.contains("keyed hashes (plate privacy on)"), "{text}");
        let clear = &hashed[1..];
        assert!(plate_note(clear).contains("in clear"));
        let csv = render_top(TopWhat::Cameras, clear, &names, OutputFormat::Csv);
        assert_eq!(
            csv,
            "rank,camera_id,region,region_name,detail,cameras,events\n1,404ZXC16,several,several,,3,4\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render_top(
            TopWhat::Places,
            &hashed,
            &names,
            OutputFormat::Json,
        ))
        .unwrap();
        assert_eq!(json[0]["place"], "hmac:0a1b2c3d4e5f60718293a4b5c6d7e8f9");
        assert_eq!(json[1]["rank"], 2);
    }
}
