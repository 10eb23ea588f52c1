//! CloudEvents batches (contract section 2.1): many vendor messages in one
//! NATS message on `cctv.raw.batch.<gateway_id>`, as a JSON array of
//! CloudEvents 1.0 ("batched content mode", `application/cloudevents-batch+json`).
//!
//! [`parse_batch`] splits a batch into its items. A batch that cannot be read
//! as a whole (too large, not UTF-8, nested too deep, not a JSON array, too
//! many items) is one [`Rejection`]; otherwise every item becomes either a
//! [`BatchItem`] (a vendor message with the metadata a single message carries
//! in its headers, normalised through [`BatchItem::raw`] exactly as if it had
//! been published alone) or a [`BatchEntry::Broken`] entry to dead-letter on
//! its own. Item bodies come back as the exact bytes the device sent: a JSON
//! `data` value is taken as its original text, never re-serialised.
//!
//! [`BatchBuilder`] writes batches for producers (the simulator, benches,
//! tests) such that [`parse_batch`] gives every body back byte for byte.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::{json_too_deep, Limits};
use crate::outcome::{clip, RejectReason, Rejection};
use crate::raw::RawMessage;

/// Content type of a CloudEvents JSON batch.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Largest batch accepted, in bytes (contract: at most 1 MiB).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most items one batch may carry (contract: at most 10,000).
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// The CloudEvents version every item must name.
const SPEC_VERSION: &str = "1.0";
/// Every item's `type` is this prefix followed by the vendor format.
const TYPE_PREFIX: &str = "kz.cctv.raw.";
/// Every item's `source` is this prefix followed by the gateway id.
const SOURCE_PREFIX: &str = "/gateways/";
/// Nesting the batch itself adds above a body: the array and the item object.
/// A body is allowed as deep inside a batch as it would be alone.
const BATCH_NESTING: usize = 2;

/// One vendor message of a batch, with the metadata a single message would
/// carry in its subject and headers.
///
/// Its texts and body borrow from the batch where the batch holds them
/// verbatim (no JSON escapes): the common case costs no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem<'a> {
    /// Position in the batch, from 0.
    pub index: usize,
    /// `<format>` of the item's `type` `kz.cctv.raw.<format>`. Not checked
    /// here: the normaliser rejects an unknown one as `unsupported_format`.
    pub format: Cow<'a, str>,
    /// CloudEvents `id`: the gateway's id for the message (its `Nats-Msg-Id`).
    pub id: Cow<'a, str>,
    /// CloudEvents `time`, as `Cctv-Received-At`.
    pub time: Option<Cow<'a, str>>,
    /// CloudEvents `subject`: the camera id, as `Cctv-Camera-Id`.
    pub subject: Option<Cow<'a, str>>,
    /// CloudEvents `datacontenttype`, as sent (not checked).
    pub content_type: Option<Cow<'a, str>>,
    /// The body exactly as the device sent it: the original text of a JSON
    /// `data` value, the content of a `data` string, or the decoded
    /// `data_base64`; empty when the item has neither.
    pub body: Cow<'a, [u8]>,
}

impl BatchItem<'_> {
    /// The item with everything it borrows from the batch copied.
    pub fn into_owned(self) -> BatchItem<'static> {
        let owned = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        BatchItem {
            index: self.index,
            format: owned(self.format),
            id: owned(self.id),
            time: self.time.map(owned),
            subject: self.subject.map(owned),
            content_type: self.content_type.map(owned),
            body: Cow::Owned(self.body.into_owned()),
        }
    }

    /// The item as a raw message of gateway `gateway_id` (the batch
    /// subject's token): `id` is the message id, `subject` the camera header,
    /// `time` the receipt time; `stored_at` is the batch's stream time.
    pub fn raw<'r>(
        &'r self,
        gateway_id: &'r str,
        stored_at: Option<DateTime<Utc>>,
    ) -> RawMessage<'r> {
        RawMessage {
            format: &self.format,
            gateway_id,
            payload: &self.body,
            msg_id: Some(&self.id),
            camera_id: self.subject.as_deref(),
            received_at: self.time.as_deref(),
            stored_at,
        }
    }
}

/// One entry of a parsed batch, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    /// A usable item, to normalise like a single message.
    Item(BatchItem<'a>),
    /// An item that is not a usable CloudEvent, to dead-letter on its own.
    Broken {
        /// Position in the batch, from 0.
        index: usize,
        /// Why it cannot be used.
        rejection: Rejection,
        /// The item's JSON text as received.
        body: Cow<'a, [u8]>,
    },
}

