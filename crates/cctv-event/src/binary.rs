//! The event's binary encoding: one Protocol Buffers message per event, as
//! declared in `proto/offence_event.proto` (field numbers, types, meaning).
//!
//! Written and read by hand rather than through generated code: encoding
//! appends to a caller's buffer, and decoding borrows every text from the
//! message ([`EventView`]), so the aggregator turns an event into a row
//! without allocating. The bytes are exactly what a protobuf library writes
//! for the same message (fields in number order, proto3 defaults left out,
//! `optional` fields present when set); the tests check that against prost
//! in both directions, and check the field numbers against the `.proto` file.
//!
//! About 40 % of the event's JSON size, and several times cheaper to write
//! and read (`cargo bench -p cctv-benches`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{OffenceEvent, RegionSource};

/// Field numbers of `cctv.event.OffenceEvent` (`proto/offence_event.proto`).
pub mod field {
    /// `uint32 v`: the event schema version.
    pub const V: u32 = 1;
    /// `bytes event_id`: 16 bytes.
    pub const EVENT_ID: u32 = 2;
    /// `string offence_type`.
    pub const OFFENCE_TYPE: u32 = 3;
    /// `string offence_family`.
    pub const OFFENCE_FAMILY: u32 = 4;
    /// `string legal_category`.
    pub const LEGAL_CATEGORY: u32 = 5;
    /// `string article`.
    pub const ARTICLE: u32 = 6;
    /// `int64 detected_at_seconds`.
    pub const DETECTED_AT_SECONDS: u32 = 7;
    /// `uint32 detected_at_nanos`.
    pub const DETECTED_AT_NANOS: u32 = 8;
    /// `string camera_id`.
    pub const CAMERA_ID: u32 = 9;
    /// `string region`.
    pub const REGION: u32 = 10;
    /// `RegionSource region_source`.
    pub const REGION_SOURCE: u32 = 11;
    /// `string source_format`.
    pub const SOURCE_FORMAT: u32 = 12;
    /// `string gateway_id`.
    pub const GATEWAY_ID: u32 = 13;
    /// `int64 ingested_at_seconds`.
    pub const INGESTED_AT_SECONDS: u32 = 14;
    /// `uint32 ingested_at_nanos`.
    pub const INGESTED_AT_NANOS: u32 = 15;
    /// `string district`.
    pub const DISTRICT: u32 = 16;
    /// `optional string device_time`.
    pub const DEVICE_TIME: u32 = 17;
    /// `optional int64 received_at_seconds`.
    pub const RECEIVED_AT_SECONDS: u32 = 18;
    /// `uint32 received_at_nanos`.
    pub const RECEIVED_AT_NANOS: u32 = 19;
    /// `bool clock_skew`.
    pub const CLOCK_SKEW: u32 = 20;
    /// `optional string source_event_id`.
    pub const SOURCE_EVENT_ID: u32 = 21;
    /// `optional float confidence`.
    pub const CONFIDENCE: u32 = 22;
    /// `optional double confidence_raw`.
    pub const CONFIDENCE_RAW: u32 = 23;
    /// `optional string plate`.
    pub const PLATE: u32 = 24;
    /// `optional float speed_kmh`.
    pub const SPEED_KMH: u32 = 25;
    /// `optional float speed_limit_kmh`.
    pub const SPEED_LIMIT_KMH: u32 = 26;
    /// `optional double lat`.
    pub const LAT: u32 = 27;
    /// `optional double lon`.
    pub const LON: u32 = 28;
    /// `optional string evidence_url`.
    pub const EVIDENCE_URL: u32 = 29;
}

/// Protobuf wire types used here.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Bytes reserved per event: a typical event encodes to 200-300 bytes.
const TYPICAL_LEN: usize = 320;

