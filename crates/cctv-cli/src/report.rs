//! `cctvctl report`: one self-contained HTML file for a range of days: a
//! map of the 20 regions shaded by count, bars by offence type, the daily
//! trend, the top cameras and freshness (detection -> queryable).
//!
//! Everything is inline (CSS, SVG drawn here from the data; no script, font
//! or picture from anywhere), so the file opens offline and can be mailed.
//! Every number is also in a `data-*` attribute of its element, for tests
//! and for copying. [`gather_report`] queries, [`render_report`] is pure.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use cctv_store::{Dimension, Freshness, Store, TopRow, TopSubject, TotalsFilter};
use chrono::NaiveDate;

use crate::map::region_map;
use crate::{day_range, CliConfig, FilterArgs, Lang, Names};

/// Days of the report when `--from` is not given.
pub const DEFAULT_REPORT_DAYS: u64 = 30;
/// Width of the charts, in SVG units (and CSS pixels at 100 %).
const CHART_WIDTH: f64 = 760.0;
/// Height of one bar of the offence chart.
const BAR_HEIGHT: f64 = 22.0;
/// Width of the offence names left of the bars.
const BAR_LABEL_WIDTH: f64 = 260.0;
/// Height of the trend chart.
const TREND_HEIGHT: f64 = 200.0;
/// Fill of a region with no offences.
const EMPTY_FILL: &str = "#eeeeee";
/// Fills from the fewest to the most offences (ColorBrewer Oranges).
const FILLS: [&str; 5] = ["#fdd0a2", "#fdae6b", "#fd8d3c", "#e6550d", "#a63603"];

/// Flags of `cctvctl report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Time range (default: the 30 days up to today), regions and types.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Language of region and offence names.
    #[arg(long, value_enum, default_value = "en")]
    pub lang: Lang,
    /// Cameras in the top list.
    #[arg(long, default_value_t = 10)]
    pub top: u64,
}

/// What a report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportData {
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// Offences per region code.
    pub regions: Vec<(String, u64)>,
    /// Offences per offence type, largest first.
    pub offence_types: Vec<(String, u64)>,
    /// Offences per day, every day of the range.
    pub days: Vec<(NaiveDate, u64)>,
    /// The busiest cameras.
    pub top_cameras: Vec<TopRow>,
    /// Detection -> insert latency.
    pub freshness: Freshness,
    /// When the report was made (text, UTC).
    pub generated_at: String,
}

/// Queries everything a report of `from..=to` under `filter` shows.
pub async fn gather_report(
    store: &Store,
    from: NaiveDate,
    to: NaiveDate,
    filter: &TotalsFilter,
    top: u64,
) -> anyhow::Result<ReportData> {
    let filter = TotalsFilter {
        from_day: Some(from),
        to_day: Some(to),
        ..filter.clone()
    };
    let pairs = |rows: Vec<cctv_store::GroupedRow>| -> Vec<(String, u64)> {
        rows.into_iter().map(|row| (row.key1, row.events)).collect()
    };
    let regions = pairs(store.grouped(Dimension::Region, None, &filter).await?);
    let offence_types = pairs(store.grouped(Dimension::OffenceType, None, &filter).await?);
    let by_day = pairs(store.grouped(Dimension::Day, None, &filter).await?);
    let days = from
        .iter_days()
        .take_while(|day| *day <= to)
        .map(|day| {
            let key = day.to_string();
            let events = by_day
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, e)| *e);
            (day, events)
        })
        .collect();
    Ok(ReportData {
        from,
        to,
        regions,
        offence_types,
        days,
        top_cameras: store.top(TopSubject::Cameras, &filter, top).await?,
        freshness: store.freshness(&filter).await?,
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    })
}

/// Escapes text for HTML and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `12 345`: thousands apart with a thin space.
fn grouped_number(number: u64) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(digit);
    }
    out
}