impl BatchEntry<'_> {
    /// Position of the entry in the batch, from 0.
    pub fn index(&self) -> usize {
        match self {
            BatchEntry::Item(item) => item.index,
            BatchEntry::Broken { index, .. } => *index,
        }
    }

    /// The entry with everything it borrows from the batch copied.
    pub fn into_owned(self) -> BatchEntry<'static> {
        match self {
            BatchEntry::Item(item) => BatchEntry::Item(item.into_owned()),
            BatchEntry::Broken {
                index,
                rejection,
                body,
            } => BatchEntry::Broken {
                index,
                rejection,
                body: Cow::Owned(body.into_owned()),
            },
        }
    }
}

/// The attributes of an item the pipeline reads. Unknown attributes
/// (CloudEvents extensions) are ignored.
#[derive(Deserialize)]
struct WireItem<'a> {
    #[serde(borrow)]
    specversion: Option<Text<'a>>,
    #[serde(borrow, rename = "type")]
    event_type: Option<Text<'a>>,
    #[serde(borrow)]
    source: Option<Text<'a>>,
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    time: Option<Text<'a>>,
    #[serde(borrow)]
    subject: Option<Text<'a>>,
    #[serde(borrow)]
    datacontenttype: Option<Text<'a>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_base64: Option<Text<'a>>,
}

/// A [`WireItem`] read only from a JSON object (serde would also read a
/// struct from an array of its fields, which [`parse_item`] refuses).
struct ObjectItem<'a>(WireItem<'a>);

impl<'de> Deserialize<'de> for ObjectItem<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = ObjectItem<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a CloudEvent object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ObjectItem<'de>, A::Error> {
                WireItem::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ObjectItem)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A JSON string borrowed from the batch unless it holds escapes (serde
/// borrows a `Cow` only as a field of its own, not inside an `Option`).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Splits a batch published on `cctv.raw.batch.<gateway_id>` into its
/// entries, in order. `Err` when the batch cannot be read as a whole (it is
/// then dead-lettered whole); each unusable item is a
/// [`BatchEntry::Broken`] entry instead, so one bad item costs no other.
pub fn parse_batch<'a>(
    payload: &'a [u8],
    gateway_id: &str,
) -> Result<Vec<BatchEntry<'a>>, Rejection> {
    if payload.len() > MAX_BATCH_BYTES {
        return Err(Rejection::new(
            RejectReason::PayloadTooLarge,
            format!(
                "batch of {} bytes exceeds the limit of {MAX_BATCH_BYTES} bytes",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|error| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("batch is not UTF-8: {error}"),
        )
    })?;
    let max_depth = Limits::default().max_json_depth + BATCH_NESTING;
    let too_deep = || {
        Rejection::new(
            RejectReason::TooDeep,
            format!("batch JSON nests deeper than {max_depth} levels"),
        )
    };
    let source = format!("{SOURCE_PREFIX}{gateway_id}");
    // One pass when every item is a usable CloudEvent (the common case);
    // else the items are read one by one below, so that each broken one is
    // dead-lettered alone with its own text. This pass recurses no deeper
    // than an item: serde_json skips `data` and unknown attributes without
    // recursion, so a nesting bomb costs it one linear pass. A `data` value
    // nested deeper than a message may be makes the batch too deep, as the
    // scan of the whole batch below would find; each body's check is a count
    // of its openers for most bodies, where the whole batch's scan follows
    // every string (XML bodies are strings full of escapes). The content of
    // an unknown attribute is skipped unread here, however deep: only the
    // item-by-item path below refuses it as too deep.
    if let Ok(wires) = serde_json::from_str::<Vec<ObjectItem<'a>>>(text) {
        let body_too_deep = |ObjectItem(wire): &ObjectItem<'_>| {
            wire.data
                .is_some_and(|data| json_too_deep(data.get().as_bytes(), max_depth - BATCH_NESTING))
        };
        if wires.iter().any(body_too_deep) {
            return Err(too_deep());
        }
        if wires.len() <= MAX_BATCH_ITEMS {
            let items: Result<Vec<BatchEntry<'a>>, Rejection> = wires
                .into_iter()
                .enumerate()
                .map(|(index, ObjectItem(wire))| {
                    item_from_wire(index, wire, &source).map(BatchEntry::Item)
                })
                .collect();
            if let Ok(items) = items {
                return Ok(items);
            }
        }
    }
    // Before the items are parsed one by one, so that a nesting bomb costs
    // one linear pass.
    if json_too_deep(payload, max_depth) {
        return Err(too_deep());
    }
    // The size limit bounds this vector (an item takes at least two bytes),
    // so the item count is checked after parsing.
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|error| {
        Rejection::new(
            RejectReason::Malformed,
            format!("batch is not a JSON array: {error}"),
        )
    })?;
    if items.len() > MAX_BATCH_ITEMS {
        return Err(Rejection::new(
            RejectReason::TooManyEvents,
            format!(
                "{} items in one batch exceed the limit of {MAX_BATCH_ITEMS}",
                items.len()
            ),
        ));
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(
            |(index, item)| match parse_item(index, item.get(), &source) {
                Ok(item) => BatchEntry::Item(item),
                Err(rejection) => BatchEntry::Broken {
                    index,
                    rejection,
                    body: Cow::Borrowed(item.get().as_bytes()),
                },
            },
        )
        .collect())
}