/// Why bytes are not a readable binary event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// The bytes end inside a field.
    #[error("binary event truncated at byte {at}")]
    Truncated {
        /// Offset where the data ran out.
        at: usize,
    },
    /// A varint longer than 10 bytes.
    #[error("binary event has an overlong varint at byte {at}")]
    Varint {
        /// Offset of the varint.
        at: usize,
    },
    /// A known field with another wire type than its declaration, or a
    /// wire type protobuf no longer uses (groups).
    #[error("binary event field {field} has wire type {wire_type}")]
    WireType {
        /// Field number.
        field: u32,
        /// Wire type found.
        wire_type: u8,
    },
    /// A field whose value is out of range or malformed.
    #[error("binary event field {field} is invalid: {reason}")]
    Invalid {
        /// Field number.
        field: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// No 16-byte event id.
    #[error("binary event has no event id")]
    MissingEventId,
}

/// A canonical event borrowed from its binary encoding (or from an
/// [`OffenceEvent`], [`OffenceEvent::view`]): the same fields, texts as
/// `&str`. What the aggregator turns into a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventView<'a> {
    /// Wire schema version.
    pub schema_version: u16,
    /// Event id.
    pub event_id: Uuid,
    /// Canonical offence code.
    pub offence_type: &'a str,
    /// Family of the code.
    pub offence_family: &'a str,
    /// Legal category.
    pub legal_category: &'a str,
    /// Article, empty when none is known.
    pub article: &'a str,
    /// When the offence happened.
    pub detected_at: DateTime<Utc>,
    /// The device's own time text.
    pub device_time: Option<&'a str>,
    /// When the gateway received the message.
    pub received_at: Option<DateTime<Utc>>,
    /// When the ingest normalised it.
    pub ingested_at: DateTime<Utc>,
    /// Device clock ahead of receipt.
    pub clock_skew: bool,
    /// Camera id.
    pub camera_id: &'a str,
    /// Region code or `unknown`.
    pub region: &'a str,
    /// Where the region came from.
    pub region_source: RegionSource,
    /// District, empty when unknown.
    pub district: &'a str,
    /// Payload format.
    pub source_format: &'a str,
    /// Gateway.
    pub gateway_id: &'a str,
    /// The source's own event id.
    pub source_event_id: Option<&'a str>,
    /// Confidence 0..1.
    pub confidence: Option<f32>,
    /// Confidence on the source's scale.
    pub confidence_raw: Option<f64>,
    /// Plate as read (or its keyed hash).
    pub plate: Option<&'a str>,
    /// Speed, km/h.
    pub speed_kmh: Option<f32>,
    /// Speed limit, km/h.
    pub speed_limit_kmh: Option<f32>,
    /// Latitude.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Evidence link.
    pub evidence_url: Option<&'a str>,
}

impl OffenceEvent {
    /// The event's fields, borrowed.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            schema_version: self.schema_version,
            event_id: self.event_id,
            offence_type: &self.offence_type,
            offence_family: &self.offence_family,
            legal_category: &self.legal_category,
            article: &self.article,
            detected_at: self.detected_at,
            device_time: self.device_time.as_deref(),
            received_at: self.received_at,
            ingested_at: self.ingested_at,
            clock_skew: self.clock_skew,
            camera_id: &self.camera_id,
            region: &self.region,
            region_source: self.region_source,
            district: &self.district,
            source_format: &self.source_format,
            gateway_id: &self.gateway_id,
            source_event_id: self.source_event_id.as_deref(),
            confidence: self.confidence,
            confidence_raw: self.confidence_raw,
            plate: self.plate.as_deref(),
            speed_kmh: self.speed_kmh,
            speed_limit_kmh: self.speed_limit_kmh,
            lat: self.lat,
            lon: self.lon,
            evidence_url: self.evidence_url.as_deref(),
        }
    }

    /// Appends the event's binary encoding to `out`.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        self.view().write_binary(out);
    }

    /// Parses an event from its binary encoding.
    pub fn from_binary(bytes: &[u8]) -> Result<Self, EventDecodeError> {
        EventView::decode(bytes).map(|view| view.to_event())
    }
}

