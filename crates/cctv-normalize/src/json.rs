//! JSON helpers shared by the JSON vendor formats: a bounded parse into a
//! borrowed JSON tree ([`Value`]), and lenient field readers for vendors that
//! send the same field as a number in one firmware and a string in another.
//!
//! [`Value`] is `serde_json::Value` without the copies: strings without
//! escapes borrow from the payload and objects are a vector of their members
//! (vendor objects have a handful of keys, so a scan beats a tree), which
//! took about a quarter of the ingest's time on a mixed-vendor load.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
pub(crate) use serde_json::Number;

use crate::limits::{json_too_deep, Limits};
use crate::outcome::{missing_field, RejectReason, Rejection};

/// A JSON value borrowing its strings from the parsed text where it can.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Map<'a>),
}

/// A JSON object's members in their order; a repeated key reads as its last
/// value (as `serde_json::Map` keeps it).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Map<'a> {
    members: Vec<(Cow<'a, str>, Value<'a>)>,
}

impl<'a> Map<'a> {
    /// The members in their order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        self.members
            .iter()
            .map(|(name, value)| (name.as_ref(), value))
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.members
            .iter()
            .rev()
            .find(|(name, _)| name.as_ref() == key)
            .map(|(_, value)| value)
    }
}

impl<'a> Value<'a> {
    /// The member `key` of an object; `None` for other values.
    pub(crate) fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(map) => map.get(key),
            _ => None,
        }
    }

    pub(crate) fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&Map<'a>> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }
}

impl serde::Serialize for Value<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(flag) => serializer.serialize_bool(*flag),
            Value::Number(number) => number.serialize(serializer),
            Value::String(text) => serializer.serialize_str(text),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.members.len()))?;
                for (name, value) in &map.members {
                    out.serialize_entry(name.as_ref(), value)?;
                }
                out.end()
            }
        }
    }
}

/// The value as compact JSON (for messages).
impl fmt::Display for Value<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        formatter.write_str(&text)
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(number.into()))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(number.into()))
    }

    fn visit_f64<E>(self, number: f64) -> Result<Value<'de>, E> {
        Ok(Number::from_f64(number).map_or(Value::Null, Value::Number))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text)))
    }

    fn visit_none<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value<'de>, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        // serde_json gives no size hint: start with room for a typical
        // vendor array or object rather than growing from nothing.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        Ok(Value::Object(Map { members }))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Parses a JSON payload after the depth check; classifies errors. The text
/// is UTF-8 already (the normaliser checked it), so strings are not checked
/// again as `from_slice` would.
pub(crate) fn parse_value<'a>(payload: &'a str, limits: &Limits) -> Result<Value<'a>, Rejection> {
    if json_too_deep(payload.as_bytes(), limits.max_json_depth) {
        return Err(Rejection::new(
            RejectReason::TooDeep,
            format!("JSON nests deeper than {} levels", limits.max_json_depth),
        ));
    }
    serde_json::from_str(payload).map_err(json_rejection)
}

/// Follows a path of object keys.
pub(crate) fn path<'v, 'a>(value: &'v Value<'a>, keys: &[&str]) -> Option<&'v Value<'a>> {
    keys.iter().try_fold(value, |value, key| value.get(key))
}

/// A string field, or a number rendered as text; `None` for null, empty or
/// other types.
pub(crate) fn text<'a>(value: Option<&'a Value<'a>>) -> Option<Cow<'a, str>> {
    match value? {
        Value::String(text) if !text.trim().is_empty() => Some(Cow::Borrowed(text.as_ref())),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        _ => None,
    }
}

/// A number field, or a string holding a number; `None` for null, empty or
/// other types. Non-finite values are refused by the JSON grammar already.
pub(crate) fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// A boolean field, also accepting `"true"`/`"false"` text and 0/1.
pub(crate) fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        Value::Number(number) => number.as_f64().map(|n| n != 0.0),
        _ => None,
    }
}

/// A required string (or number rendered as text): missing, null or blank is
/// a missing field, any other type an invalid one.
pub(crate) fn required_text<'v>(
    value: Option<&'v Value<'v>>,
    field: &str,
) -> Result<Cow<'v, str>, Rejection> {
    optional_text(value, field)?.ok_or_else(|| missing_field(field))
}

