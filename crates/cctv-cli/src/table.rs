//! Rendering region x offence totals as a text table, CSV or JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use cctv_event::{Regions, UNKNOWN_REGION};
use cctv_store::TotalsRow;

/// Offence types up to which the table is printed wide (one column per type);
/// beyond that it is printed long (one line per region and type).
const MAX_WIDE_COLUMNS: usize = 8;

/// How totals are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table.
    Table,
    /// `region,region_name,offence_type,events` lines with a header.
    Csv,
    /// A JSON array of `{region, region_name, offence_type, events}`.
    Json,
}

/// Renders totals in `format`; region names come from `regions`.
pub fn render_totals(rows: &[TotalsRow], regions: &Regions, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => render_table(rows, regions),
        OutputFormat::Csv => render_csv(rows, regions),
        OutputFormat::Json => render_json(rows, regions),
    }
}

/// Sort key of a region code: listed regions in file order, then unlisted
/// codes, then `unknown`.
fn region_rank(code: &str, regions: &Regions) -> (usize, String) {
    if code == UNKNOWN_REGION {
        return (usize::MAX, String::new());
    }
    let position = regions.all().iter().position(|region| region.code == code);
    (position.unwrap_or(usize::MAX - 1), code.to_string())
}

/// `KZ-75 Almaty`, or the bare code when it has no name.
fn region_label(code: &str, regions: &Regions) -> String {
    let name = regions.name_of(code);
    if name == code {
        return code.to_string();
    }
    format!("{code} {name}")
}

/// Cells summed per (region, type), regions in display order.
struct Grid<'a> {
    regions: Vec<&'a str>,
    offence_types: Vec<&'a str>,
    cells: BTreeMap<(&'a str, &'a str), u64>,
}

impl<'a> Grid<'a> {
    fn new(rows: &'a [TotalsRow], regions: &Regions) -> Self {
        let mut cells = BTreeMap::new();
        let mut region_codes = BTreeSet::new();
        let mut offence_types = BTreeSet::new();
        for row in rows {
            *cells
                .entry((row.region.as_str(), row.offence_type.as_str()))
                .or_insert(0) += row.events;
            region_codes.insert(row.region.as_str());
            offence_types.insert(row.offence_type.as_str());
        }
        let mut region_codes: Vec<&str> = region_codes.into_iter().collect();
        region_codes.sort_by_key(|code| region_rank(code, regions));
        Self {
            regions: region_codes,
            offence_types: offence_types.into_iter().collect(),
            cells,
        }
    }

    fn cell(&self, region: &str, offence_type: &str) -> u64 {
        self.cells
            .get(&(region, offence_type))
            .copied()
            .unwrap_or(0)
    }

    fn region_total(&self, region: &str) -> u64 {
        self.offence_types
            .iter()
            .map(|t| self.cell(region, t))
            .sum()
    }

    fn type_total(&self, offence_type: &str) -> u64 {
        self.regions
            .iter()
            .map(|r| self.cell(r, offence_type))
            .sum()
    }

    fn grand_total(&self) -> u64 {
        self.cells.values().sum()
    }
}

/// Column headers: the code without its family when that stays unambiguous.
fn column_labels<'a>(offence_types: &[&'a str]) -> Vec<&'a str> {
    let short: Vec<&str> = offence_types
        .iter()
        .map(|code| code.split_once('.').map_or(*code, |(_, name)| name))
        .collect();
    let distinct: BTreeSet<&&str> = short.iter().collect();
    if distinct.len() == short.len() {
        return short;
    }
    offence_types.to_vec()
}

fn render_table(rows: &[TotalsRow], regions: &Regions) -> String {
    let grid = Grid::new(rows, regions);
    if grid.cells.is_empty() {
        return "no events\n".to_string();
    }
    if grid.offence_types.len() > MAX_WIDE_COLUMNS {
        return render_long(&grid, regions);
    }
    let labels: Vec<String> = grid
        .regions
        .iter()
        .map(|code| region_label(code, regions))
        .collect();
    let label_width = labels
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("region".len());
    let columns = column_labels(&grid.offence_types);
    let grand = grid.grand_total();
    let number_width = grand.to_string().len();
    let widths: Vec<usize> = columns
        .iter()
        .map(|label| label.len().max(number_width))
        .collect();
    let total_width = "total".len().max(number_width);

    let mut out = String::new();
    let _ = write!(out, "{:<label_width$}", "region");
    for (label, width) in columns.iter().zip(&widths) {
        let _ = write!(out, "  {label:>width$}");
    }
    let _ = writeln!(out, "  {:>total_width$}", "total");
    for (code, label) in grid.regions.iter().zip(&labels) {
        let _ = write!(out, "{label:<label_width$}");
        for (offence_type, width) in grid.offence_types.iter().zip(&widths) {
            let _ = write!(out, "  {:>width$}", grid.cell(code, offence_type));
        }
        let _ = writeln!(out, "  {:>total_width$}", grid.region_total(code));
    }
    let _ = write!(out, "{:<label_width$}", "total");
    for (offence_type, width) in grid.offence_types.iter().zip(&widths) {
        let _ = write!(out, "  {:>width$}", grid.type_total(offence_type));
    }
    let _ = writeln!(out, "  {grand:>total_width$}");
    out
}

