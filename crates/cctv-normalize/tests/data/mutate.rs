//! A small deterministic mutation engine for fuzzing the decoders without
//! nightly tooling: byte flips, truncations, splices, duplications and
//! insertions of tokens that stress parsers (brackets, entities, huge
//! numbers, control bytes). Shared by the bounded test and `examples/fuzz.rs`.

use cctv_normalize::{Limits, Outcome};
use chrono::{DateTime, Utc};

/// xorshift64*: deterministic, seedable, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let value = (self.next() % bound as u64) as usize;
        value
    }
}

/// Tokens that tend to reach unusual parser and decoder paths.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"<",
    b">",
    b"/>",
    b"</",
    b"&",
    b"&amp;",
    b"&lol;",
    b"&#0;",
    b"&#x110000;",
    b"<!DOCTYPE x [<!ENTITY a \"b\">]>",
    b"<![CDATA[",
    b"]]>",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e308",
    b"-1e308",
    b"99999999999999999999",
    b"1795749305",
    b"1795749305250",
    b"1795749305250000",
    b"NaN",
    b"\"\"",
    b"\\u0000",
    b"\\ud800",
    b"\x00",
    b"\xff",
    b"\xc3\x28",
    b"\r\n",
    b";",
    b"=",
    b"data=",
    b"Code=",
    b"action=Start",
    b"action=Stop",
    b"2026-11-27T08:15:05+05:00",
    b"2099-01-01T00:00:00Z",
    b"1970-01-01T00:00:00Z",
    b"+14:00",
    b"Initialized",
    b"Changed",
    b"true",
    b"inactive",
    b"active",
    b"TrafficJunction",
    b"illegalParking,congestion",
    b"end",
    b"new",
];

/// Returns a mutated copy of `input`.
pub(crate) fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(8) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                #[allow(clippy::cast_possible_truncation)]
                let bit = 1u8 << (rng.next() % 8) as u8;
                data[at] ^= bit;
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data.truncate(at);
            }
            2 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(32)).min(data.len());
                data.drain(start..end);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(64)).min(data.len());
                let copy = data[start..end].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, copy);
            }
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(data.len() + 1);
                data.splice(at..at, token.iter().copied());
            }
            5 if !data.is_empty() => {
                // Replace a digit run or a byte with a token.
                let at = rng.below(data.len());
                let token = TOKENS[rng.below(TOKENS.len())];
                let end = (at + 1).min(data.len());
                data.splice(at..end, token.iter().copied());
            }
            6 => {
                #[allow(clippy::cast_possible_truncation)]
                let byte = rng.next() as u8;
                let at = rng.below(data.len() + 1);
                data.insert(at, byte);
            }
            _ => {
                // Repeat a slice many times (huge fields, deep nesting).
                if data.is_empty() {
                    continue;
                }
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(8)).min(data.len());
                let copy = data[start..end].to_vec();
                let times = 1 + rng.below(2000);
                let at = rng.below(data.len() + 1);
                let repeated: Vec<u8> = copy
                    .iter()
                    .copied()
                    .cycle()
                    .take(copy.len() * times)
                    .collect();
                data.splice(at..at, repeated);
            }
        }
    }
    data
}

/// Random bytes, sometimes printable only.
pub(crate) fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(512);
    let printable = rng.below(2) == 0;
    (0..len)
        .map(|_| {
            #[allow(clippy::cast_possible_truncation)]
            let byte = rng.next() as u8;
            if printable {
                b' ' + byte % 95
            } else {
                byte
            }
        })
        .collect()
}

/// Checks an outcome against the normaliser's promises; returns a complaint.
pub(crate) fn violation(outcome: &Outcome, limits: &Limits, now: DateTime<Utc>) -> Option<String> {
    let Outcome::Offences(events) = outcome else {
        return None;
    };
    if events.is_empty() {
        return Some("an empty offence list".into());
    }
    if events.len() > limits.max_events_per_message {
        return Some(format!("{} offences in one message", events.len()));
    }
    for event in events {
        if event.detected_at > now + limits.max_future || event.detected_at < now - limits.max_past
        {
            return Some(format!(
                "detected_at {} outside the window",
                event.detected_at
            ));
        }
        if let Some(confidence) = event.confidence {
            if !(0.0..=1.0).contains(&confidence) {
                return Some(format!("confidence {confidence}"));
            }
        }
        if event.offence_type.is_empty() || event.camera_id.is_empty() || event.region.is_empty() {
            return Some("an empty required field".into());
        }
    }
    None
}
