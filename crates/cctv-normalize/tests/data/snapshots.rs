//! Every fixture normalises to exactly its snapshot. Run with
//! `UPDATE_SNAPSHOTS=1` to write missing or changed snapshots, then review the
//! diff before committing.

use cctv_normalize::Format;

use crate::fixtures::{load, normalizer, now, outcome_json};

/// Fixtures each vendor format must have (issue: at least 15 per vendor).
const MIN_FIXTURES_PER_VENDOR: usize = 15;

fn check_format(format: Format) -> Vec<String> {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let normalizer = normalizer(format);
    let mut failures = Vec::new();
    for fixture in load(format) {
        let outcome = normalizer.normalize(&fixture.raw(&fixture.payload), now());
        let actual = outcome_json(&outcome);
        let rendered = format!("{}\n", serde_json::to_string_pretty(&actual).unwrap());
        let snapshot_path = fixture.snapshot_path();
        let expected = std::fs::read_to_string(&snapshot_path).ok();
        if expected.as_deref() == Some(rendered.as_str()) {
            continue;
        }
        if update {
            std::fs::write(&snapshot_path, &rendered).unwrap();
            continue;
        }
        failures.push(match expected {
            None => format!(
                "{}: no snapshot; actual:\n{rendered}",
                fixture.path.display()
            ),
            Some(expected) => format!(
                "{}: snapshot differs\nexpected:\n{expected}actual:\n{rendered}",
                fixture.path.display()
            ),
        });
    }
    failures
}

fn assert_format(format: Format) {
    let failures = check_format(format);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if format != Format::Canonical {
        let count = load(format).len();
        assert!(
            count >= MIN_FIXTURES_PER_VENDOR,
            "{} has {count} fixtures, at least {MIN_FIXTURES_PER_VENDOR} expected",
            format.as_str()
        );
    }
}

#[test]
fn canonical_fixtures_match_their_snapshots() {
    assert_format(Format::Canonical);
}

#[test]
fn hikvision_fixtures_match_their_snapshots() {
    assert_format(Format::Hikvision);
}

#[test]
fn dahua_fixtures_match_their_snapshots() {
    assert_format(Format::Dahua);
}

#[test]
fn onvif_fixtures_match_their_snapshots() {
    assert_format(Format::Onvif);
}

#[test]
fn deepstream_fixtures_match_their_snapshots() {
    assert_format(Format::Deepstream);
}

#[test]
fn frigate_fixtures_match_their_snapshots() {
    assert_format(Format::Frigate);
}
