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

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::{json_too_deep, Limits};
use crate::normalizer::RawMessage;
use crate::outcome::{clip, RejectReason, Rejection};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// Position in the batch, from 0.
    pub index: usize,
    /// `<format>` of the item's `type` `kz.cctv.raw.<format>`. Not checked
    /// here: the normaliser rejects an unknown one as `unsupported_format`.
    pub format: String,
    /// CloudEvents `id`: the gateway's id for the message (its `Nats-Msg-Id`).
    pub id: String,
    /// CloudEvents `time`, as `Cctv-Received-At`.
    pub time: Option<String>,
    /// CloudEvents `subject`: the camera id, as `Cctv-Camera-Id`.
    pub subject: Option<String>,
    /// CloudEvents `datacontenttype`, as sent (not checked).
    pub content_type: Option<String>,
    /// The body exactly as the device sent it: the original text of a JSON
    /// `data` value, the content of a `data` string, or the decoded
    /// `data_base64`; empty when the item has neither.
    pub body: Vec<u8>,
}

impl BatchItem {
    /// The item as a raw message of gateway `gateway_id` (the batch
    /// subject's token): `id` is the message id, `subject` the camera header,
    /// `time` the receipt time; `stored_at` is the batch's stream time.
    pub fn raw<'a>(
        &'a self,
        gateway_id: &'a str,
        stored_at: Option<DateTime<Utc>>,
    ) -> RawMessage<'a> {
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
pub enum BatchEntry {
    /// A usable item, to normalise like a single message.
    Item(BatchItem),
    /// An item that is not a usable CloudEvent, to dead-letter on its own.
    Broken {
        /// Position in the batch, from 0.
        index: usize,
        /// Why it cannot be used.
        rejection: Rejection,
        /// The item's JSON text as received.
        body: Vec<u8>,
    },
}

impl BatchEntry {
    /// Position of the entry in the batch, from 0.
    pub fn index(&self) -> usize {
        match self {
            BatchEntry::Item(item) => item.index,
            BatchEntry::Broken { index, .. } => *index,
        }
    }
}

/// The attributes of an item the pipeline reads. Unknown attributes
/// (CloudEvents extensions) are ignored.
#[derive(Deserialize)]
struct WireItem<'a> {
    specversion: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    source: Option<String>,
    id: Option<String>,
    time: Option<String>,
    subject: Option<String>,
    datacontenttype: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_base64: Option<String>,
}

/// Splits a batch published on `cctv.raw.batch.<gateway_id>` into its
/// entries, in order. `Err` when the batch cannot be read as a whole (it is
/// then dead-lettered whole); each unusable item is a
/// [`BatchEntry::Broken`] entry instead, so one bad item costs no other.
pub fn parse_batch(payload: &[u8], gateway_id: &str) -> Result<Vec<BatchEntry>, Rejection> {
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
    // Before any parser, so that a nesting bomb costs one linear pass.
    let max_depth = Limits::default().max_json_depth + BATCH_NESTING;
    if json_too_deep(payload, max_depth) {
        return Err(Rejection::new(
            RejectReason::TooDeep,
            format!("batch JSON nests deeper than {max_depth} levels"),
        ));
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
    let source = format!("{SOURCE_PREFIX}{gateway_id}");
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match parse_item(index, item.get(), &source) {
            Ok(item) => BatchEntry::Item(item),
            Err(rejection) => BatchEntry::Broken {
                index,
                rejection,
                body: item.get().as_bytes().to_vec(),
            },
        })
        .collect())
}

fn invalid_item(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidBatchItem, detail)
}

/// Reads one item; `source` is the only `source` the batch's gateway may name.
fn parse_item(index: usize, text: &str, source: &str) -> Result<BatchItem, Rejection> {
    // Serde would also read a struct from an array of its fields.
    if !text.trim_start().starts_with('{') {
        return Err(invalid_item(format!("item {index} is not a JSON object")));
    }
    let wire: WireItem<'_> = serde_json::from_str(text)
        .map_err(|error| invalid_item(format!("item {index} is not a CloudEvent: {error}")))?;
    if wire.specversion.as_deref() != Some(SPEC_VERSION) {
        return Err(invalid_item(format!(
            "item {index}: specversion {:?} is not \"{SPEC_VERSION}\"",
            wire.specversion.as_deref().map(clip)
        )));
    }
    let Some(id) = wire.id.filter(|id| !id.is_empty()) else {
        return Err(invalid_item(format!("item {index}: id is missing or empty")));
    };
    let Some(format) = wire
        .event_type
        .as_deref()
        .and_then(|event_type| event_type.strip_prefix(TYPE_PREFIX))
    else {
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
        (None, Some(encoded)) => BASE64.decode(encoded.as_bytes()).map_err(|error| {
            invalid_item(format!("item {index}: data_base64 is not base64: {error}"))
        })?,
        // The normaliser judges an empty body like an empty message.
        (None, None) => Vec::new(),
    };
    Ok(BatchItem {
        index,
        format: format.to_string(),
        id,
        time: wire.time,
        subject: wire.subject,
        content_type: wire.datacontenttype,
        body,
    })
}

/// The body of a `data` attribute: a string's content, else the value's
/// original text.
fn data_body(index: usize, data: &RawValue) -> Result<Vec<u8>, Rejection> {
    let text = data.get();
    if !text.starts_with('"') {
        return Ok(text.as_bytes().to_vec());
    }
    serde_json::from_str::<String>(text)
        .map(String::into_bytes)
        .map_err(|error| invalid_item(format!("item {index}: data string: {error}")))
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