fn invalid_item(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidBatchItem, detail)
}

/// Reads one item; `source` is the only `source` the batch's gateway may name.
fn parse_item<'a>(index: usize, text: &'a str, source: &str) -> Result<BatchItem<'a>, Rejection> {
    // Serde would also read a struct from an array of its fields.
    if !text.trim_start().starts_with('{') {
        return Err(invalid_item(format!("item {index} is not a JSON object")));
    }
    let wire: WireItem<'_> = serde_json::from_str(text)
        .map_err(|error| invalid_item(format!("item {index} is not a CloudEvent: {error}")))?;
    item_from_wire(index, wire, source)
}

/// Checks one item's attributes and takes its body.
fn item_from_wire<'a>(
    index: usize,
    wire: WireItem<'a>,
    source: &str,
) -> Result<BatchItem<'a>, Rejection> {
    if wire.specversion.as_deref() != Some(SPEC_VERSION) {
        return Err(invalid_item(format!(
            "item {index}: specversion {:?} is not \"{SPEC_VERSION}\"",
            wire.specversion.as_deref().map(clip)
        )));
    }
    let Some(id) = wire.id.filter(|id| !id.is_empty()).map(|id| id.0) else {
        return Err(invalid_item(format!(
            "item {index}: id is missing or empty"
        )));
    };
    let format = match &wire.event_type {
        Some(Text(Cow::Borrowed(text))) => text.strip_prefix(TYPE_PREFIX).map(Cow::Borrowed),
        Some(Text(Cow::Owned(text))) => text
            .strip_prefix(TYPE_PREFIX)
            .map(|format| Cow::Owned(format.to_string())),
        None => None,
    };
    let Some(format) = format else {
        return Err(invalid_item(format!(
            "item {index}: type {:?} is not {TYPE_PREFIX}<format>",
            wire.event_type.as_deref().map(clip)
        )));
    };
    match wire.source.as_deref() {
        None => return Err(invalid_item(format!("item {index}: source is missing"))),
        Some(named) if named != source => {
            return Err(Rejection::new(
                RejectReason::ForeignSource,
                format!(
                    "item {index}: source {:?} is not {source:?}, the batch's gateway",
                    clip(named)
                ),
            ))
        }
        Some(_) => {}
    }
    let body = match (wire.data, wire.data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid_item(format!(
                "item {index} has both data and data_base64"
            )))
        }
        (Some(data), None) => data_body(index, data)?,
        (None, Some(encoded)) => {
            Cow::Owned(BASE64.decode(encoded.as_bytes()).map_err(|error| {
                invalid_item(format!("item {index}: data_base64 is not base64: {error}"))
            })?)
        }
        // The normaliser judges an empty body like an empty message.
        (None, None) => Cow::Borrowed(&[][..]),
    };
    Ok(BatchItem {
        index,
        format,
        id,
        time: wire.time.map(|text| text.0),
        subject: wire.subject.map(|text| text.0),
        content_type: wire.datacontenttype.map(|text| text.0),
        body,
    })
}

/// The body of a `data` attribute: a string's content, else the value's
/// original text.
fn data_body<'a>(index: usize, data: &'a RawValue) -> Result<Cow<'a, [u8]>, Rejection> {
    let text = data.get();
    if !text.starts_with('"') {
        return Ok(Cow::Borrowed(text.as_bytes()));
    }
    match serde_json::from_str::<Text<'a>>(text) {
        Ok(Text(Cow::Borrowed(content))) => Ok(Cow::Borrowed(content.as_bytes())),
        Ok(Text(Cow::Owned(content))) => Ok(Cow::Owned(content.into_bytes())),
        Err(error) => Err(invalid_item(format!("item {index}: data string: {error}"))),
    }
}

/// Writes a CloudEvents batch for one gateway, item by item, such that
/// [`parse_batch`] gives every body back byte for byte.
///
/// A body is embedded as a `data` JSON value (`application/json`) when it is
/// a JSON object or array with no surrounding whitespace and within the
/// normaliser's depth limit; else as a `data` string (`application/xml` when
/// it starts with `<`, `text/plain` otherwise) when it is UTF-8; else as
/// `data_base64`.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// `source` of every item, as JSON string text.
    source_json: String,
    /// `[` followed by the items so far, comma separated.
    buffer: Vec<u8>,
    /// Items so far.
    num_items: usize,
}

impl BatchBuilder {
    /// An empty batch for gateway `gateway_id` (its items name
    /// `/gateways/<gateway_id>` as their source).
    pub fn new(gateway_id: &str) -> Self {
        let mut source_json = String::new();
        write_json_string(&mut source_json, &format!("{SOURCE_PREFIX}{gateway_id}"));
        Self {
            source_json,
            buffer: vec![b'['],
            num_items: 0,
        }
    }