impl<'a> EventView<'a> {
    /// The owned event.
    pub fn to_event(&self) -> OffenceEvent {
        OffenceEvent {
            schema_version: self.schema_version,
            event_id: self.event_id,
            offence_type: self.offence_type.to_string(),
            offence_family: self.offence_family.to_string(),
            legal_category: self.legal_category.to_string(),
            article: self.article.to_string(),
            detected_at: self.detected_at,
            device_time: self.device_time.map(str::to_string),
            received_at: self.received_at,
            ingested_at: self.ingested_at,
            clock_skew: self.clock_skew,
            camera_id: self.camera_id.to_string(),
            region: self.region.to_string(),
            region_source: self.region_source,
            district: self.district.to_string(),
            source_format: self.source_format.to_string(),
            gateway_id: self.gateway_id.to_string(),
            source_event_id: self.source_event_id.map(str::to_string),
            confidence: self.confidence,
            confidence_raw: self.confidence_raw,
            plate: self.plate.map(str::to_string),
            speed_kmh: self.speed_kmh,
            speed_limit_kmh: self.speed_limit_kmh,
            lat: self.lat,
            lon: self.lon,
            evidence_url: self.evidence_url.map(str::to_string),
        }
    }

    /// Appends the binary encoding to `out`: fields in number order, proto3
    /// defaults (0, "", false) left out, optional fields written when set.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        use field::*;
        out.reserve(TYPICAL_LEN);
        put_uint(out, V, u64::from(self.schema_version));
        put_bytes(out, EVENT_ID, self.event_id.as_bytes());
        put_str(out, OFFENCE_TYPE, self.offence_type);
        put_str(out, OFFENCE_FAMILY, self.offence_family);
        put_str(out, LEGAL_CATEGORY, self.legal_category);
        put_str(out, ARTICLE, self.article);
        put_time(
            out,
            DETECTED_AT_SECONDS,
            DETECTED_AT_NANOS,
            &self.detected_at,
        );
        put_str(out, CAMERA_ID, self.camera_id);
        put_str(out, REGION, self.region);
        put_uint(out, REGION_SOURCE, region_source_number(self.region_source));
        put_str(out, SOURCE_FORMAT, self.source_format);
        put_str(out, GATEWAY_ID, self.gateway_id);
        put_time(
            out,
            INGESTED_AT_SECONDS,
            INGESTED_AT_NANOS,
            &self.ingested_at,
        );
        put_str(out, DISTRICT, self.district);
        if let Some(device_time) = self.device_time {
            put_bytes(out, DEVICE_TIME, device_time.as_bytes());
        }
        if let Some(received_at) = &self.received_at {
            put_key(out, RECEIVED_AT_SECONDS, VARINT);
            put_varint(out, int64_bits(received_at.timestamp()));
            put_uint(
                out,
                RECEIVED_AT_NANOS,
                u64::from(received_at.timestamp_subsec_nanos()),
            );
        }
        put_uint(out, CLOCK_SKEW, u64::from(self.clock_skew));
        if let Some(source_event_id) = self.source_event_id {
            put_bytes(out, SOURCE_EVENT_ID, source_event_id.as_bytes());
        }
        if let Some(confidence) = self.confidence {
            put_f32(out, CONFIDENCE, confidence);
        }
        if let Some(confidence_raw) = self.confidence_raw {
            put_f64(out, CONFIDENCE_RAW, confidence_raw);
        }
        if let Some(plate) = self.plate {
            put_bytes(out, PLATE, plate.as_bytes());
        }
        if let Some(speed) = self.speed_kmh {
            put_f32(out, SPEED_KMH, speed);
        }
        if let Some(limit) = self.speed_limit_kmh {
            put_f32(out, SPEED_LIMIT_KMH, limit);
        }
        if let Some(lat) = self.lat {
            put_f64(out, LAT, lat);
        }
        if let Some(lon) = self.lon {
            put_f64(out, LON, lon);
        }
        if let Some(url) = self.evidence_url {
            put_bytes(out, EVIDENCE_URL, url.as_bytes());
        }
    }

    /// Reads a binary event, borrowing its texts from `bytes`. Fields may
    /// come in any order (a later value of a field wins, as in protobuf);
    /// unknown fields are skipped; a known field with the wrong wire type,
    /// a truncated message, a text that is not UTF-8 or an event id that is
    /// not 16 bytes is an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EventDecodeError> {
        use field::*;
        let mut input = Input { bytes, at: 0 };
        let mut event_id = None;
        let mut view = EventView {
            schema_version: 0,
            event_id: Uuid::nil(),
            offence_type: "",
            offence_family: "",
            legal_category: "",
            article: "",
            detected_at: DateTime::UNIX_EPOCH,
            device_time: None,
            received_at: None,
            ingested_at: DateTime::UNIX_EPOCH,
            clock_skew: false,
            camera_id: "",
            region: "",
            region_source: RegionSource::Registry,
            district: "",
            source_format: "",
            gateway_id: "",
            source_event_id: None,
            confidence: None,
            confidence_raw: None,
            plate: None,
            speed_kmh: None,
            speed_limit_kmh: None,
            lat: None,
            lon: None,
            evidence_url: None,
        };
        let (mut detected_seconds, mut detected_nanos) = (0i64, 0u32);
        let (mut ingested_seconds, mut ingested_nanos) = (0i64, 0u32);
        let (mut received_seconds, mut received_nanos) = (None::<i64>, 0u32);
        while !input.is_empty() {
            let key = input.varint()?;
            let number = u32::try_from(key >> 3).map_err(|_| EventDecodeError::Invalid {
                field: u32::MAX,
                reason: "field number out of range",
            })?;
            // The low three bits of the key.
            #[allow(clippy::cast_possible_truncation)]
            let wire_type = (key & 7) as u8;
            let mut value = Value {
                input: &mut input,
                field: number,
                wire_type,
            };
            match number {
                V => {
                    view.schema_version =
                        u16::try_from(value.varint()?).map_err(|_| EventDecodeError::Invalid {
                            field: V,
                            reason: "schema version above 65535",
                        })?;
                }
                EVENT_ID => {
                    let id = value.bytes()?;
                    let id: [u8; 16] = id.try_into().map_err(|_| EventDecodeError::Invalid {
                        field: EVENT_ID,
                        reason: "not 16 bytes",
                    })?;
                    event_id = Some(Uuid::from_bytes(id));
                }
                OFFENCE_TYPE => view.offence_type = value.text()?,
                OFFENCE_FAMILY => view.offence_family = value.text()?,
                LEGAL_CATEGORY => view.legal_category = value.text()?,
                ARTICLE => view.article = value.text()?,
                DETECTED_AT_SECONDS => detected_seconds = value.int64()?,
                DETECTED_AT_NANOS => detected_nanos = value.uint32()?,
                CAMERA_ID => view.camera_id = value.text()?,
                REGION => view.region = value.text()?,
                REGION_SOURCE => {
                    view.region_source = match value.varint()? {
                        0 => RegionSource::Registry,
                        1 => RegionSource::Payload,
                        2 => RegionSource::Unknown,
                        _ => {
                            return Err(EventDecodeError::Invalid {
                                field: REGION_SOURCE,
                                reason: "unknown region source",
                            })
                        }
                    };
                }
                SOURCE_FORMAT => view.source_format = value.text()?,
                GATEWAY_ID => view.gateway_id = value.text()?,
                INGESTED_AT_SECONDS => ingested_seconds = value.int64()?,
                INGESTED_AT_NANOS => ingested_nanos = value.uint32()?,
                DISTRICT => view.district = value.text()?,
                DEVICE_TIME => view.device_time = Some(value.text()?),
                RECEIVED_AT_SECONDS => received_seconds = Some(value.int64()?),
                RECEIVED_AT_NANOS => received_nanos = value.uint32()?,
                CLOCK_SKEW => view.clock_skew = value.varint()? != 0,
                SOURCE_EVENT_ID => view.source_event_id = Some(value.text()?),
                CONFIDENCE => view.confidence = Some(value.f32()?),
                CONFIDENCE_RAW => view.confidence_raw = Some(value.f64()?),
                PLATE => view.plate = Some(value.text()?),
                SPEED_KMH => view.speed_kmh = Some(value.f32()?),
                SPEED_LIMIT_KMH => view.speed_limit_kmh = Some(value.f32()?),
                LAT => view.lat = Some(value.f64()?),
                LON => view.lon = Some(value.f64()?),
                EVIDENCE_URL => view.evidence_url = Some(value.text()?),
                _ => value.skip()?,
            }
        }
        view.event_id = event_id.ok_or(EventDecodeError::MissingEventId)?;
        view.detected_at = time(DETECTED_AT_SECONDS, detected_seconds, detected_nanos)?;
        view.ingested_at = time(INGESTED_AT_SECONDS, ingested_seconds, ingested_nanos)?;
        view.received_at = match received_seconds {
            Some(seconds) => Some(time(RECEIVED_AT_SECONDS, seconds, received_nanos)?),
            None => None,
        };
        Ok(view)
    }
}

