//! Criterion micro-benchmarks of the hot path of the ingest service:
//! canonical JSON normalisation and event encoding.

use std::sync::Arc;

use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{Limits, Normalizer, Outcome, RawMessage};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SAMPLE: &str = r#"{"camera_id":"AST-0412","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:15:05.250+05:00","confidence":0.97,"plate":"404ZXC16","speed_kmh":97,"speed_limit_kmh":70,"source_event_id":"gw7-000184223"}"#;

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
    group.finish();
}

criterion_group!(benches, canonical);
criterion_main!(benches);