/// An optional string (or number rendered as text); `None` for absent, null
/// or blank, an invalid field for objects, arrays and booleans.
pub(crate) fn optional_text<'v>(
    value: Option<&'v Value<'v>>,
    field: &str,
) -> Result<Option<Cow<'v, str>>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(Cow::Borrowed(text.as_ref()))),
        Some(Value::Number(number)) => Ok(Some(Cow::Owned(number.to_string()))),
        Some(_) => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("field {field} is neither text nor a number"),
        )),
    }
}

/// An optional number (or numeric string); `None` for absent, null or blank,
/// an invalid field for anything else that is not a number.
pub(crate) fn optional_number(
    value: Option<&Value>,
    field: &str,
) -> Result<Option<f64>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(value) => number(Some(value)).map(Some).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidField,
                format!("field {field} is not a number"),
            )
        }),
    }
}

/// Classifies a serde_json error: syntax and truncation are malformed input,
/// wrong types are invalid fields, and the recursion limit means too deep.
pub(crate) fn json_rejection(error: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let text = error.to_string();
    let reason = if text.contains("recursion limit") {
        RejectReason::TooDeep
    } else {
        match error.classify() {
            Category::Data => RejectReason::InvalidField,
            Category::Syntax | Category::Eof | Category::Io => RejectReason::Malformed,
        }
    };
    Rejection::new(reason, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed tree reads as `serde_json::Value` does: the same text
    /// for every string and number (the identity keys are built from them),
    /// escapes decoded, the last of a repeated key, the same JSON printed.
    #[test]
    fn the_borrowed_tree_reads_as_serde_json_does() {
        let documents = [
            r#"{"a":"plain","b":"esc\"aped\u0416","c":12345678901234567890,"d":-17,"e":1.50,"f":2e3,"g":[1,"x",null,true,{"h":0.1}]}"#,
            r#"[{"id":1695033600.25},{"id":"1695033600.250"},{"id":1e-7},{"id":-0.0}]"#,
            r#""just text""#,
            "null",
        ];
        for document in documents {
            let ours: Value<'_> = serde_json::from_str(document).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(document).unwrap();
            assert_eq!(ours.to_string(), theirs.to_string(), "{document}");
            for key in ["a", "b", "c", "d", "e", "f", "x"] {
                let ours = text(ours.get(key)).map(Cow::into_owned);
                let theirs = match theirs.get(key) {
                    Some(serde_json::Value::String(text)) if !text.trim().is_empty() => {
                        Some(text.clone())
                    }
                    Some(serde_json::Value::Number(number)) => Some(number.to_string()),
                    _ => None,
                };
                assert_eq!(ours, theirs, "{key} of {document}");
            }
        }
        // A repeated key reads as its last value, as serde_json keeps it.
        let repeated: Value<'_> = serde_json::from_str(r#"{"a":"first","a":"last"}"#).unwrap();
        assert!(matches!(
            repeated.get("a"),
            Some(Value::String(Cow::Borrowed("last")))
        ));
        let ours: Value<'_> = serde_json::from_str(documents[0]).unwrap();
        assert!(matches!(ours.get("b"), Some(Value::String(Cow::Owned(_)))));
        assert_eq!(text(path(&ours, &["g"])), None);
    }

    #[test]
    fn lenient_readers_accept_numbers_as_text_and_text_as_numbers() {
        let value: Value<'_> =
            serde_json::from_str(r#"{"a":3,"b":"0.74","c":"","d":null,"e":"true","f":{"g":1}}"#)
                .unwrap();
        assert_eq!(text(value.get("a")).as_deref(), Some("3"));
        assert_eq!(number(value.get("b")), Some(0.74));
        assert_eq!(text(value.get("c")), None);
        assert_eq!(number(value.get("d")), None);
        assert_eq!(boolean(value.get("e")), Some(true));
        assert_eq!(number(path(&value, &["f", "g"])), Some(1.0));
        assert_eq!(path(&value, &["f", "x"]), None);
    }
}
