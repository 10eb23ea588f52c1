//! Long-running mutation fuzzer for the decoders (stable Rust, no nightly
//! tooling): mutates the fixtures of each format and random bytes for a
//! given time and stops at the first panic or broken promise, printing the
//! input. The test suite runs the same loop for a bounded number of cases.
//!
//! ```text
//! cargo run --release -p cctv-normalize --example fuzz -- [SECONDS] [FORMAT...]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/data/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;
#[path = "../tests/data/mutate.rs"]
mod mutate;

use std::time::{Duration, Instant};

use cctv_normalize::Format;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args
        .next()
        .map(|text| text.parse().expect("SECONDS must be a number"))
        .unwrap_or(60);
    let mut formats: Vec<Format> = args
        .map(|token| Format::parse(&token).unwrap_or_else(|| panic!("unknown format {token}")))
        .collect();
    if formats.is_empty() {
        formats = Format::ALL.to_vec();
    }
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let budget = Duration::from_secs(seconds) / u32::try_from(formats.len()).unwrap_or(1);
    for format in formats {
        let normalizer = fixtures::normalizer(format);
        let corpus = fixtures::load(format);
        let mut rng = mutate::Rng::new(seed ^ (format as u64 + 1));
        let started = Instant::now();
        let mut cases = 0u64;
        while started.elapsed() < budget {
            let input = if corpus.is_empty() || cases.is_multiple_of(10) {
                mutate::random_bytes(&mut rng)
            } else {
                mutate::mutate(&corpus[rng.below(corpus.len())].payload, &mut rng)
            };
            let raw = cctv_normalize::RawMessage {
                format: format.as_str(),
                gateway_id: "gw-fuzz",
                payload: &input,
                msg_id: None,
                camera_id: None,
                received_at: None,
                stored_at: None,
            };
            let result = std::panic::catch_unwind(|| normalizer.normalize(&raw, fixtures::now()));
            let complaint = match &result {
                Err(_) => Some("panic".to_string()),
                Ok(outcome) => mutate::violation(outcome, normalizer.limits(), fixtures::now()),
            };
            if let Some(complaint) = complaint {
                eprintln!(
                    "{}: {complaint} after {cases} cases (FUZZ_SEED={seed}); input:\n{:?}",
                    format.as_str(),
                    String::from_utf8_lossy(&input)
                );
                std::process::exit(1);
            }
            cases += 1;
        }
        println!(
            "{}: {cases} cases in {:.1} s, no panic, no broken promise (FUZZ_SEED={seed})",
            format.as_str(),
            started.elapsed().as_secs_f64()
        );
    }
}
