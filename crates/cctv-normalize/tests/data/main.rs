//! Data-driven tests of the normaliser: every fixture under `fixtures/`
//! against its snapshot, and bounded mutation fuzzing of every decoder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;
mod mutate;
mod mutations;
mod snapshots;