fn time(field: u32, seconds: i64, nanos: u32) -> Result<DateTime<Utc>, EventDecodeError> {
    DateTime::from_timestamp(seconds, nanos).ok_or(EventDecodeError::Invalid {
        field,
        reason: "time out of range",
    })
}

fn region_source_number(source: RegionSource) -> u64 {
    match source {
        RegionSource::Registry => 0,
        RegionSource::Payload => 1,
        RegionSource::Unknown => 2,
    }
}

/// An `int64` as protobuf puts it in a varint: two's complement, 64 bits.
fn int64_bits(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Appends `value` as a varint (LEB128: seven bits a byte, low bits first),
/// the length prefix of protobuf and of ClickHouse's RowBinary strings.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low seven bits, with the continuation bit set.
        #[allow(clippy::cast_possible_truncation)]
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A non-optional varint field: left out when 0.
fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(out, field, VARINT);
        put_varint(out, value);
    }
}

/// A timestamp as two non-optional fields.
fn put_time(out: &mut Vec<u8>, seconds_field: u32, nanos_field: u32, time: &DateTime<Utc>) {
    put_uint(out, seconds_field, int64_bits(time.timestamp()));
    put_uint(out, nanos_field, u64::from(time.timestamp_subsec_nanos()));
}

/// A present length-delimited field.
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A non-optional string: left out when empty.
fn put_str(out: &mut Vec<u8>, field: u32, text: &str) {
    if !text.is_empty() {
        put_bytes(out, field, text.as_bytes());
    }
}

