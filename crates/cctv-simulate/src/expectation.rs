//! The totals a simulated run must produce, and the cell-by-cell comparison
//! of expected and counted totals.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use cctv_store::TotalsRow;
use serde::{Deserialize, Serialize};

/// What `cctvctl simulate --expect-out` writes and `cctvctl totals --expect`
/// reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// The simulation run.
    pub run_id: String,
    /// Every gateway of the run has an id starting with this.
    pub gateway_prefix: String,
    /// Distinct events published (republished duplicates not included).
    pub count: u64,
    /// Expected totals, sorted by region then offence type.
    pub totals: Vec<TotalsRow>,
    /// What the ingest service must make of the run's raw messages
    /// (republished exact copies excluded: the raw stream drops them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawOutcomes>,
}

/// Expected outcomes of a run's distinct raw messages; they add up to
/// `published`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawOutcomes {
    /// Distinct raw messages published.
    pub published: u64,
    /// Messages carrying an offence not seen before.
    pub counted: u64,
    /// Messages repeating an offence already counted.
    pub duplicate: u64,
    /// Valid messages that are not offences.
    pub ignored: u64,
    /// Broken messages.
    pub dead_lettered: u64,
}

impl RawOutcomes {
    /// Tallies one message.
    pub(crate) fn add(&mut self, expected: crate::vendors::Expected) {
        use crate::vendors::Expected;
        self.published += 1;
        match expected {
            Expected::Counted => self.counted += 1,
            Expected::Duplicate => self.duplicate += 1,
            Expected::Ignored => self.ignored += 1,
            Expected::DeadLettered => self.dead_lettered += 1,
        }
    }
}

impl Expectation {
    /// Builds an expectation from per-cell counts.
    pub fn new(
        run_id: &str,
        gateway_prefix: &str,
        cells: &BTreeMap<(String, String), u64>,
    ) -> Self {
        let totals: Vec<TotalsRow> = cells
            .iter()
            .map(|((region, offence_type), &events)| TotalsRow {
                region: region.clone(),
                offence_type: offence_type.clone(),
                events,
            })
            .collect();
        Self {
            run_id: run_id.to_string(),
            gateway_prefix: gateway_prefix.to_string(),
            count: totals.iter().map(|row| row.events).sum(),
            totals,
            raw: None,
        }
    }

    /// Writes the expectation as pretty JSON.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text =
            serde_json::to_string_pretty(self).context("failed to encode the expectation")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("failed to write {}", path.display()))
    }

    /// Reads an expectation written by [`Expectation::save`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("failed to parse expectation {}", path.display()))
    }
}

/// One region x offence cell whose counted total differs from the expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellDiff {
    /// Region code or `unknown`.
    pub region: String,
    /// Canonical offence code.
    pub offence_type: String,
    /// Expected events (0 when the cell was not expected at all).
    pub expected: u64,
    /// Counted events (0 when the cell is missing).
    pub actual: u64,
}

/// Every cell where `actual` differs from `expected`, sorted by region and
/// type. Cells with zero events on both sides are equal.
pub fn compare_totals(expected: &[TotalsRow], actual: &[TotalsRow]) -> Vec<CellDiff> {
    let mut cells: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for row in expected {
        cells.entry((&row.region, &row.offence_type)).or_default().0 += row.events;
    }
    for row in actual {
        cells.entry((&row.region, &row.offence_type)).or_default().1 += row.events;
    }
    cells
        .into_iter()
        .filter(|(_, (expected, actual))| expected != actual)
        .map(|((region, offence_type), (expected, actual))| CellDiff {
            region: region.to_string(),
            offence_type: offence_type.to_string(),
            expected,
            actual,
        })
        .collect()
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
    fn expectation_round_trips_through_json_and_counts_events() {
        let mut cells = BTreeMap::new();
        cells.insert(("KZ-75".to_string(), "traffic.speeding".to_string()), 7);
        cells.insert(("unknown".to_string(), "traffic.red_light".to_string()), 2);
        let expectation = Expectation::new("ab12cd34", "sim-ab12cd34-", &cells);
        assert_eq!(expectation.count, 9);
        let dir = std::env::temp_dir().join(format!("cctvctl-expect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("expect.json");
        expectation.save(&path).unwrap();
        let loaded = Expectation::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded, expectation);
        let text = serde_json::to_string(&expectation).unwrap();
        assert!(
            text.contains("\"gateway_prefix\":\"sim-ab12cd34-\""),
            "{text}"
        );
        assert!(text
            .contains("{\"region\":\"KZ-75\",\"offence_type\":\"traffic.speeding\",\"events\":7}"));
    }

    #[test]
    fn comparison_reports_only_differing_cells() {
        let expected = vec![
            row("KZ-10", "a.x", 3),
            row("KZ-10", "a.y", 1),
            row("KZ-75", "a.x", 5),
        ];
        assert!(compare_totals(&expected, &expected).is_empty());
        let actual = vec![
            row("KZ-10", "a.x", 3),
            row("KZ-75", "a.x", 6),
            row("unknown", "a.x", 1),
        ];
        let diffs = compare_totals(&expected, &actual);
        assert_eq!(
            diffs,
            vec![
                CellDiff {
                    region: "KZ-10".into(),
                    offence_type: "a.y".into(),
                    expected: 1,
                    actual: 0
                },
                CellDiff {
                    region: "KZ-75".into(),
                    offence_type: "a.x".into(),
                    expected: 5,
                    actual: 6
                },
                CellDiff {
                    region: "unknown".into(),
                    offence_type: "a.x".into(),
                    expected: 0,
                    actual: 1
                },
            ]
        );
        // A zero row on one side equals an absent row on the other.
        assert!(compare_totals(&[row("KZ-10", "a.x", 0)], &[]).is_empty());
    }
}
