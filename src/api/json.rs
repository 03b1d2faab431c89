//! `google.protobuf.Value` ⇄ `serde_json::Value`, enforcing the contract's
//! rules for `data`: at most 32 levels deep and no NaN or infinite numbers.

use prost_types::{ListValue, Struct, Value as ProtoValue, value::Kind};
use serde_json::{Map, Number, Value as JsonValue};

/// The deepest `data` may be: a scalar is one level, a list or object one
/// more than its deepest item.
pub const MAX_DATA_DEPTH: usize = 32;

/// Integers up to this magnitude survive the trip through `f64` exactly,
/// so they are kept as JSON integers (`1`, not `1.0`).
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// Why a value is not acceptable as `data`; `path` points at the culprit
/// (`data.items[3]`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct InvalidJson {
    pub path: String,
    pub reason: String,
}

/// Converts a protobuf `Value` into JSON, refusing what JSON cannot carry.
pub fn json_from_proto(value: &ProtoValue) -> Result<JsonValue, InvalidJson> {
    convert(value, 1).map_err(|segments| {
        let mut segments = segments.into_iter();
        let reason = segments.next().unwrap_or_default();
        InvalidJson {
            path: format!("data{}", segments.collect::<String>()),
            reason,
        }
    })
}

/// On error returns the reason followed by the path segments from the
/// outermost to the culprit; each level inserts its own segment.
fn convert(value: &ProtoValue, level: usize) -> Result<JsonValue, Vec<String>> {
    if level > MAX_DATA_DEPTH {
        return Err(vec![format!("nested deeper than {MAX_DATA_DEPTH} levels")]);
    }
    let json = match &value.kind {
        // Not JSON at all: usually a client that misspelled the field of
        // the kind it meant (proto-loader's `struct_value` for `structValue`)
        // and would otherwise lose its data without a word.
        None => {
            return Err(vec![
                "is a google.protobuf.Value with no kind set; send null_value for null".into(),
            ]);
        }
        Some(Kind::NullValue(_)) => JsonValue::Null,
        Some(Kind::BoolValue(flag)) => JsonValue::Bool(*flag),
        Some(Kind::StringValue(text)) => JsonValue::String(text.clone()),
        Some(Kind::NumberValue(number)) => JsonValue::Number(
            json_number(*number)
                .ok_or_else(|| vec![format!("{number} is not a number JSON can carry")])?,
        ),
        Some(Kind::ListValue(list)) => {
            let mut items = Vec::with_capacity(list.values.len());
            for (index, item) in list.values.iter().enumerate() {
                let converted = convert(item, level + 1).map_err(|mut segments| {
                    segments.insert(1, format!("[{index}]"));
                    segments
                })?;
                items.push(converted);
            }
            JsonValue::Array(items)
        }
        Some(Kind::StructValue(object)) => {
            let mut fields = Map::new();
            for (key, item) in &object.fields {
                let converted = convert(item, level + 1).map_err(|mut segments| {
                    segments.insert(1, format!(".{key}"));
                    segments
                })?;
                fields.insert(key.clone(), converted);
            }
            JsonValue::Object(fields)
        }
    };
    Ok(json)
}

fn json_number(number: f64) -> Option<Number> {
    // -0.0 stays a float, so it comes back as sent.
    let negative_zero = number == 0.0 && number.is_sign_negative();
    if number.fract() == 0.0 && number.abs() < MAX_EXACT_INTEGER && !negative_zero {
        // Exact: the value is an integer well inside i64's range.
        return Some(Number::from(number as i64));
    }
    Number::from_f64(number)
}

/// Converts JSON into a protobuf `Value`.
pub fn json_to_proto(value: &JsonValue) -> ProtoValue {
    let kind = match value {
        JsonValue::Null => Kind::NullValue(0),
        JsonValue::Bool(flag) => Kind::BoolValue(*flag),
        JsonValue::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(f64::NAN)),
        JsonValue::String(text) => Kind::StringValue(text.clone()),
        JsonValue::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_proto).collect(),
        }),
        JsonValue::Object(fields) => Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(key, item)| (key.clone(), json_to_proto(item)))
                .collect(),
        }),
    };
    ProtoValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(value: f64) -> ProtoValue {
        ProtoValue {
            kind: Some(Kind::NumberValue(value)),
        }
    }

    fn list(values: Vec<ProtoValue>) -> ProtoValue {
        ProtoValue {
            kind: Some(Kind::ListValue(ListValue { values })),
        }
    }

    fn nested_lists(depth: usize) -> ProtoValue {
        (1..depth).fold(number(1.0), |inner, _| list(vec![inner]))
    }

    #[test]
    fn depth_counts_a_scalar_as_one_level() {
        assert!(json_from_proto(&nested_lists(MAX_DATA_DEPTH)).is_ok());
        let error = json_from_proto(&nested_lists(MAX_DATA_DEPTH + 1)).expect_err("too deep");
        assert!(error.reason.contains("deeper than 32"), "{error}");
        assert!(error.path.starts_with("data[0][0]"), "{error}");
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let value = ProtoValue {
            kind: Some(Kind::StructValue(Struct {
                fields: [("xs".to_owned(), list(vec![number(1.0), number(f64::NAN)]))].into(),
            })),
        };
        let error = json_from_proto(&value).expect_err("NaN");
        assert_eq!(error.path, "data.xs[1]");
        assert!(json_from_proto(&number(f64::INFINITY)).is_err());
        assert!(json_from_proto(&number(f64::NEG_INFINITY)).is_err());
    }

    #[test]
    fn a_value_with_no_kind_is_refused_not_taken_for_null() {
        let empty = list(vec![number(1.0), ProtoValue { kind: None }]);
        let error = json_from_proto(&empty).expect_err("no kind");
        assert_eq!(error.path, "data[1]");
        assert!(error.reason.contains("no kind"), "{error}");
    }

    #[test]
    fn values_round_trip_exactly() {
        let json = serde_json::json!({
            "nul": "a\u{0000}b", "emoji": "🦀", "int": 42, "neg": -7, "frac": 0.25,
            "big": 1e300, "list": [null, true, "x", []], "empty": {}
        });
        let back = json_from_proto(&json_to_proto(&json)).expect("valid");
        assert_eq!(back, json);
        let negative_zero = json_from_proto(&number(-0.0)).expect("valid");
        assert!(
            negative_zero
                .as_f64()
                .is_some_and(|zero| zero.is_sign_negative())
        );
        assert_eq!(back["int"].to_string(), "42", "integers stay integers");
    }
}