    /// Appends one vendor message: `format` is its `<format>`, `id` its
    /// message id, `time` its receipt time and `subject` its camera id.
    pub fn push(
        &mut self,
        format: &str,
        id: &str,
        time: Option<&str>,
        subject: Option<&str>,
        body: &[u8],
    ) {
        self.write_item(format, id, time, subject, body);
        self.num_items += 1;
    }

    /// Appends one vendor message like [`BatchBuilder::push`] only if the
    /// batch then stays within `max_bytes` (see [`BatchBuilder::bytes_len`])
    /// and [`MAX_BATCH_ITEMS`]; returns whether it did. A full batch is left
    /// as it was.
    pub fn try_push(
        &mut self,
        max_bytes: usize,
        format: &str,
        id: &str,
        time: Option<&str>,
        subject: Option<&str>,
        body: &[u8],
    ) -> bool {
        if self.num_items >= MAX_BATCH_ITEMS {
            return false;
        }
        let mark = self.buffer.len();
        self.write_item(format, id, time, subject, body);
        if self.bytes_len() > max_bytes {
            self.buffer.truncate(mark);
            return false;
        }
        self.num_items += 1;
        true
    }

    /// Items so far.
    pub fn len(&self) -> usize {
        self.num_items
    }

    /// Whether no item was pushed since creation or the last clear.
    pub fn is_empty(&self) -> bool {
        self.num_items == 0
    }

    /// Size in bytes the batch would have if finished now.
    pub fn bytes_len(&self) -> usize {
        // The closing bracket `finish` adds.
        self.buffer.len() + 1
    }

