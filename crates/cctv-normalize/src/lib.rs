//! Pure normalisation: a raw vendor message (bytes plus metadata) in, a typed
//! [`Outcome`] out: canonical offences, `ignored(reason)` or
//! `rejected(reason)`. No IO, no clock of its own (the caller passes `now`).
//!
//! Decoding is split in two steps. A per-format decoder turns the payload into
//! vendor-neutral [`Detection`]s; the [`Normalizer`] then resolves the offence
//! name through the taxonomy, the camera through the registry, checks times and
//! ranges, derives the deterministic event id and builds the
//! [`cctv_event::OffenceEvent`]. With a [`PlateKey`]
//! ([`Normalizer::with_plate_key`]) plates leave as a keyed hash, never in
//! clear.
//!
//! A CloudEvents batch (many vendor messages in one NATS message) is split by
//! [`parse_batch`] into [`BatchItem`]s, each normalised exactly like a single
//! message through [`BatchItem::raw`]; [`BatchBuilder`] writes batches.

mod batch;
mod canonical;
mod dahua;
mod decode;
mod deepstream;
mod detection;
mod format;
mod frigate;
mod hikvision;
mod json;
mod limits;
mod normalizer;
mod onvif;
mod outcome;
mod plate;
mod raw;
mod time;
mod xml;

pub use batch::{
    parse_batch, BatchBuilder, BatchEntry, BatchItem, BATCH_CONTENT_TYPE, MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
};
pub use detection::{Confidence, Detection};
pub use format::Format;
pub use limits::Limits;
pub use normalizer::Normalizer;
pub use outcome::{IgnoreReason, Outcome, RejectReason, Rejection};
pub use plate::{normalise_plate, PlateKey, PLATE_HASH_PREFIX};
pub use raw::RawMessage;
pub use time::{epoch_to_utc, parse_rfc3339};
