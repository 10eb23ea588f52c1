//! Unique names for per-test ClickHouse databases and NATS streams.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Counter that makes names unique within one process.
static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns `t_<prefix>_<pid>_<counter>_<random>`, unique across processes and calls.
///
/// Characters of `prefix` outside `[A-Za-z0-9_]` become `_`, so the result is a valid
/// ClickHouse identifier and NATS stream or consumer name. It starts with a letter.
pub fn unique_name(prefix: &str) -> String {
    let sanitized_prefix: String = prefix
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '_' {
                character
            } else {
                '_'
            }
        })
        .collect();
    let counter = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    // RandomState is seeded randomly per process, which is all the randomness needed.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(counter);
    hasher.write_u32(nanos);
    let random = hasher.finish() & 0xff_ffff;
    format!(
        "t_{sanitized_prefix}_{}_{counter}_{random:06x}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_use_safe_characters() {
        let first = unique_name("my-test.db");
        let second = unique_name("my-test.db");
        assert_ne!(first, second);
        assert!(first.starts_with("t_my_test_db_"));
        assert!(first
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_'));
    }
}
