//! Rendering counts by one or two dimensions as a compact pivot table, CSV
//! or JSON.
//!
//! The table fits a terminal: the first dimension's keys are the lines
//! (regions in file order, days in order, anything else largest first, at
//! most `max_rows` with the rest summed as `other`), the second dimension's
//! largest keys are the columns (as many as fit in `width`, the rest summed
//! as `other`), with a total column and a total line. Column headers are
//! names wrapped over up to three lines. CSV and JSON carry every cell in
//! long form, with the names of regions and offence types beside their codes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use cctv_store::{Dimension, GroupedRow, TotalsRow};

use crate::Names;

/// Terminal width assumed when `COLUMNS` is not set.
const DEFAULT_WIDTH: usize = 100;
/// Lines of a table before the rest is summed as `other` (regions and
/// time dimensions are never cut).
const DEFAULT_MAX_ROWS: usize = 25;
/// Widest line label; longer ones are cut with `…`.
const MAX_LABEL_CHARS: usize = 26;
/// Narrowest column of a named key (its header wraps within this).
const MIN_COLUMN_CHARS: usize = 10;
/// Widest column of a named key: longer words are cut with `…`.
const MAX_COLUMN_CHARS: usize = 14;
/// Header lines of a column before its name is cut with `…`.
const MAX_HEADER_LINES: usize = 3;

/// How counts are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A compact pivot table for a terminal.
    Table,
    /// One line per cell with a header: codes, names, `events`.
    Csv,
    /// A JSON array of one object per cell.
    Json,
}

/// Size limits of the table form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    /// Characters per line.
    pub width: usize,
    /// Lines of keys before the rest is summed as `other`.
    pub max_rows: usize,
}

impl Default for TableLayout {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

impl TableLayout {
    /// The default layout at the terminal's width (`COLUMNS`), if known.
    pub fn from_terminal(width: Option<usize>) -> Self {
        let width = width
            .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
            .unwrap_or(DEFAULT_WIDTH);
        Self {
            width: width.max(40),
            ..Self::default()
        }
    }
}

/// Counts grouped by `first` (and `second`), as the store returns them.
#[derive(Debug, Clone, Copy)]
pub struct Counts<'a> {
    /// The lines' dimension.
    pub first: Dimension,
    /// The columns' dimension, if any.
    pub second: Option<Dimension>,
    /// The cells.
    pub rows: &'a [GroupedRow],
}

/// Renders region x offence totals (those of `cctvctl totals --expect` and
/// `simulate`) like `--by region,type`.
pub fn render_totals(rows: &[TotalsRow], names: &Names, format: OutputFormat) -> String {
    let rows: Vec<GroupedRow> = rows
        .iter()
        .map(|row| GroupedRow {
            key1: row.region.clone(),
            key2: row.offence_type.clone(),
            events: row.events,
        })
        .collect();
    let counts = Counts {
        first: Dimension::Region,
        second: Some(Dimension::OffenceType),
        rows: &rows,
    };
    render_counts(counts, names, format, TableLayout::default())
}

/// Renders counts in `format`.
pub fn render_counts(
    counts: Counts<'_>,
    names: &Names,
    format: OutputFormat,
    layout: TableLayout,
) -> String {
    match format {
        OutputFormat::Table => render_table(counts, names, layout),
        OutputFormat::Csv => render_csv(counts, names),
        OutputFormat::Json => render_json(counts, names),
    }
}

/// Whether a dimension's keys read in their own order (time, regions)
/// rather than largest first, and are never cut.
fn is_ordered(dimension: Dimension) -> bool {
    matches!(
        dimension,
        Dimension::Day | Dimension::Week | Dimension::Month | Dimension::Region
    )
}

/// The keys of one dimension with their totals, in display order.
fn ordered_keys<'a>(
    dimension: Dimension,
    totals: &HashMap<&'a str, u64>,
    names: &Names,
) -> Vec<(&'a str, u64)> {
    let mut keys: Vec<(&str, u64)> = totals.iter().map(|(k, v)| (*k, *v)).collect();
    match dimension {
        Dimension::Region => keys.sort_by_key(|(key, _)| (names.region_rank(key), *key)),
        Dimension::Day | Dimension::Week | Dimension::Month => keys.sort(),
        _ => keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0))),
    }
    keys
}

