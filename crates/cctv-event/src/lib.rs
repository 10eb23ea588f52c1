//! The canonical offence event and the reference data it is built from.
//!
//! Everything here is pure data: the wire type published on `CCTV_EVENTS`
//! ([`OffenceEvent`]), the offence [`Taxonomy`], the [`Regions`] of Kazakhstan,
//! the [`CameraRegistry`], and the deterministic [`event_id`] derivation. The
//! reference data ships in `data/` and is compiled in as the default; each can
//! be replaced by a file at start without a rebuild.

mod binary;
mod error;
mod event;
mod identity;
mod regions;
mod registry;
mod taxonomy;
mod wire_time;

pub use binary::{field as binary_field, put_varint, EventDecodeError, EventView};
pub use error::DataError;
pub use event::{OffenceEvent, RegionSource, EVENT_SCHEMA_VERSION};
pub use identity::{event_id, EVENT_ID_NAMESPACE};
pub use regions::{Region, Regions, UNKNOWN_REGION};
pub use registry::{Camera, CameraRegistry};
pub use taxonomy::{alias_key, NameMatch, Offence, Taxonomy};