fn put_f32(out: &mut Vec<u8>, field: u32, value: f32) {
    put_key(out, field, FIXED32);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, field: u32, value: f64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// The bytes being decoded and the read position.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, EventDecodeError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(EventDecodeError::Truncated { at: self.at });
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(EventDecodeError::Varint { at: start })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], EventDecodeError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(EventDecodeError::Truncated {
                at: self.bytes.len(),
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }
}

/// One field's value, read according to its declared type.
struct Value<'i, 'a> {
    input: &'i mut Input<'a>,
    field: u32,
    wire_type: u8,
}

impl<'a> Value<'_, 'a> {
    fn expect(&self, wire_type: u8) -> Result<(), EventDecodeError> {
        if self.wire_type == wire_type {
            return Ok(());
        }
        Err(EventDecodeError::WireType {
            field: self.field,
            wire_type: self.wire_type,
        })
    }

    fn varint(&mut self) -> Result<u64, EventDecodeError> {
        self.expect(VARINT)?;
        self.input.varint()
    }

    fn int64(&mut self) -> Result<i64, EventDecodeError> {
        Ok(i64::from_ne_bytes(self.varint()?.to_ne_bytes()))
    }

    /// A `uint32`: protobuf readers keep the low 32 bits of a longer varint.
    fn uint32(&mut self) -> Result<u32, EventDecodeError> {
        #[allow(clippy::cast_possible_truncation)]
        Ok(self.varint()? as u32)
    }

    fn bytes(&mut self) -> Result<&'a [u8], EventDecodeError> {
        self.expect(LEN)?;
        let len = usize::try_from(self.input.varint()?).unwrap_or(usize::MAX);
        self.input.take(len)
    }

    fn text(&mut self) -> Result<&'a str, EventDecodeError> {
        let field = self.field;
        std::str::from_utf8(self.bytes()?).map_err(|_| EventDecodeError::Invalid {
            field,
            reason: "text is not UTF-8",
        })
    }

    fn f32(&mut self) -> Result<f32, EventDecodeError> {
        self.expect(FIXED32)?;
        let bytes = self.input.take(4)?;
        Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn f64(&mut self) -> Result<f64, EventDecodeError> {
        self.expect(FIXED64)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(self.input.take(8)?);
        Ok(f64::from_le_bytes(array))
    }

    /// Skips a field this build does not know.
    fn skip(&mut self) -> Result<(), EventDecodeError> {
        match self.wire_type {
            VARINT => self.input.varint().map(|_| ()),
            FIXED64 => self.input.take(8).map(|_| ()),
            LEN => {
                let len = usize::try_from(self.input.varint()?).unwrap_or(usize::MAX);
                self.input.take(len).map(|_| ())
            }
            FIXED32 => self.input.take(4).map(|_| ()),
            wire_type => Err(EventDecodeError::WireType {
                field: self.field,
                wire_type,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as prost would generate it from `proto/offence_event.proto`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ProstEvent {
        #[prost(uint32, tag = "1")]
        v: u32,
        #[prost(bytes = "vec", tag = "2")]
        event_id: Vec<u8>,
        #[prost(string, tag = "3")]
        offence_type: String,
        #[prost(string, tag = "4")]
        offence_family: String,
        #[prost(string, tag = "5")]
        legal_category: String,
        #[prost(string, tag = "6")]
        article: String,
        #[prost(int64, tag = "7")]
        detected_at_seconds: i64,
        #[prost(uint32, tag = "8")]
        detected_at_nanos: u32,
        #[prost(string, tag = "9")]
        camera_id: String,
        #[prost(string, tag = "10")]
        region: String,
        #[prost(int32, tag = "11")]
        region_source: i32,
        #[prost(string, tag = "12")]
        source_format: String,
        #[prost(string, tag = "13")]
        gateway_id: String,
        #[prost(int64, tag = "14")]
        ingested_at_seconds: i64,
        #[prost(uint32, tag = "15")]
        ingested_at_nanos: u32,
        #[prost(string, tag = "16")]
        district: String,
        #[prost(string, optional, tag = "17")]
        device_time: Option<String>,
        #[prost(int64, optional, tag = "18")]
        received_at_seconds: Option<i64>,
        #[prost(uint32, tag = "19")]
        received_at_nanos: u32,
        #[prost(bool, tag = "20")]
        clock_skew: bool,
        #[prost(string, optional, tag = "21")]
        source_event_id: Option<String>,
        #[prost(float, optional, tag = "22")]
        confidence: Option<f32>,
        #[prost(double, optional, tag = "23")]
        confidence_raw: Option<f64>,
        #[prost(string, optional, tag = "24")]
        plate: Option<String>,
        #[prost(float, optional, tag = "25")]
        speed_kmh: Option<f32>,
        #[prost(float, optional, tag = "26")]
        speed_limit_kmh: Option<f32>,
        #[prost(double, optional, tag = "27")]
        lat: Option<f64>,
        #[prost(double, optional, tag = "28")]
        lon: Option<f64>,
        #[prost(string, optional, tag = "29")]
        evidence_url: Option<String>,
    }

    impl ProstEvent {
        fn from_event(event: &OffenceEvent) -> Self {
            Self {
                v: u32::from(event.schema_version),
                event_id: event.event_id.as_bytes().to_vec(),
                offence_type: event.offence_type.clone(),
                offence_family: event.offence_family.clone(),
                legal_category: event.legal_category.clone(),
                article: event.article.clone(),
                detected_at_seconds: event.detected_at.timestamp(),
                detected_at_nanos: event.detected_at.timestamp_subsec_nanos(),
                camera_id: event.camera_id.clone(),
                region: event.region.clone(),
                region_source: i32::try_from(region_source_number(event.region_source)).unwrap(),
                source_format: event.source_format.clone(),
                gateway_id: event.gateway_id.clone(),
                ingested_at_seconds: event.ingested_at.timestamp(),
                ingested_at_nanos: event.ingested_at.timestamp_subsec_nanos(),
                district: event.district.clone(),
                device_time: event.device_time.clone(),
                received_at_seconds: event.received_at.map(|t| t.timestamp()),
                received_at_nanos: event.received_at.map_or(0, |t| t.timestamp_subsec_nanos()),
                clock_skew: event.clock_skew,
                source_event_id: event.source_event_id.clone(),
                confidence: event.confidence,
                confidence_raw: event.confidence_raw,
                plate: event.plate.clone(),
                speed_kmh: event.speed_kmh,
                speed_limit_kmh: event.speed_limit_kmh,
                lat: event.lat,
                lon: event.lon,
                evidence_url: event.evidence_url.clone(),
            }
        }
    }

    fn time(seconds: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, nanos).unwrap()
    }

    fn full() -> OffenceEvent {
        OffenceEvent {
            // Sub-millisecond digits.
            ingested_at: time(1_795_749_306, 123_456_789),
            speed_kmh: Some(97.5),
            ..OffenceEvent::example()
        }
    }

    fn sparse() -> OffenceEvent {
        OffenceEvent {
            article: String::new(),
            device_time: None,
            received_at: None,
            clock_skew: false,
            region_source: RegionSource::Registry,
            district: String::new(),
            source_event_id: None,
            confidence: None,
            confidence_raw: None,
            plate: Some(String::new()),
            speed_kmh: None,
            speed_limit_kmh: None,
            lat: None,
            lon: None,
            evidence_url: None,
            // Before 1970, and a whole second.
            detected_at: time(-86_400, 0),
            ..full()
        }
    }

    fn encode(event: &OffenceEvent) -> Vec<u8> {
        let mut bytes = Vec::new();
        event.write_binary(&mut bytes);
        bytes
    }

    #[test]
    fn every_field_survives_a_round_trip() {
        for event in [full(), sparse()] {
            let bytes = encode(&event);
            assert_eq!(OffenceEvent::from_binary(&bytes), Ok(event.clone()));
            let view = EventView::decode(&bytes).unwrap();
            assert_eq!(view, event.view());
        }
        // An empty plate is present, not absent.
        let bytes = encode(&sparse());
        assert_eq!(EventView::decode(&bytes).unwrap().plate, Some(""));
    }

    #[test]
    fn the_bytes_are_what_prost_writes_and_prost_reads_them() {
        use prost::Message as _;
        for event in [full(), sparse()] {
            let ours = encode(&event);
            let prost = ProstEvent::from_event(&event).encode_to_vec();
            assert_eq!(ours, prost, "byte for byte as a protobuf library writes it");
            assert_eq!(
                ProstEvent::decode(ours.as_slice()).unwrap(),
                ProstEvent::from_event(&event)
            );
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_fields_may_come_in_any_order() {
        let event = full();
        let mut bytes = Vec::new();
        // A field from the future of every wire type, before and after.
        put_uint(&mut bytes, 100, 7);
        put_bytes(&mut bytes, 101, b"later");
        put_f32(&mut bytes, 102, 1.5);
        put_f64(&mut bytes, 103, 2.5);
        // The known fields in reverse order.
        let forward = encode(&event);
        let mut fields = Vec::new();
        let mut input = Input {
            bytes: &forward,
            at: 0,
        };
        while !input.is_empty() {
            let start = input.at;
            let key = input.varint().unwrap();
            #[allow(clippy::cast_possible_truncation)]
            let mut value = Value {
                input: &mut input,
                field: 0,
                wire_type: (key & 7) as u8,
            };
            value.skip().unwrap();
            fields.push(forward[start..input.at].to_vec());
        }
        for field in fields.iter().rev() {
            bytes.extend_from_slice(field);
        }
        put_uint(&mut bytes, 104, 1);
        assert_eq!(OffenceEvent::from_binary(&bytes), Ok(event));
    }

    #[test]
    fn broken_events_are_refused_with_their_reason() {
        let bytes = encode(&full());
        // Cut inside the event id: truncated.
        assert!(matches!(
            EventView::decode(&bytes[..5]),
            Err(EventDecodeError::Truncated { .. })
        ));
        assert_eq!(
            EventView::decode(&[]),
            Err(EventDecodeError::MissingEventId)
        );
        let mut short_id = Vec::new();
        put_bytes(&mut short_id, field::EVENT_ID, &[1, 2, 3]);
        assert_eq!(
            EventView::decode(&short_id),
            Err(EventDecodeError::Invalid {
                field: field::EVENT_ID,
                reason: "not 16 bytes"
            })
        );
        let mut wrong_type = Vec::new();
        put_uint(&mut wrong_type, field::CAMERA_ID, 5);
        assert_eq!(
            EventView::decode(&wrong_type),
            Err(EventDecodeError::WireType {
                field: field::CAMERA_ID,
                wire_type: VARINT
            })
        );
        let mut bad_text = Vec::new();
        put_bytes(&mut bad_text, field::REGION, &[0xff, 0xfe]);
        assert!(matches!(
            EventView::decode(&bad_text),
            Err(EventDecodeError::Invalid {
                field: field::REGION,
                ..
            })
        ));
        let overlong = [0x80u8; 11];
        assert_eq!(
            EventView::decode(&overlong),
            Err(EventDecodeError::Varint { at: 0 })
        );
        let mut group = Vec::new();
        put_key(&mut group, 50, 3);
        assert!(matches!(
            EventView::decode(&group),
            Err(EventDecodeError::WireType { wire_type: 3, .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let bytes = encode(&full());
        // Each cut either ends inside a field (an error) or between fields
        // (a valid message with fewer fields); it never panics.
        let mut errors = 0;
        for cut in 0..bytes.len() {
            if EventView::decode(&bytes[..cut]).is_err() {
                errors += 1;
            }
        }
        assert!(errors > bytes.len() / 2, "{errors} of {}", bytes.len());
    }

    #[test]
    fn the_field_numbers_are_those_of_the_proto_file() {
        let proto = include_str!("../proto/offence_event.proto");
        let declared: Vec<(String, u32)> = proto
            .split("message OffenceEvent")
            .nth(1)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let line = line.trim().strip_suffix(';')?;
                let (left, number) = line.split_once('=')?;
                let name = left.split_whitespace().last()?.to_string();
                Some((name, number.trim().parse().ok()?))
            })
            .collect();
        use field::*;
        let code = [
            ("v", V),
            ("event_id", EVENT_ID),
            ("offence_type", OFFENCE_TYPE),
            ("offence_family", OFFENCE_FAMILY),
            ("legal_category", LEGAL_CATEGORY),
            ("article", ARTICLE),
            ("detected_at_seconds", DETECTED_AT_SECONDS),
            ("detected_at_nanos", DETECTED_AT_NANOS),
            ("camera_id", CAMERA_ID),
            ("region", REGION),
            ("region_source", REGION_SOURCE),
            ("source_format", SOURCE_FORMAT),
            ("gateway_id", GATEWAY_ID),
            ("ingested_at_seconds", INGESTED_AT_SECONDS),
            ("ingested_at_nanos", INGESTED_AT_NANOS),
            ("district", DISTRICT),
            ("device_time", DEVICE_TIME),
            ("received_at_seconds", RECEIVED_AT_SECONDS),
            ("received_at_nanos", RECEIVED_AT_NANOS),
            ("clock_skew", CLOCK_SKEW),
            ("source_event_id", SOURCE_EVENT_ID),
            ("confidence", CONFIDENCE),
            ("confidence_raw", CONFIDENCE_RAW),
            ("plate", PLATE),
            ("speed_kmh", SPEED_KMH),
            ("speed_limit_kmh", SPEED_LIMIT_KMH),
            ("lat", LAT),
            ("lon", LON),
            ("evidence_url", EVIDENCE_URL),
        ]
        .map(|(name, number)| (name.to_string(), number))
        .to_vec();
        assert_eq!(declared, code);
    }

    #[test]
    fn the_binary_event_is_much_smaller_than_its_json() {
        let event = full();
        let binary = encode(&event).len();
        let json = event.to_json().len();
        assert!(binary * 2 < json, "binary {binary} bytes, JSON {json}");
    }
}