    /// The batch: a JSON array of the items pushed.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.push(b']');
        self.buffer
    }

    /// Drops every item, keeping the gateway and the allocation.
    pub fn clear(&mut self) {
        self.buffer.truncate(1);
        self.num_items = 0;
    }

    fn write_item(
        &mut self,
        format: &str,
        id: &str,
        time: Option<&str>,
        subject: Option<&str>,
        body: &[u8],
    ) {
        let mut head = String::with_capacity(160 + id.len());
        if self.num_items > 0 {
            head.push(',');
        }
        head.push_str(r#"{"specversion":"1.0","type":"#);
        write_json_string(&mut head, &format!("{TYPE_PREFIX}{format}"));
        head.push_str(r#","source":"#);
        head.push_str(&self.source_json);
        head.push_str(r#","id":"#);
        write_json_string(&mut head, id);
        if let Some(time) = time {
            head.push_str(r#","time":"#);
            write_json_string(&mut head, time);
        }
        if let Some(subject) = subject {
            head.push_str(r#","subject":"#);
            write_json_string(&mut head, subject);
        }
        if is_embeddable_json(body) {
            head.push_str(r#","datacontenttype":"application/json","data":"#);
            self.buffer.extend_from_slice(head.as_bytes());
            self.buffer.extend_from_slice(body);
            self.buffer.push(b'}');
            return;
        }
        match std::str::from_utf8(body) {
            Ok(text) => {
                let content_type = if text.starts_with('<') {
                    "application/xml"
                } else {
                    "text/plain"
                };
                head.push_str(r#","datacontenttype":""#);
                head.push_str(content_type);
                head.push_str(r#"","data":"#);
                write_json_string(&mut head, text);
            }
            Err(_) => {
                head.push_str(r#","data_base64":""#);
                BASE64.encode_string(body, &mut head);
                head.push('"');
            }
        }
        head.push('}');
        self.buffer.extend_from_slice(head.as_bytes());
    }
}

/// Whether `body` can be a `data` JSON value and come back as the same bytes:
/// an object or array (a string or `null` would come back changed), with no
/// whitespace around it (the parser keeps only the value's own text), that
/// nests no deeper than a message alone may (so the batch stays readable).
fn is_embeddable_json(body: &[u8]) -> bool {
    let (Some(first), Some(last)) = (body.first(), body.last()) else {
        return false;
    };
    matches!((first, last), (b'{', b'}') | (b'[', b']'))
        && !json_too_deep(body, Limits::default().max_json_depth)
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Appends `text` as a JSON string literal.
fn write_json_string(out: &mut String, text: &str) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cctv_event::{CameraRegistry, Regions, Taxonomy};

    use super::*;
    use crate::{parse_rfc3339, Normalizer, Outcome};

    const GATEWAY: &str = "gw-7";
    const CANONICAL: &[u8] = include_bytes!("../fixtures/canonical/speeding.json");
    const HIKVISION_XML: &[u8] = include_bytes!("../fixtures/hikvision/anpr_seatbelt.xml");
    const HIKVISION_JSON: &[u8] = include_bytes!("../fixtures/hikvision/tfs_illegal_parking.json");

    fn item<'e>(entry: &'e BatchEntry<'_>) -> &'e BatchItem<'e> {
        match entry {
            BatchEntry::Item(item) => item,
            BatchEntry::Broken { rejection, .. } => panic!("expected an item, got {rejection}"),
        }
    }

    fn broken(entry: &BatchEntry) -> RejectReason {
        match entry {
            BatchEntry::Broken { rejection, .. } => {
                assert!(!rejection.detail.is_empty());
                rejection.reason
            }
            BatchEntry::Item(item) => panic!("expected a broken entry, got {item:?}"),
        }
    }

    /// A batch of one hand-written item of gateway `GATEWAY`.
    fn one(item_json: &str) -> BatchEntry<'static> {
        let batch = format!("[{item_json}]");
        let entries = parse_batch(batch.as_bytes(), GATEWAY).unwrap();
        assert_eq!(entries.len(), 1);
        entries.into_iter().next().unwrap().into_owned()
    }

    fn whole_batch_reason(payload: &[u8]) -> RejectReason {
        let rejection = parse_batch(payload, GATEWAY).unwrap_err();
        assert!(!rejection.detail.is_empty());
        rejection.reason
    }

    #[test]
    fn the_builder_round_trips_every_kind_of_body_byte_for_byte() {
        let trimmed_json = std::str::from_utf8(HIKVISION_JSON).unwrap().trim();
        let bodies: Vec<(&[u8], Option<&str>, bool)> = vec![
            // (body, content type written, embedded as a JSON value)
            (trimmed_json.as_bytes(), Some("application/json"), true),
            (
                br#"[{"a":1.50e3,"b":"\u00e9\n"}]"#,
                Some("application/json"),
                true,
            ),
            // A JSON file with its trailing newline stays exact as a string.
            (HIKVISION_JSON, Some("text/plain"), false),
            (HIKVISION_XML, Some("application/xml"), false),
            (b"\"just a JSON string\"", Some("text/plain"), false),
            (b"null", Some("text/plain"), false),
            (
                b"Event=Start;Code=\"x\"\\\t\x01 caf\xc3\xa9",
                Some("text/plain"),
                false,
            ),
            (b"", Some("text/plain"), false),
            (b"\xff\xfe\x00binary<", None, false),
        ];
        let mut builder = BatchBuilder::new(GATEWAY);
        assert!(builder.is_empty());
        for (index, (body, _, _)) in bodies.iter().enumerate() {
            builder.push(
                "hikvision",
                &format!("msg-{index}"),
                Some("2026-11-27T04:14:06Z"),
                Some("CAM \"1\""),
                body,
            );
        }
        assert_eq!(builder.len(), bodies.len());
        let bytes_len = builder.bytes_len();
        let batch = builder.finish();
        assert_eq!(batch.len(), bytes_len);
        let entries = parse_batch(&batch, GATEWAY).unwrap();
        assert_eq!(entries.len(), bodies.len());
        for (index, (entry, (body, content_type, as_value))) in
            entries.iter().zip(&bodies).enumerate()
        {
            let item = item(entry);
            assert_eq!(item.index, index);
            assert_eq!(item.body, *body, "body {index}");
            assert_eq!(item.format, "hikvision");
            assert_eq!(item.id, format!("msg-{index}"));
            assert_eq!(item.time.as_deref(), Some("2026-11-27T04:14:06Z"));
            assert_eq!(item.subject.as_deref(), Some("CAM \"1\""));
            assert_eq!(item.content_type.as_deref(), *content_type, "body {index}");
            let value: serde_json::Value = serde_json::from_slice(&batch).unwrap();
            assert_eq!(
                value[index].get("data").is_some_and(|d| !d.is_string()),
                *as_value
            );
        }
    }

    /// A batch of good items is read in one pass; one broken item makes
    /// every item read on its own. Both give the good items alike.
    #[test]
    fn the_one_pass_reading_gives_what_the_item_by_item_reading_gives() {
        let mut builder = BatchBuilder::new(GATEWAY);
        let bodies: [&[u8]; 6] = [
            CANONICAL,
            HIKVISION_XML,
            HIKVISION_JSON,
            br#"{"a":[1,"b"]}"#,
            b"",
            b"\xff<",
        ];
        for (n, body) in bodies.iter().enumerate() {
            let camera = format!("CAM \"{n}\"");
            builder.push(
                "hikvision",
                &format!("m-{n}"),
                Some("t"),
                Some(&camera),
                body,
            );
        }
        let good = builder.finish();
        let one_pass = parse_batch(&good, GATEWAY).unwrap();
        let mut with_broken = good[..good.len() - 1].to_vec();
        with_broken.extend_from_slice(b",42]");
        let by_item = parse_batch(&with_broken, GATEWAY).unwrap();
        assert_eq!(by_item.len(), bodies.len() + 1);
        assert_eq!(
            broken(&by_item[bodies.len()]),
            RejectReason::InvalidBatchItem
        );
        assert_eq!(one_pass[..], by_item[..bodies.len()]);
        // Escaped texts are decoded alike, borrowed texts borrowed alike.
        assert_eq!(item(&one_pass[1]).subject.as_deref(), Some("CAM \"1\""));
        assert!(matches!(item(&one_pass[3]).body, Cow::Borrowed(_)));
    }

    #[test]
    fn item_order_and_index_are_kept_and_optional_attributes_stay_absent() {
        let mut builder = BatchBuilder::new(GATEWAY);
        for n in 0..50 {
            builder.push("canonical", &format!("id-{n}"), None, None, CANONICAL);
        }
        let batch = builder.finish();
        let entries = parse_batch(&batch, GATEWAY).unwrap();
        for (n, entry) in entries.iter().enumerate() {
            let item = item(entry);
            assert_eq!((entry.index(), item.index), (n, n));
            assert_eq!(item.id, format!("id-{n}"));
            assert_eq!(
                (item.time.as_deref(), item.subject.as_deref()),
                (None, None)
            );
        }
        let empty = BatchBuilder::new(GATEWAY).finish();
        assert_eq!(empty, b"[]");
        assert!(parse_batch(&empty, GATEWAY).unwrap().is_empty());
    }

    #[test]
    fn try_push_keeps_the_batch_within_its_limits_and_clear_empties_it() {
        let mut builder = BatchBuilder::new(GATEWAY);
        let limit = 4096;
        let mut pushed = 0;
        while builder.try_push(
            limit,
            "canonical",
            &format!("id-{pushed}"),
            None,
            None,
            CANONICAL,
        ) {
            pushed += 1;
        }
        assert!(pushed > 1);
        assert_eq!(builder.len(), pushed);
        assert!(builder.bytes_len() <= limit);
        // The refused item left no trace: the batch still parses whole.
        let batch = builder.clone().finish();
        assert!(batch.len() <= limit);
        assert_eq!(parse_batch(&batch, GATEWAY).unwrap().len(), pushed);
        builder.clear();
        assert!(builder.is_empty());
        assert_eq!(builder.bytes_len(), 2);
        assert!(!builder.try_push(10, "canonical", "id", None, None, CANONICAL));
        assert!(builder.is_empty());

        let mut full = BatchBuilder::new(GATEWAY);
        for n in 0..MAX_BATCH_ITEMS {
            assert!(full.try_push(usize::MAX, "canonical", &n.to_string(), None, None, b"1"));
        }
        assert!(!full.try_push(usize::MAX, "canonical", "one more", None, None, b"1"));
        assert_eq!(full.len(), MAX_BATCH_ITEMS);
    }

    #[test]
    fn unusable_items_are_broken_on_their_own() {
        let good = r#"{"specversion":"1.0","type":"kz.cctv.raw.canonical","source":"/gateways/gw-7","id":"a","data":{}}"#;
        let cases: Vec<(String, RejectReason)> = vec![
            ("42".into(), RejectReason::InvalidBatchItem),
            (
                r#"["1.0","kz.cctv.raw.canonical","/gateways/gw-7","a"]"#.into(),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""specversion":"1.0","#, ""),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""1.0""#, r#""0.3""#),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""1.0""#, "1.0"),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#","id":"a""#, ""),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""id":"a""#, r#""id":"""#),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace("kz.cctv.raw.canonical", "com.example.raw.canonical"),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""type":"kz.cctv.raw.canonical","#, ""),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""source":"/gateways/gw-7","#, ""),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace("/gateways/gw-7", "/gateways/gw-8"),
                RejectReason::ForeignSource,
            ),
            (
                good.replace("/gateways/gw-7", "/gateways/gw-7/extra"),
                RejectReason::ForeignSource,
            ),
            (
                good.replace(r#""data":{}"#, r#""data":{},"data_base64":"e30=""#),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""data":{}"#, r#""data_base64":"not base64!""#),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""data":{}"#, r#""data_base64":42"#),
                RejectReason::InvalidBatchItem,
            ),
            (
                good.replace(r#""id":"a""#, r#""id":"a","id":"b""#),
                RejectReason::InvalidBatchItem,
            ),
        ];
        for (item_json, reason) in cases {
            // Between two good items, which stay good.
            let batch = format!("[{good},{item_json},{good}]");
            let entries = parse_batch(batch.as_bytes(), GATEWAY).unwrap();
            assert_eq!(entries.len(), 3);
            assert_eq!(item(&entries[0]).body.as_ref(), b"{}");
            assert_eq!(broken(&entries[1]), reason, "{item_json}");
            let BatchEntry::Broken { index, body, .. } = &entries[1] else {
                unreachable!()
            };
            assert_eq!((*index, body.as_ref()), (1, item_json.as_bytes()));
            assert_eq!(item(&entries[2]).index, 2);
        }
    }

    #[test]
    fn verbatim_texts_and_bodies_are_borrowed_from_the_batch() {
        let batch = br#"[{"specversion":"1.0","type":"kz.cctv.raw.dahua","source":"/gateways/gw-7","id":"a","subject":"CAM-1","data":{"k":1}},{"specversion":"1.0","type":"kz.cctv.raw.dahua","source":"/gateways/gw-7","id":"b\u0031","data":"Code=\"x\""}]"#;
        let entries = parse_batch(batch, GATEWAY).unwrap();
        let (plain, escaped) = (item(&entries[0]), item(&entries[1]));
        assert!(matches!(plain.body, Cow::Borrowed(b"{\"k\":1}")));
        assert!(matches!(plain.id, Cow::Borrowed("a")));
        assert!(matches!(plain.format, Cow::Borrowed("dahua")));
        assert!(matches!(plain.subject, Some(Cow::Borrowed("CAM-1"))));
        // Escapes are decoded into owned copies.
        assert_eq!(escaped.id, "b1");
        assert!(matches!(escaped.id, Cow::Owned(_)));
        assert_eq!(escaped.body.as_ref(), b"Code=\"x\"");
        assert!(matches!(escaped.body, Cow::Owned(_)));
    }

    #[test]
    fn data_forms_give_their_body_and_no_data_an_empty_one() {
        let head =
            r#"{"specversion":"1.0","type":"kz.cctv.raw.dahua","source":"/gateways/gw-7","id":"a""#;
        let body = |rest: &str| item(&one(&format!("{head}{rest}}}"))).body.to_vec();
        assert_eq!(body(""), b"");
        assert_eq!(body(r#","data":null"#), b"");
        assert_eq!(body(r#","data":"Code=x\n""#), b"Code=x\n");
        assert_eq!(
            body(r#","data": { "a" : [1, 2.0] } "#),
            br#"{ "a" : [1, 2.0] }"#
        );
        assert_eq!(body(r#","data_base64":"/w==""#), b"\xff");
        // An attribute given twice makes the item unusable.
        let twice = one(&format!(r#"{head},"type":"kz.cctv.raw.axis"}}"#));
        assert_eq!(broken(&twice), RejectReason::InvalidBatchItem);
        // Extensions and unknown formats pass: the normaliser judges the format.
        let axis = head.replace("kz.cctv.raw.dahua", "kz.cctv.raw.axis");
        assert_eq!(
            item(&one(&format!(r#"{axis},"partitionkey":"k"}}"#))).format,
            "axis"
        );
    }

    #[test]
    fn a_batch_unreadable_as_a_whole_is_rejected_whole() {
        assert_eq!(
            whole_batch_reason(b"[{\"id\":\"\xff\"}]"),
            RejectReason::InvalidUtf8
        );
        assert_eq!(whole_batch_reason(b"not json"), RejectReason::Malformed);
        assert_eq!(whole_batch_reason(b""), RejectReason::Malformed);
        assert_eq!(whole_batch_reason(b"[{\"a\":1}"), RejectReason::Malformed);
        assert_eq!(
            whole_batch_reason(b"[{}] trailing"),
            RejectReason::Malformed
        );
        assert_eq!(
            whole_batch_reason(br#"{"specversion":"1.0"}"#),
            RejectReason::Malformed
        );
        let deep = format!("[{}{}]", "[".repeat(40), "]".repeat(40));
        assert_eq!(whole_batch_reason(deep.as_bytes()), RejectReason::TooDeep);
        let oversized = format!("[\"{}\"]", "x".repeat(MAX_BATCH_BYTES));
        assert_eq!(
            whole_batch_reason(oversized.as_bytes()),
            RejectReason::PayloadTooLarge
        );

        let items = |count: usize| format!("[{}]", vec!["{}"; count].join(","));
        assert_eq!(
            parse_batch(items(MAX_BATCH_ITEMS).as_bytes(), GATEWAY)
                .unwrap()
                .len(),
            MAX_BATCH_ITEMS
        );
        assert_eq!(
            whole_batch_reason(items(MAX_BATCH_ITEMS + 1).as_bytes()),
            RejectReason::TooManyEvents
        );
    }

    /// The one-pass reading checks each `data` value's depth instead of
    /// scanning the whole batch: a batch of usable items is refused as too
    /// deep exactly when one's `data` nests deeper than a message may.
    #[test]
    fn a_batch_of_usable_items_is_too_deep_when_one_body_is() {
        let depth = Limits::default().max_json_depth;
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let batch = |data: &str| {
            format!(
                r#"[{{"specversion":"1.0","type":"kz.cctv.raw.canonical","source":"/gateways/gw-7","id":"a","data":{{}}}},{{"specversion":"1.0","type":"kz.cctv.raw.canonical","source":"/gateways/gw-7","id":"b","data":{data}}}]"#
            )
        };
        let deepest = batch(&nested(depth));
        let entries = parse_batch(deepest.as_bytes(), GATEWAY).unwrap();
        assert_eq!(item(&entries[1]).body.as_ref(), nested(depth).as_bytes());
        assert!(!json_too_deep(deepest.as_bytes(), depth + BATCH_NESTING));
        let too_deep = batch(&nested(depth + 1));
        assert!(json_too_deep(too_deep.as_bytes(), depth + BATCH_NESTING));
        assert_eq!(
            whole_batch_reason(too_deep.as_bytes()),
            RejectReason::TooDeep
        );
        // A string full of brackets is no nesting.
        let in_string = batch(&format!("\"{}\"", nested(depth + 1)));
        assert_eq!(parse_batch(in_string.as_bytes(), GATEWAY).unwrap().len(), 2);
    }

    #[test]
    fn a_body_as_deep_as_a_message_may_be_stays_readable_in_a_batch() {
        let depth = Limits::default().max_json_depth;
        let deepest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let too_deep = format!("{}{}", "[".repeat(depth + 1), "]".repeat(depth + 1));
        let mut builder = BatchBuilder::new(GATEWAY);
        builder.push("canonical", "a", None, None, deepest.as_bytes());
        builder.push("canonical", "b", None, None, too_deep.as_bytes());
        let batch = builder.finish();
        let entries = parse_batch(&batch, GATEWAY).unwrap();
        assert_eq!(item(&entries[0]).body.as_ref(), deepest.as_bytes());
        assert_eq!(
            item(&entries[0]).content_type.as_deref(),
            Some("application/json")
        );
        // Too deep for a message: carried as a string for the normaliser to refuse.
        assert_eq!(item(&entries[1]).body, too_deep.as_bytes());
        assert_eq!(
            item(&entries[1]).content_type.as_deref(),
            Some("text/plain")
        );
    }

    fn normalizer() -> Normalizer {
        let regions = Regions::builtin().unwrap();
        let registry =
            CameraRegistry::from_csv(include_str!("../fixtures/hikvision/registry.csv"), &regions)
                .unwrap();
        Normalizer::new(
            Arc::new(Taxonomy::builtin().unwrap()),
            Arc::new(regions),
            Arc::new(registry),
            Limits::default(),
        )
    }

    /// An item normalises to exactly what the same body with the same id and
    /// headers gives when published alone.
    #[test]
    fn an_item_normalises_like_the_same_message_published_alone() {
        let normalizer = normalizer();
        let now = parse_rfc3339("2026-11-28T00:00:00Z").unwrap();
        let stored_at = parse_rfc3339("2026-11-27T04:14:07Z");
        let broken_xml = &HIKVISION_XML[..HIKVISION_XML.len() / 2];
        // (format, body, `Cctv-Received-At`, `Cctv-Camera-Id`)
        type Message<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<&'a str>);
        let messages: Vec<Message<'_>> = vec![
            ("canonical", CANONICAL, None, None),
            (
                "canonical",
                CANONICAL.trim_ascii(),
                Some("2026-11-27T03:15:06Z"),
                Some("AST-0412"),
            ),
            (
                "hikvision",
                HIKVISION_XML,
                Some("2026-11-27T04:14:06Z"),
                None,
            ),
            (
                "hikvision",
                HIKVISION_JSON,
                None,
                Some("ALA-ABAI-ROZYBAKIEV-3"),
            ),
            ("hikvision", HIKVISION_JSON.trim_ascii(), None, None),
            ("hikvision", broken_xml, None, None),
            ("hikvision", b"", None, None),
            ("axis", CANONICAL, None, None),
        ];
        let mut builder = BatchBuilder::new(GATEWAY);
        for (index, (format, body, time, subject)) in messages.iter().enumerate() {
            builder.push(format, &format!("gw-7-{index}"), *time, *subject, body);
        }
        let batch = builder.finish();
        let entries = parse_batch(&batch, GATEWAY).unwrap();
        let mut offences = 0;
        for (index, (entry, (format, body, time, subject))) in
            entries.iter().zip(&messages).enumerate()
        {
            let msg_id = format!("gw-7-{index}");
            let alone = RawMessage {
                format,
                gateway_id: GATEWAY,
                payload: body,
                msg_id: Some(&msg_id),
                camera_id: *subject,
                received_at: *time,
                stored_at,
            };
            let expected = normalizer.normalize(&alone, now);
            if matches!(expected, Outcome::Offences(_)) {
                offences += 1;
            }
            let batched = normalizer.normalize(&item(entry).raw(GATEWAY, stored_at), now);
            assert_eq!(batched, expected, "message {index}");
        }
        assert_eq!(offences, 5);
    }
}
