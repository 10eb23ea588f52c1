//! Loading fixtures: `fixtures/<format>/<case>.<ext>` is the payload exactly as
//! a gateway would publish it; `<case>.<ext>.meta.json` (optional) gives the
//! message metadata; `<case>.<ext>.snap.json` is the expected outcome;
//! `fixtures/<format>/registry.csv` (optional) is the camera registry the
//! format's fixtures are normalised against.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{Format, Limits, Normalizer, Outcome, RawMessage};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The ingest time every fixture is normalised at.
pub(crate) const NOW: &str = "2026-11-28T00:00:00Z";

/// Message metadata of a fixture (headers and subject tokens).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Meta {
    pub(crate) gateway_id: Option<String>,
    pub(crate) msg_id: Option<String>,
    pub(crate) camera_id: Option<String>,
    pub(crate) received_at: Option<String>,
}

/// One fixture file.
pub(crate) struct Fixture {
    pub(crate) format: Format,
    pub(crate) path: PathBuf,
    pub(crate) payload: Vec<u8>,
    pub(crate) meta: Meta,
}

impl Fixture {
    /// The snapshot path next to the payload.
    pub(crate) fn snapshot_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap().to_os_string();
        name.push(".snap.json");
        self.path.with_file_name(name)
    }

    /// A raw message over `payload` with this fixture's metadata.
    pub(crate) fn raw<'a>(&'a self, payload: &'a [u8]) -> RawMessage<'a> {
        RawMessage {
            format: self.format.as_str(),
            gateway_id: self.meta.gateway_id.as_deref().unwrap_or("gw-test"),
            payload,
            msg_id: self.meta.msg_id.as_deref(),
            camera_id: self.meta.camera_id.as_deref(),
            received_at: self.meta.received_at.as_deref(),
            stored_at: None,
        }
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .unwrap()
        .with_timezone(&Utc)
}

/// Every fixture of `format`, sorted by file name.
pub(crate) fn load(format: Format) -> Vec<Fixture> {
    let dir = root().join(format.as_str());
    let mut fixtures = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return fixtures;
    };
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".snap.json") || name.ends_with(".meta.json") || name == "registry.csv" {
            continue;
        }
        let mut meta_name = path.file_name().unwrap().to_os_string();
        meta_name.push(".meta.json");
        let meta_path = path.with_file_name(meta_name);
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
            Err(_) => Meta::default(),
        };
        fixtures.push(Fixture {
            format,
            payload: std::fs::read(&path).unwrap(),
            path,
            meta,
        });
    }
    fixtures
}

/// The normaliser for `format`'s fixtures: builtin taxonomy and regions,
/// the format's own registry file if it has one.
pub(crate) fn normalizer(format: Format) -> Normalizer {
    let regions = Regions::builtin().unwrap();
    let registry_path = root().join(format.as_str()).join("registry.csv");
    let registry = if registry_path.exists() {
        CameraRegistry::load(&registry_path, &regions).unwrap()
    } else {
        CameraRegistry::default()
    };
    Normalizer::new(
        Arc::new(Taxonomy::builtin().unwrap()),
        Arc::new(regions),
        Arc::new(registry),
        Limits::default(),
    )
}

/// The stable JSON form of an outcome, as stored in snapshots.
pub(crate) fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Offences(events) => serde_json::json!({
            "outcome": "offences",
            "events": events
                .iter()
                .map(|event| serde_json::from_slice::<serde_json::Value>(&event.to_json()).unwrap())
                .collect::<Vec<_>>(),
        }),
        Outcome::Ignored(reason) => serde_json::json!({
            "outcome": "ignored",
            "reason": reason.as_str(),
        }),
        Outcome::Rejected(rejection) => serde_json::json!({
            "outcome": "rejected",
            "reason": rejection.reason.as_str(),
            "detail": rejection.detail,
        }),
    }
}