fn render_long(grid: &Grid<'_>, regions: &Regions) -> String {
    let labels: Vec<String> = grid
        .regions
        .iter()
        .map(|code| region_label(code, regions))
        .collect();
    let label_width = labels
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("region".len());
    let type_width = grid
        .offence_types
        .iter()
        .map(|t| t.len())
        .max()
        .unwrap_or(0)
        .max("offence_type".len());
    let number_width = grid.grand_total().to_string().len().max("events".len());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<label_width$}  {:<type_width$}  {:>number_width$}",
        "region", "offence_type", "events"
    );
    for (code, label) in grid.regions.iter().zip(&labels) {
        for offence_type in &grid.offence_types {
            let events = grid.cell(code, offence_type);
            if events > 0 {
                let _ = writeln!(
                    out,
                    "{label:<label_width$}  {offence_type:<type_width$}  {events:>number_width$}"
                );
            }
        }
    }
    let _ = writeln!(out, "\nper region:");
    for (code, label) in grid.regions.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "{label:<label_width$}  {:>number_width$}",
            grid.region_total(code)
        );
    }
    let _ = writeln!(out, "\nper offence type:");
    for offence_type in &grid.offence_types {
        let _ = writeln!(
            out,
            "{offence_type:<label_width$}  {:>number_width$}",
            grid.type_total(offence_type)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<label_width$}  {:>number_width$}",
        "total",
        grid.grand_total()
    );
    out
}

fn render_csv(rows: &[TotalsRow], regions: &Regions) -> String {
    let grid = Grid::new(rows, regions);
    let mut out = String::from("region,region_name,offence_type,events\n");
    for code in &grid.regions {
        for offence_type in &grid.offence_types {
            let events = grid.cell(code, offence_type);
            if events > 0 {
                let _ = writeln!(
                    out,
                    "{},{},{},{events}",
                    csv_field(code),
                    csv_field(regions.name_of(code)),
                    csv_field(offence_type)
                );
            }
        }
    }
    out
}

/// Quotes a CSV field when it needs it.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        return format!("\"{}\"", text.replace('"', "\"\""));
    }
    text.to_string()
}

fn render_json(rows: &[TotalsRow], regions: &Regions) -> String {
    let grid = Grid::new(rows, regions);
    let mut items = Vec::new();
    for code in &grid.regions {
        for offence_type in &grid.offence_types {
            let events = grid.cell(code, offence_type);
            if events > 0 {
                items.push(serde_json::json!({
                    "region": code,
                    "region_name": regions.name_of(code),
                    "offence_type": offence_type,
                    "events": events,
                }));
            }
        }
    }
    let mut text = serde_json::Value::Array(items).to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, offence_type: &str, events: u64) -> TotalsRow {
        TotalsRow {
            region: region.into(),
            offence_type: offence_type.into(),
            events,
        }
    }

    #[test]
    fn wide_table_has_named_regions_in_order_with_row_and_column_totals() {
        let regions = Regions::builtin().unwrap();
        let rows = vec![
            row("unknown", "traffic.speeding", 2),
            row("KZ-75", "traffic.speeding", 10),
            row("KZ-10", "traffic.red_light", 3),
            row("KZ-75", "traffic.red_light", 1),
        ];
        let text = render_totals(&rows, &regions, OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("region")
                && lines[0].contains("red_light")
                && lines[0].contains("speeding")
        );
        assert!(lines[1].starts_with("KZ-10 Abai Region"), "{text}");
        assert!(lines[2].starts_with("KZ-75 Almaty"), "{text}");
        assert!(lines[3].starts_with("unknown"), "{text}");
        let numbers = |line: &str| -> Vec<u64> {
            line.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        assert_eq!(numbers(lines[2]), vec![1, 10, 11]);
        assert_eq!(numbers(lines[4]), vec![4, 12, 16]);
    }

    #[test]
    fn many_offence_types_switch_to_the_long_form() {
        let regions = Regions::builtin().unwrap();
        let rows: Vec<TotalsRow> = (0..9)
            .map(|i| row("KZ-71", &format!("traffic.t{i}"), i + 1))
            .collect();
        let text = render_totals(&rows, &regions, OutputFormat::Table);
        assert!(text.contains("KZ-71 Astana  traffic.t8"), "{text}");
        assert!(text.contains("per region:"), "{text}");
        assert!(text.trim_end().ends_with("45"), "{text}");
        assert_eq!(
            render_totals(&[], &regions, OutputFormat::Table),
            "no events\n"
        );
    }

    #[test]
    fn csv_and_json_carry_region_names() {
        let regions = Regions::builtin().unwrap();
        let rows = vec![
            row("KZ-75", "traffic.speeding", 10),
            row("unknown", "traffic.speeding", 1),
        ];
        let csv = render_totals(&rows, &regions, OutputFormat::Csv);
        assert_eq!(
            csv,
            "region,region_name,offence_type,events\nKZ-75,Almaty,traffic.speeding,10\nunknown,unknown,traffic.speeding,1\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_totals(&rows, &regions, OutputFormat::Json)).unwrap();
        assert_eq!(json[0]["region_name"], "Almaty");
        assert_eq!(json[1]["events"], 1);
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