/// Cells summed per (line key, column key).
struct Grid<'a> {
    cells: HashMap<(&'a str, &'a str), u64>,
    lines: Vec<(&'a str, u64)>,
    columns: Vec<(&'a str, u64)>,
    total: u64,
}

impl<'a> Grid<'a> {
    fn new(counts: Counts<'a>, names: &Names) -> Self {
        let mut cells = HashMap::new();
        let mut line_totals = HashMap::new();
        let mut column_totals = HashMap::new();
        for row in counts.rows {
            *cells
                .entry((row.key1.as_str(), row.key2.as_str()))
                .or_insert(0) += row.events;
            *line_totals.entry(row.key1.as_str()).or_insert(0) += row.events;
            *column_totals.entry(row.key2.as_str()).or_insert(0) += row.events;
        }
        let second = counts.second.unwrap_or(counts.first);
        Self {
            total: line_totals.values().sum(),
            lines: ordered_keys(counts.first, &line_totals, names),
            columns: ordered_keys(second, &column_totals, names),
            cells,
        }
    }

    fn cell(&self, line: &str, column: &str) -> u64 {
        self.cells.get(&(line, column)).copied().unwrap_or(0)
    }

    /// The sum of the cells of `lines` x `columns`.
    fn sum(&self, lines: &[&str], columns: &[&str]) -> u64 {
        lines
            .iter()
            .map(|line| {
                columns
                    .iter()
                    .map(|column| self.cell(line, column))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// Cuts `text` to `width` characters, ending in `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Wraps `text` at spaces into at most [`MAX_HEADER_LINES`] lines of
/// `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    if lines.len() > MAX_HEADER_LINES {
        let rest = lines.split_off(MAX_HEADER_LINES - 1).join(" ");
        lines.push(rest);
    }
    lines.into_iter().map(|line| cut(&line, width)).collect()
}

/// One column of the table: header lines, width, and its value per line.
struct Column {
    header: Vec<String>,
    width: usize,
    values: Vec<u64>,
    total: u64,
    /// Values are tenths of a percent.
    per_mille: bool,
}

fn render_table(counts: Counts<'_>, names: &Names, layout: TableLayout) -> String {
    let grid = Grid::new(counts, names);
    if grid.total == 0 {
        return "no events\n".to_string();
    }
    // Lines: all of an ordered dimension, else the largest and `other`.
    let mut lines: Vec<(String, Vec<&str>)> = grid
        .lines
        .iter()
        .map(|(key, _)| {
            (
                cut(&names.label(counts.first, key), MAX_LABEL_CHARS),
                vec![*key],
            )
        })
        .collect();
    if !is_ordered(counts.first) && lines.len() > layout.max_rows {
        let rest: Vec<&str> = lines
            .split_off(layout.max_rows.saturating_sub(1))
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect();
        lines.push((format!("other ({})", rest.len()), rest));
    }
    let label_width = lines
        .iter()
        .map(|(label, _)| label.chars().count())
        .chain([counts.first.column().len(), "total".len()])
        .max()
        .unwrap_or(0);
    let number_width = grid.total.to_string().len();
    let line_sum = |keys: &[&str], columns: &[&str]| grid.sum(keys, columns);

    let all_lines: Vec<&str> = grid.lines.iter().map(|(key, _)| *key).collect();
    let mut columns: Vec<Column> = Vec::new();
    let total_width = number_width.max("total".len());
    if let Some(second) = counts.second {
        // The largest column keys that fit, then `other`.
        let mut by_size = grid.columns.clone();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        // Each column is as wide as its longest word (within limits), so
        // names wrap at spaces rather than being cut.
        let width_of = |key: &str| {
            let longest_word = names
                .label(second, key)
                .split_whitespace()
                .map(|word| word.chars().count())
                .max()
                .unwrap_or(0);
            number_width.max(MIN_COLUMN_CHARS.max(longest_word.min(MAX_COLUMN_CHARS)))
        };
        let room = layout.width.saturating_sub(label_width + 2 + total_width);
        let all_width: usize = by_size.iter().map(|(key, _)| width_of(key) + 2).sum();
        let mut kept = by_size.len();
        if all_width > room {
            // Keep room for the `other` column.
            let other_width = total_width.max("other (999)".len()) + 2;
            let mut used = other_width;
            kept = by_size
                .iter()
                .take_while(|(key, _)| {
                    used += width_of(key) + 2;
                    used <= room
                })
                .count()
                .max(1);
        }
        let kept_keys: Vec<&str> = by_size.iter().take(kept).map(|(key, _)| *key).collect();
        for (key, _) in grid.columns.iter().filter(|(k, _)| kept_keys.contains(k)) {
            columns.push(Column {
                header: wrap(&names.label(second, key), width_of(key)),
                width: width_of(key),
                values: lines
                    .iter()
                    .map(|(_, keys)| line_sum(keys, &[key]))
                    .collect(),
                total: line_sum(&all_lines, &[key]),
                per_mille: false,
            });
        }
        let rest: Vec<&str> = by_size.iter().skip(kept).map(|(key, _)| *key).collect();
        if !rest.is_empty() {
            let values: Vec<u64> = lines
                .iter()
                .map(|(_, keys)| line_sum(keys, &rest))
                .collect();
            columns.push(Column {
                header: vec![format!("other ({})", rest.len())],
                width: total_width.max(format!("other ({})", rest.len()).len()),
                total: values.iter().sum(),
                values,
                per_mille: false,
            });
        }
    }
    let all_columns: Vec<&str> = grid.columns.iter().map(|(key, _)| *key).collect();
    let line_totals: Vec<u64> = lines
        .iter()
        .map(|(_, keys)| line_sum(keys, &all_columns))
        .collect();
    columns.push(Column {
        header: vec![counts.second.map_or("events", |_| "total").to_string()],
        width: total_width.max("events".len()),
        values: line_totals,
        total: grid.total,
        per_mille: false,
    });
    if counts.second.is_none() {
        let shares: Vec<u64> = columns[0]
            .values
            .iter()
            .map(|value| value * 1000 / grid.total.max(1))
            .collect();
        columns.push(Column {
            header: vec!["share".into()],
            width: 6,
            values: shares,
            total: 1000,
            per_mille: true,
        });
    }

    let header_lines = columns.iter().map(|c| c.header.len()).max().unwrap_or(1);
    let mut out = String::new();
    for header_line in 0..header_lines {
        let label = if header_line + 1 == header_lines {
            counts.first.column()
        } else {
            ""
        };
        let _ = write!(out, "{label:<label_width$}");
        for column in &columns {
            // Headers sit on the last lines, right-aligned over the numbers.
            let offset = header_lines - column.header.len();
            let text = header_line
                .checked_sub(offset)
                .and_then(|index| column.header.get(index))
                .map_or("", String::as_str);
            let _ = write!(out, "  {text:>width$}", width = column.width);
        }
        out.push('\n');
    }
    let number = |column: &Column, value: u64| {
        if column.per_mille {
            return format!("{}.{}%", value / 10, value % 10);
        }
        value.to_string()
    };
    for (index, (label, _)) in lines.iter().enumerate() {
        let _ = write!(out, "{label:<label_width$}");
        for column in &columns {
            let value = column.values.get(index).copied().unwrap_or(0);
            let _ = write!(
                out,
                "  {:>width$}",
                number(column, value),
                width = column.width
            );
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<label_width$}", "total");
    for column in &columns {
        let _ = write!(
            out,
            "  {:>width$}",
            number(column, column.total),
            width = column.width
        );
    }
    out.push('\n');
    out
}

/// The long form: every non-empty cell, lines in display order.
fn long_form<'a>(counts: Counts<'a>, names: &Names) -> Vec<(&'a str, &'a str, u64)> {
    let grid = Grid::new(counts, names);
    let column_rank: BTreeMap<&str, usize> = grid
        .columns
        .iter()
        .enumerate()
        .map(|(rank, (key, _))| (*key, rank))
        .collect();
    let line_rank: BTreeMap<&str, usize> = grid
        .lines
        .iter()
        .enumerate()
        .map(|(rank, (key, _))| (*key, rank))
        .collect();
    let mut cells: Vec<(&str, &str, u64)> = grid
        .cells
        .iter()
        .filter(|(_, events)| **events > 0)
        .map(|((line, column), events)| (*line, *column, *events))
        .collect();
    cells.sort_by_key(|(line, column, _)| (line_rank.get(line), column_rank.get(column)));
    cells
}

/// The long form's column names: each dimension's, with a name column for
/// regions (`region_name`) and offence types (`offence_name`).
fn long_header(counts: Counts<'_>) -> Vec<&'static str> {
    let mut header = Vec::new();
    for dimension in std::iter::once(counts.first).chain(counts.second) {
        header.push(dimension.column());
        match dimension {
            Dimension::Region => header.push("region_name"),
            Dimension::OffenceType => header.push("offence_name"),
            _ => {}
        }
    }
    header.push("events");
    header
}

/// The long form's values of one cell, as texts, in [`long_header`] order.
fn long_values(counts: Counts<'_>, names: &Names, line: &str, column: &str) -> Vec<String> {
    let mut values = Vec::new();
    let keys = [(counts.first, line)]
        .into_iter()
        .chain(counts.second.map(|second| (second, column)));
    for (dimension, key) in keys {
        values.push(key.to_string());
        if let Some(name) = names.name_of(dimension, key) {
            values.push(name.to_string());
        }
    }
    values
}

fn render_csv(counts: Counts<'_>, names: &Names) -> String {
    let mut out = long_header(counts).join(",");
    out.push('\n');
    for (line, column, events) in long_form(counts, names) {
        for value in long_values(counts, names, line, column) {
            out.push_str(&csv_field(&value));
            out.push(',');
        }
        let _ = writeln!(out, "{events}");
    }
    out
}

/// Quotes a CSV field when it needs it.
pub(crate) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        return format!("\"{}\"", text.replace('"', "\"\""));
    }
    text.to_string()
}

fn render_json(counts: Counts<'_>, names: &Names) -> String {
    let header = long_header(counts);
    let items: Vec<serde_json::Value> = long_form(counts, names)
        .into_iter()
        .map(|(line, column, events)| {
            let mut object = serde_json::Map::new();
            for (name, value) in header.iter().zip(long_values(counts, names, line, column)) {
                object.insert((*name).to_string(), serde_json::Value::String(value));
            }
            object.insert("events".into(), events.into());
            serde_json::Value::Object(object)
        })
        .collect();
    let mut text = serde_json::Value::Array(items).to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lang;

    fn row(key1: &str, key2: &str, events: u64) -> GroupedRow {
        GroupedRow {
            key1: key1.into(),
            key2: key2.into(),
            events,
        }
    }

    fn numbers(line: &str) -> Vec<u64> {
        line.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    fn totals(rows: &[(&str, &str, u64)]) -> Vec<TotalsRow> {
        rows.iter()
            .map(|(region, offence_type, events)| TotalsRow {
                region: (*region).into(),
                offence_type: (*offence_type).into(),
                events: *events,
            })
            .collect()
    }

    #[test]
    fn the_pivot_has_regions_in_order_with_row_and_column_totals() {
        let names = Names::builtin(Lang::En).unwrap();
        let rows = totals(&[
            ("unknown", "traffic.speeding", 2),
            ("KZ-75", "traffic.speeding", 10),
            ("KZ-10", "traffic.red_light", 3),
            ("KZ-75", "traffic.red_light", 1),
        ]);
        let text = render_totals(&rows, &names, OutputFormat::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("region"), "{text}");
        assert!(lines[0].contains("Speeding") && lines[0].contains("Red light"));
        assert!(lines[1].starts_with("KZ-10 Abai Region"), "{text}");
        assert!(lines[2].starts_with("KZ-75 Almaty"), "{text}");
        assert!(lines[3].starts_with("unknown"), "{text}");
        // Columns largest first: speeding (12), red light (4), then the total.
        assert_eq!(numbers(lines[2]), vec![10, 1, 11]);
        assert_eq!(numbers(lines[4]), vec![12, 4, 16]);
        assert_eq!(
            render_totals(&[], &names, OutputFormat::Table),
            "no events\n"
        );
    }

    #[test]
    fn many_types_fit_the_width_with_an_other_column() {
        let names = Names::builtin(Lang::Ru).unwrap();
        let taxonomy = names.taxonomy().clone();
        let mut rows = Vec::new();
        for (index, region) in names.regions().all().iter().enumerate() {
            for (rank, offence) in taxonomy.offences().iter().enumerate() {
                rows.push(row(
                    &region.code,
                    &offence.code,
                    (index + 1 + rank) as u64 * 7,
                ));
            }
        }
        let counts = Counts {
            first: Dimension::Region,
            second: Some(Dimension::OffenceType),
            rows: &rows,
        };
        let layout = TableLayout {
            width: 100,
            max_rows: 25,
        };
        let text = render_counts(counts, &names, OutputFormat::Table, layout);
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines {
            assert!(line.chars().count() <= 100, "{line:?} in\n{text}");
        }
        assert!(text.contains("other (1"), "{text}");
        assert!(text.contains("KZ-35 Карагандинская обла…"), "{text}");
        assert!(text.contains("Граффити"), "the largest type leads:\n{text}");
        let expected_total: u64 = rows.iter().map(|r| r.events).sum();
        let last = numbers(lines.last().unwrap());
        assert_eq!(last.last(), Some(&expected_total), "{text}");
        assert_eq!(last.iter().rev().skip(1).sum::<u64>(), expected_total);
        assert_eq!(lines.iter().filter(|l| l.starts_with("KZ-")).count(), 20);
        assert!(text.contains("other (16)"), "four types fit:\n{text}");
    }

    #[test]
    fn one_dimension_lists_keys_largest_first_with_shares_and_other() {
        let names = Names::builtin(Lang::En).unwrap();
        let rows: Vec<GroupedRow> = (0..30)
            .map(|n| row(&format!("CAM-{n:02}"), "", 100 - n))
            .collect();
        let counts = Counts {
            first: Dimension::Camera,
            second: None,
            rows: &rows,
        };
        let text = render_counts(counts, &names, OutputFormat::Table, TableLayout::default());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("camera_id"), "{text}");
        assert!(
            lines[1].starts_with("CAM-00") && lines[1].contains("100"),
            "{text}"
        );
        assert!(lines[25].starts_with("other (6)"), "{text}");
        let rest: u64 = (24..30).map(|n| 100 - n).sum();
        assert!(lines[25].contains(&rest.to_string()), "{text}");
        assert!(lines[26].starts_with("total") && lines[26].contains("100.0%"));
    }

    #[test]
    fn csv_and_json_carry_codes_and_names_in_the_language() {
        let names = Names::builtin(Lang::Kk).unwrap();
        let rows = totals(&[
            ("KZ-75", "traffic.speeding", 10),
            ("unknown", "traffic.speeding", 1),
        ]);
        let csv = render_totals(&rows, &names, OutputFormat::Csv);
        assert_eq!(
            csv,
            "region,region_name,offence_type,offence_name,events\n\
             KZ-75,Алматы,traffic.speeding,Жылдамдықты асыру,10\n\
             unknown,unknown,traffic.speeding,Жылдамдықты асыру,1\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_totals(&rows, &names, OutputFormat::Json)).unwrap();
        assert_eq!(json[0]["region_name"], "Алматы");
        assert_eq!(json[1]["events"], 1);
        let days = [row("2026-11-02", "", 3), row("2026-11-01", "", 4)];
        let counts = Counts {
            first: Dimension::Day,
            second: None,
            rows: &days,
        };
        assert_eq!(
            render_counts(counts, &names, OutputFormat::Csv, TableLayout::default()),
            "day,events\n2026-11-01,4\n2026-11-02,3\n"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(
            wrap("Not yielding to pedestrians", 10),
            ["Not", "yielding", "to pedest…"]
        );
    }
}
