//! Criterion micro-benchmarks of the hot paths: canonical JSON normalisation,
//! event encoding (JSON and binary), the aggregator's event-to-row step, and every vendor decoder on
//! its fixture files (`crates/cctv-normalize/fixtures/<format>/`, the same
//! files the snapshot tests check; throughput is fixtures per second, each
//! normalised with that format's fixture registry), and the ingest's work on
//! a gateway batch of every format's fixtures (split, then each item
//! normalised).

use std::sync::Arc;

use cctv_event::{CameraRegistry, EventView, OffenceEvent, Regions, Taxonomy};
use cctv_normalize::{
    parse_batch, BatchBuilder, BatchEntry, Limits, Normalizer, Outcome, RawMessage,
};
use cctv_store::{EncodedRows, EventRow, StreamPosition};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SAMPLE: &str = r#"{"camera_id":"AST-0412","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:15:05.250+05:00","confidence":0.97,"plate":"404ZXC16","speed_kmh":97,"speed_limit_kmh":70,"source_event_id":"gw7-000184223"}"#;

/// Every vendor format with a fixture directory.
const FORMATS: [&str; 6] = [
    "canonical",
    "hikvision",
    "dahua",
    "onvif",
    "deepstream",
    "frigate",
];

fn normalizer() -> Normalizer {
    Normalizer::new(
        Arc::new(Taxonomy::builtin().unwrap_or_else(|e| panic!("{e}"))),
        Arc::new(Regions::builtin().unwrap_or_else(|e| panic!("{e}"))),
        Arc::new(CameraRegistry::default()),
        Limits::default(),
    )
}

fn canonical(c: &mut Criterion) {
    let normalizer = normalizer();
    let now = chrono::Utc::now();
    let raw = RawMessage {
        format: "canonical",
        gateway_id: "gw7",
        payload: SAMPLE.as_bytes(),
        msg_id: Some("gw7-000184223"),
        camera_id: None,
        received_at: None,
        stored_at: None,
    };
    let mut group = c.benchmark_group("canonical");
    group.throughput(Throughput::Elements(1));
    group.bench_function("normalize", |b| b.iter(|| normalizer.normalize(&raw, now)));
    let Outcome::Offences(events) = normalizer.normalize(&raw, now) else {
        panic!("sample must normalise to an offence");
    };
    group.bench_function("encode_event_json", |b| b.iter(|| events[0].to_json()));
    let mut encoded = Vec::with_capacity(512);
    group.bench_function("encode_event_binary", |b| {
        b.iter(|| {
            encoded.clear();
            events[0].write_binary(&mut encoded);
            encoded.len()
        });
    });
    group.finish();

    // The aggregator's own work per event before the insert: decode the
    // event and encode its row. Binary events (event batch version 2) into
    // RowBinary bytes, as the aggregator does; and, for comparison, JSON
    // events (version 1) into `EventRow` structs, as it did before.
    let json = events[0].to_json();
    let mut binary = Vec::new();
    events[0].write_binary(&mut binary);
    let mut group = c.benchmark_group("aggregator");
    group.throughput(Throughput::Elements(1));
    let mut rows = EncodedRows::new();
    group.bench_function("event_binary_to_encoded_row", |b| {
        b.iter(|| {
            if rows.len() >= 1024 {
                rows = EncodedRows::new();
            }
            let view = EventView::decode(&binary).unwrap_or_else(|e| panic!("{e}"));
            rows.push(&view, "CCTV_EVENTS", "bench", 1);
        });
    });
    group.bench_function("event_json_to_row", |b| {
        b.iter(|| {
            let event = OffenceEvent::from_json(&json).unwrap_or_else(|e| panic!("{e}"));
            EventRow::from_event(
                event,
                "CCTV_EVENTS",
                "bench",
                StreamPosition {
                    stream_seq: 1,
                    batch_first_seq: 1,
                    batch_rows: 1,
                },
                0,
            )
        });
    });
    group.finish();
}

/// Payload files of one format's fixture directory (snapshots, metadata and
/// the registry excluded), with the registry CSV if there is one.
fn fixtures(format: &str) -> (Vec<Vec<u8>>, Option<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/cctv-normalize/fixtures")
        .join(format);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            !name.ends_with(".snap.json") && !name.ends_with(".meta.json") && name != "registry.csv"
        })
        .collect();
    paths.sort();
    let payloads = paths
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect();
    let registry = std::fs::read_to_string(dir.join("registry.csv")).ok();
    (payloads, registry)
}

fn vendor_fixtures(c: &mut Criterion) {
    let mut group = c.benchmark_group("fixtures");
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    for format in FORMATS {
        let (payloads, registry_csv) = fixtures(format);
        let regions = Regions::builtin().unwrap_or_else(|e| panic!("{e}"));
        let registry = registry_csv
            .map(|csv| CameraRegistry::from_csv(&csv, &regions).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_default();
        let normalizer = Normalizer::new(
            Arc::new(Taxonomy::builtin().unwrap_or_else(|e| panic!("{e}"))),
            Arc::new(regions),
            Arc::new(registry),
            Limits::default(),
        );
        group.throughput(Throughput::Elements(payloads.len() as u64));
        group.bench_function(format, |b| {
            b.iter(|| {
                for payload in &payloads {
                    let raw = RawMessage {
                        format,
                        gateway_id: "gw-test",
                        payload,
                        msg_id: None,
                        camera_id: None,
                        received_at: None,
                        stored_at: None,
                    };
                    std::hint::black_box(normalizer.normalize(&raw, now));
                }
            });
        });
    }
    group.finish();
}

/// What the ingest does with a gateway batch before publishing: split it
/// into its items and normalise each. The batch holds every fixture of every
/// format, as a mixed fleet's gateway would send them.
fn mixed_batch(c: &mut Criterion) {
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let mut builder = BatchBuilder::new("gw-bench");
    for format in FORMATS {
        for (n, payload) in fixtures(format).0.iter().enumerate() {
            builder.push(format, &format!("{format}-{n}"), None, None, payload);
        }
    }
    let items = builder.len();
    let batch = builder.finish();
    let normalizer = normalizer();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(items as u64));
    group.bench_function("mixed_fixtures", |b| {
        b.iter(|| {
            let entries = parse_batch(&batch, "gw-bench").unwrap_or_else(|e| panic!("{e:?}"));
            for entry in &entries {
                if let BatchEntry::Item(item) = entry {
                    std::hint::black_box(normalizer.normalize(&item.raw("gw-bench", None), now));
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, canonical, vendor_fixtures, mixed_batch);
criterion_main!(benches);
