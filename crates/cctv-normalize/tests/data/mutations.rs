//! Bounded fuzzing of every decoder: mutated fixtures and random bytes must
//! each end in a typed outcome, never a panic, and every offence produced
//! must satisfy the checks the normaliser promises (time window, confidence
//! range, event count). `examples/fuzz.rs` runs the same loop for longer.

use cctv_normalize::Format;

use crate::fixtures::{load, normalizer, now};
use crate::mutate::{mutate, random_bytes, violation, Rng};

/// Inputs per format per test run: enough to reach every decoder branch the
/// fixtures lead to, small enough for CI (well under a second per format).
const CASES_PER_FORMAT: usize = 20_000;

fn fuzz_format(format: Format, seed: u64) {
    let normalizer = normalizer(format);
    let fixtures = load(format);
    let mut rng = Rng::new(seed);
    for case in 0..CASES_PER_FORMAT {
        let input = if fixtures.is_empty() || case % 10 == 0 {
            random_bytes(&mut rng)
        } else {
            let fixture = &fixtures[rng.below(fixtures.len())];
            mutate(&fixture.payload, &mut rng)
        };
        let fixture_meta = fixtures.first();
        let raw = match fixture_meta {
            Some(fixture) => fixture.raw(&input),
            None => cctv_normalize::RawMessage {
                format: format.as_str(),
                gateway_id: "gw-fuzz",
                payload: &input,
                msg_id: None,
                camera_id: None,
                received_at: None,
                stored_at: None,
            },
        };
        let outcome = std::panic::catch_unwind(|| normalizer.normalize(&raw, now()))
            .unwrap_or_else(|_| {
                panic!(
                    "{} decoder panicked on case {case} (seed {seed}): {:?}",
                    format.as_str(),
                    String::from_utf8_lossy(&input)
                )
            });
        if let Some(complaint) = violation(&outcome, normalizer.limits(), now()) {
            panic!(
                "{} case {case} (seed {seed}): {complaint}: {:?}",
                format.as_str(),
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn canonical_survives_mutation() {
    fuzz_format(Format::Canonical, 1);
}

#[test]
fn hikvision_survives_mutation() {
    fuzz_format(Format::Hikvision, 2);
}

#[test]
fn dahua_survives_mutation() {
    fuzz_format(Format::Dahua, 3);
}

#[test]
fn onvif_survives_mutation() {
    fuzz_format(Format::Onvif, 4);
}

#[test]
fn deepstream_survives_mutation() {
    fuzz_format(Format::Deepstream, 5);
}

#[test]
fn frigate_survives_mutation() {
    fuzz_format(Format::Frigate, 6);
}