/// `2 min 5 s`, `3 h 10 min`.
pub fn duration_text(seconds: i64) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let seconds = seconds.unsigned_abs();
    match seconds {
        0..=59 => format!("{sign}{seconds} s"),
        60..=3599 => format!("{sign}{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{sign}{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// The fill of a region with `events` of at most `largest`.
fn fill_of(events: u64, largest: u64) -> &'static str {
    if events == 0 || largest == 0 {
        return EMPTY_FILL;
    }
    let steps = FILLS.len() as u64;
    let step = (events * steps).div_ceil(largest).clamp(1, steps);
    FILLS[usize::try_from(step - 1).unwrap_or(0)]
}

const STYLE: &str = "
body{font-family:'DejaVu Sans','Liberation Sans',Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;font-size:13px}.total{font-size:28px;font-weight:bold}
.map-row{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
svg text{font-size:11px;fill:#222}.region{stroke:#fff;stroke-width:0.8}
.region-label{font-size:9px;text-anchor:middle;fill:#111;pointer-events:none}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}
td.events,th.events{text-align:right}.bar{fill:#e6550d}.trend-line{fill:none;stroke:#a63603;stroke-width:2}
.trend-point{fill:#a63603}.axis{stroke:#999;stroke-width:1}
.legend span{display:inline-block;width:18px;height:12px;margin-right:4px;vertical-align:middle}
dl{display:grid;grid-template-columns:max-content max-content;gap:4px 16px;font-size:14px}dt{color:#666}
";

/// The map of the regions with its legend and table.
fn render_map(out: &mut String, data: &ReportData, names: &Names) -> anyhow::Result<()> {
    let map = region_map(CHART_WIDTH).context("failed to read the region shapes")?;
    let count = |code: &str| {
        data.regions
            .iter()
            .find(|(region, _)| region == code)
            .map_or(0, |(_, events)| *events)
    };
    let largest = data.regions.iter().map(|(_, e)| *e).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "<h2>By region</h2><div class=\"map-row\"><svg id=\"map\" role=\"img\" \
         aria-label=\"map of regions\" viewBox=\"0 0 {:.0} {:.0}\" width=\"{:.0}\" height=\"{:.0}\">",
        map.width, map.height, map.width, map.height
    );
    for region in &map.regions {
        let events = count(&region.code);
        let name = escape(names.region(&region.code));
        let _ = writeln!(
            out,
            "<path class=\"region\" fill-rule=\"evenodd\" data-region=\"{}\" data-events=\"{events}\" \
             fill=\"{}\" d=\"{}\"><title>{name}: {events}</title></path>",
            escape(&region.code),
            fill_of(events, largest),
            region.path
        );
    }
    for region in &map.regions {
        let (x, y) = region.label_at;
        let _ = writeln!(
            out,
            "<text class=\"region-label\" x=\"{x:.1}\" y=\"{y:.1}\">{}</text>",
            count(&region.code)
        );
    }
    out.push_str("</svg>\n<div><div class=\"legend\">");
    for (index, fill) in FILLS.iter().enumerate() {
        let upper = (largest * (index as u64 + 1)).div_ceil(FILLS.len() as u64);
        let _ = write!(out, "<span style=\"background:{fill}\"></span>≤{upper} ");
    }
    let _ = writeln!(
        out,
        "<span style=\"background:{EMPTY_FILL}\"></span>0</div>\n<table id=\"regions\"><tr><th>region</th>\
         <th class=\"events\">offences</th></tr>"
    );
    let mut regions = data.regions.clone();
    regions.sort_by_key(|(code, events)| (std::cmp::Reverse(*events), code.clone()));
    for (code, events) in &regions {
        let _ = writeln!(
            out,
            "<tr data-region=\"{}\" data-events=\"{events}\"><td>{}</td><td class=\"events\">{}</td></tr>",
            escape(code),
            escape(&names.label(Dimension::Region, code)),
            grouped_number(*events)
        );
    }
    out.push_str("</table>\n<p class=\"sub\">Region areas are approximate (derived from towns; not legal borders): Natural Earth (public domain) and GeoNames (CC BY 4.0) data.</p></div></div>\n");
    Ok(())
}

/// Horizontal bars, one per offence type.
fn render_bars(out: &mut String, data: &ReportData, names: &Names) {
    let largest = data
        .offence_types
        .iter()
        .map(|(_, e)| *e)
        .max()
        .unwrap_or(0);
    let height = BAR_HEIGHT * data.offence_types.len() as f64 + 4.0;
    let room = CHART_WIDTH - BAR_LABEL_WIDTH - 60.0;
    let _ = writeln!(
        out,
        "<h2>By offence type</h2><svg id=\"types\" role=\"img\" aria-label=\"offences by type\" \
         viewBox=\"0 0 {CHART_WIDTH:.0} {height:.0}\" width=\"{CHART_WIDTH:.0}\" height=\"{height:.0}\">"
    );
    for (index, (code, events)) in data.offence_types.iter().enumerate() {
        let y = index as f64 * BAR_HEIGHT + 2.0;
        let width = if largest == 0 {
            0.0
        } else {
            room * *events as f64 / largest as f64
        };
        let _ = writeln!(
            out,
            "<g data-type=\"{code}\"><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" data-type=\"{code}\" data-events=\"{events}\" x=\"{BAR_LABEL_WIDTH:.0}\" \
             y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.0}\"><title>{code}: {events}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            BAR_LABEL_WIDTH - 6.0,
            y + BAR_HEIGHT * 0.65,
            escape(names.offence(code)),
            BAR_HEIGHT - 6.0,
            BAR_LABEL_WIDTH + width + 4.0,
            y + BAR_HEIGHT * 0.65,
            grouped_number(*events),
            code = escape(code),
        );
    }
    out.push_str("</svg>\n");
}

/// The daily trend: a line with one point per day.
fn render_trend_chart(out: &mut String, data: &ReportData) {
    let largest = data.days.iter().map(|(_, e)| *e).max().unwrap_or(0).max(1);
    let (left, bottom, top) = (50.0, TREND_HEIGHT - 24.0, 10.0);
    let step = (CHART_WIDTH - left - 10.0) / (data.days.len().max(2) - 1) as f64;
    let point = |index: usize, events: u64| {
        (
            left + index as f64 * step,
            bottom - (bottom - top) * events as f64 / largest as f64,
        )
    };
    let _ = writeln!(
        out,
        "<h2>Day by day</h2><svg id=\"trend\" role=\"img\" aria-label=\"offences per day\" \
         viewBox=\"0 0 {CHART_WIDTH:.0} {TREND_HEIGHT:.0}\" width=\"{CHART_WIDTH:.0}\" height=\"{TREND_HEIGHT:.0}\">\
         <line class=\"axis\" x1=\"{left}\" y1=\"{bottom}\" x2=\"{:.0}\" y2=\"{bottom}\"/>\
         <line class=\"axis\" x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\"/>\
         <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text><text x=\"{:.0}\" y=\"{bottom}\" text-anchor=\"end\">0</text>",
        CHART_WIDTH - 10.0,
        left - 6.0,
        top + 8.0,
        grouped_number(largest),
        left - 6.0,
    );
    let points: Vec<String> = data
        .days
        .iter()
        .enumerate()
        .map(|(index, (_, events))| {
            let (x, y) = point(index, *events);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = writeln!(
        out,
        "<polyline class=\"trend-line\" points=\"{}\"/>",
        points.join(" ")
    );
    for (index, (day, events)) in data.days.iter().enumerate() {
        let (x, y) = point(index, *events);
        let _ = writeln!(
            out,
            "<circle class=\"trend-point\" data-day=\"{day}\" data-events=\"{events}\" cx=\"{x:.1}\" \
             cy=\"{y:.1}\" r=\"3\"><title>{day}: {events}</title></circle>"
        );
    }
    if let (Some((first, _)), Some((last, _))) = (data.days.first(), data.days.last()) {
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{:.0}\">{first}</text><text x=\"{:.0}\" y=\"{:.0}\" \
             text-anchor=\"end\">{last}</text>",
            TREND_HEIGHT - 6.0,
            CHART_WIDTH - 10.0,
            TREND_HEIGHT - 6.0
        );
    }
    out.push_str("</svg>\n");
}

fn render_cameras_and_freshness(out: &mut String, data: &ReportData, names: &Names) {
    out.push_str(
        "<h2>Top cameras</h2><table id=\"top-cameras\"><tr><th>#</th><th>camera</th>\
         <th>region</th><th class=\"events\">offences</th></tr>\n",
    );
    for (rank, camera) in data.top_cameras.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"camera\">{}</td><td>{}</td>\
             <td class=\"events\" data-events=\"{}\">{}</td></tr>",
            rank + 1,
            escape(&camera.key),
            escape(&names.label(Dimension::Region, &camera.region)),
            camera.events,
            grouped_number(camera.events)
        );
    }
    let freshness = &data.freshness;
    let _ = writeln!(
        out,
        "</table>\n<h2>Freshness: detection to queryable</h2><dl id=\"freshness\" \
         data-events=\"{}\" data-min=\"{}\" data-median=\"{}\" data-p90=\"{}\" data-p99=\"{}\" \
         data-max=\"{}\"><dt>offences measured</dt><dd>{}</dd><dt>median</dt><dd>{}</dd>\
         <dt>90 %</dt><dd>{}</dd><dt>99 %</dt><dd>{}</dd><dt>slowest</dt><dd>{}</dd></dl>\
         <p class=\"sub\">From the camera's detection time to the row's insert into ClickHouse \
         (queryable from then on).</p>",
        freshness.events,
        freshness.min_seconds,
        freshness.median_seconds,
        freshness.p90_seconds,
        freshness.p99_seconds,
        freshness.max_seconds,
        grouped_number(freshness.events),
        duration_text(freshness.median_seconds),
        duration_text(freshness.p90_seconds),
        duration_text(freshness.p99_seconds),
        duration_text(freshness.max_seconds),
    );
}

/// The whole HTML document of a report.
pub fn render_report(data: &ReportData, names: &Names) -> anyhow::Result<String> {
    let total: u64 = data.regions.iter().map(|(_, events)| events).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Offences {from} to {to}</title><style>{STYLE}</style></head><body>\
         <h1>Offences counted by CCTV, {from} to {to}</h1>\
         <p class=\"sub\">Made {generated} by cctvctl report</p>\
         <p><span id=\"total\" class=\"total\" data-events=\"{total}\">{}</span> offences</p>",
        grouped_number(total),
        from = data.from,
        to = data.to,
        generated = escape(&data.generated_at),
    );
    render_map(&mut out, data, names)?;
    render_bars(&mut out, data, names);
    render_trend_chart(&mut out, data);
    render_cameras_and_freshness(&mut out, data, names);
    out.push_str("</body></html>\n");
    Ok(out)
}

/// Writes the report file.
pub async fn run_report(config: &CliConfig, args: &ReportArgs) -> anyhow::Result<()> {
    let names = Names::builtin(args.lang)?;
    let (from, to) = day_range(&args.filter, DEFAULT_REPORT_DAYS)?;
    let filter = args.filter.to_filter(&names)?;
    let store = Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
    let data = gather_report(&store, from, to, &filter, args.top)
        .await
        .context("failed to query the report's numbers")?;
    let html = render_report(&data, &names)?;
    std::fs::write(&args.out, html)
        .with_context(|| format!("failed to write {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({from} to {to}, {} offences)",
        args.out.display(),
        data.regions.iter().map(|(_, e)| e).sum::<u64>()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> ReportData {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        ReportData {
            from: day(1),
            to: day(3),
            regions: vec![
                ("KZ-75".into(), 40),
                ("KZ-71".into(), 9),
                ("unknown".into(), 1),
            ],
            offence_types: vec![
                ("traffic.speeding".into(), 30),
                ("traffic.red_light".into(), 20),
            ],
            days: vec![(day(1), 10), (day(2), 0), (day(3), 40)],
            top_cameras: vec![TopRow {
                key: "CAM<1>".into(),
                region: "KZ-75".into(),
                detail: String::new(),
                cameras: 1,
                events: 12,
            }],
            freshness: Freshness {
                events: 50,
                min_seconds: 2,
                median_seconds: 65,
                p90_seconds: 300,
                p99_seconds: 4000,
                max_seconds: 4100,
            },
            generated_at: "2026-12-06 10:00 UTC".into(),
        }
    }

    #[test]
    fn the_report_is_self_contained_and_carries_every_number() {
        let names = Names::builtin(Lang::Ru).unwrap();
        let html = render_report(&data(), &names).unwrap();
        for forbidden in ["http://", "https://", "<script", "src=", "@import", "url("] {
            assert!(!html.contains(forbidden), "{forbidden}");
        }
        assert_eq!(html.matches("<path class=\"region\"").count(), 20);
        assert!(html.contains("data-region=\"KZ-75\" data-events=\"40\" fill=\"#a63603\""));
        assert!(html.contains("data-region=\"KZ-79\" data-events=\"0\" fill=\"#eeeeee\""));
        assert!(html.contains("<title>Алматы: 40</title>"));
        assert!(html.contains("data-type=\"traffic.red_light\" data-events=\"20\""));
        assert!(html.contains("Превышение скорости"));
        assert!(html.contains("data-day=\"2026-11-02\" data-events=\"0\""));
        assert!(html.contains("<td class=\"camera\">CAM&lt;1&gt;</td>"));
        assert!(html.contains("data-median=\"65\""));
        assert!(html.contains("id=\"total\" class=\"total\" data-events=\"50\""));
        assert_eq!(duration_text(65), "1 min 5 s");
        assert_eq!(duration_text(4000), "1 h 6 min");
        assert_eq!(grouped_number(1_234_567), "1\u{2009}234\u{2009}567");
        assert_eq!(fill_of(1, 40), FILLS[0]);
        assert_eq!(fill_of(9, 40), FILLS[1]);
    }
}
