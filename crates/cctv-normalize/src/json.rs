//! JSON helpers shared by the JSON vendor formats: a bounded parse into a
//! `serde_json::Value`, and lenient field readers for vendors that send the
//! same field as a number in one firmware and a string in another.

use std::borrow::Cow;

use serde_json::Value;

use crate::limits::{json_too_deep, Limits};
use crate::outcome::{missing_field, RejectReason, Rejection};

/// Parses a JSON payload after the depth check; classifies errors.
pub(crate) fn parse_value(payload: &[u8], limits: &Limits) -> Result<Value, Rejection> {
    if json_too_deep(payload, limits.max_json_depth) {
        return Err(Rejection::new(
            RejectReason::TooDeep,
            format!("JSON nests deeper than {} levels", limits.max_json_depth),
        ));
    }
    serde_json::from_slice(payload).map_err(json_rejection)
}

/// Follows a path of object keys.
pub(crate) fn path<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |value, key| value.get(key))
}

/// A string field, or a number rendered as text; `None` for null, empty or
/// other types.
pub(crate) fn text(value: Option<&Value>) -> Option<Cow<'_, str>> {
    match value? {
        Value::String(text) if !text.trim().is_empty() => Some(Cow::Borrowed(text.as_str())),
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
    value: Option<&'v Value>,
    field: &str,
) -> Result<Cow<'v, str>, Rejection> {
    optional_text(value, field)?.ok_or_else(|| missing_field(field))
}

/// An optional string (or number rendered as text); `None` for absent, null
/// or blank, an invalid field for objects, arrays and booleans.
pub(crate) fn optional_text<'v>(
    value: Option<&'v Value>,
    field: &str,
) -> Result<Option<Cow<'v, str>>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(Cow::Borrowed(text.as_str()))),
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

    #[test]
    fn lenient_readers_accept_numbers_as_text_and_text_as_numbers() {
        let value: Value =
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
