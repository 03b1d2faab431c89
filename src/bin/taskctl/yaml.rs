//! A small YAML emitter for JSON values, written so that YAML 1.1 readers
//! (PyYAML, Go's yaml.v2, Ruby's Psych) and YAML 1.2 readers read back the
//! same value: every string that either would take for something else —
//! `2026-11-25`, `yes`, `on`, `1_000`, `12:30`, an RFC 3339 time — is
//! quoted, and floats are written in a form both read as floats.
//!
//! `yaml_serde` quotes only what a YAML 1.2 reader would misread, and its
//! scalar styles cannot be chosen, hence this module. Nothing here knows of
//! protobuf; `proto_json` hands over the value.

use std::fmt::Write as _;

use yaml_serde::{Mapping, Number, Value};

/// An implicit key longer than this is not allowed (YAML allows 1024
/// characters, the `: ` included); longer keys are written as `? key`.
const MAX_IMPLICIT_KEY_CHARS: usize = 1_000;

/// The value as a block YAML document, ending in a newline.
pub fn to_string(value: &Value) -> String {
    let mut text = String::new();
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => write_mapping(&mut text, mapping, 0),
        Value::Sequence(items) if !items.is_empty() => write_sequence(&mut text, items, 0),
        scalar => {
            text.push_str(&flow_text(scalar));
            text.push('\n');
        }
    }
    text
}

/// One string as a scalar: plain when every YAML reader reads it back as
/// this string, quoted otherwise.
pub fn string_scalar(text: &str) -> String {
    if is_plain_safe(text) {
        text.to_owned()
    } else if text.chars().all(is_single_quotable) {
        format!("'{}'", text.replace('\'', "''"))
    } else {
        double_quoted(text)
    }
}

/// The entries of a non-empty mapping, each on its own line at `indent`.
fn write_mapping(text: &mut String, mapping: &Mapping, indent: usize) {
    write_mapping_from(text, mapping, indent, false);
}

/// Like [`write_mapping`]; with `first_inline`, the first entry goes on the
/// current line (after a sequence's `- `).
fn write_mapping_from(text: &mut String, mapping: &Mapping, indent: usize, first_inline: bool) {
    for (index, (key, value)) in mapping.iter().enumerate() {
        if index > 0 || !first_inline {
            push_indent(text, indent);
        }
        let key = match key {
            Value::String(key) => string_scalar(key),
            other => flow_text(other),
        };
        if key.chars().count() > MAX_IMPLICIT_KEY_CHARS {
            text.push_str("? ");
            text.push_str(&key);
            text.push('\n');
            push_indent(text, indent);
        } else {
            text.push_str(&key);
        }
        text.push(':');
        write_value_after_indicator(text, value, indent);
    }
}

/// The items of a non-empty sequence, each `- item` at `indent`.
fn write_sequence(text: &mut String, items: &[Value], indent: usize) {
    write_sequence_from(text, items, indent, false);
}

fn write_sequence_from(text: &mut String, items: &[Value], indent: usize, first_inline: bool) {
    for (index, item) in items.iter().enumerate() {
        if index > 0 || !first_inline {
            push_indent(text, indent);
        }
        text.push_str("- ");
        match item {
            Value::Mapping(mapping) if !mapping.is_empty() => {
                write_mapping_from(text, mapping, indent + 2, true);
            }
            Value::Sequence(nested) if !nested.is_empty() => {
                write_sequence_from(text, nested, indent + 2, true);
            }
            scalar => {
                text.push_str(&flow_text(scalar));
                text.push('\n');
            }
        }
    }
}

/// The value of a `key:` whose key sits at `indent`: a scalar on the same
/// line, a mapping indented below it, a sequence at the key's indent (as
/// `yaml_serde` and kubectl write them).
fn write_value_after_indicator(text: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => {
            text.push('\n');
            write_mapping(text, mapping, indent + 2);
        }
        Value::Sequence(items) if !items.is_empty() => {
            text.push('\n');
            write_sequence(text, items, indent);
        }
        scalar => {
            text.push(' ');
            text.push_str(&flow_text(scalar));
            text.push('\n');
        }
    }
}

fn push_indent(text: &mut String, indent: usize) {
    text.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar, or an empty collection, on one line.
fn flow_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(true) => "true".to_owned(),
        Value::Bool(false) => "false".to_owned(),
        Value::Number(number) => number_text(number),
        Value::String(string) => string_scalar(string),
        Value::Sequence(_) => "[]".to_owned(),
        Value::Mapping(_) => "{}".to_owned(),
        // JSON has no tags; should one come, its value is what matters.
        Value::Tagged(tagged) => flow_text(&tagged.value),
    }
}

/// Integers as they are; floats always with a dot and, when they have an
/// exponent, a signed one (`1.0e+300`): YAML 1.1 reads `1e300` as a string.
fn number_text(number: &Number) -> String {
    let text = number.to_string();
    if !number.is_f64() {
        return text;
    }
    // ryu's shortest form: `0.25`, `1e300`, `1.5e-7`; never inf or NaN
    // here, which JSON cannot hold.
    let (mantissa, exponent) = match text.split_once('e') {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (text.as_str(), None),
    };
    let mut fixed = mantissa.to_owned();
    if !mantissa.contains('.')
        && mantissa
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'-')
    {
        fixed.push_str(".0");
    }
    if let Some(exponent) = exponent {
        fixed.push('e');
        if !exponent.starts_with(['-', '+']) {
            fixed.push('+');
        }
        fixed.push_str(exponent);
    }
    fixed
}

/// True when `text` may be written plain: it is made of letters, digits and
/// a few harmless signs, starts with a letter or digit, and no YAML 1.1 or
/// 1.2 reader resolves it to anything but a string. Conservative: quoting
/// what could have been plain costs nothing.
fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    first.is_alphanumeric()
        && text.chars().all(|character| {
            (character.is_alphanumeric() && is_single_quotable(character))
                || matches!(
                    character,
                    ' ' | '-' | '.' | '_' | '/' | ':' | '@' | '+' | ',' | '(' | ')' | '='
                )
        })
        && !text.ends_with([' ', ':'])
        && !text.contains(": ")
        && !resolves_to_another_type(text)
}

/// Whether a YAML 1.1 or 1.2 reader (or `yaml_serde`, which reads what
/// Rust's float parser reads) would take the plain scalar `text` for a
/// null, a boolean, a number or a timestamp. Errs towards yes.
fn resolves_to_another_type(text: &str) -> bool {
    let lowercase = text.to_ascii_lowercase();
    // YAML 1.1 booleans (y and n included, as yaml.v2 reads them), nulls,
    // and the words Rust's float parser takes.
    if matches!(
        lowercase.as_str(),
        "y" | "n"
            | "yes"
            | "no"
            | "true"
            | "false"
            | "on"
            | "off"
            | "null"
            | "inf"
            | "infinity"
            | "nan"
    ) {
        return true;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    is_prefixed_integer(unsigned) || is_decimal_like(unsigned) || is_timestamp_like(text)
}

/// `0x1F`, `0o17`, `0b1_0`: YAML 1.1 and 1.2 integers with a base prefix.
fn is_prefixed_integer(text: &str) -> bool {
    let Some((prefix, digits)) = text.split_at_checked(2) else {
        return false;
    };
    let digit_ok: fn(char) -> bool = match prefix.to_ascii_lowercase().as_str() {
        "0x" => |character| character.is_ascii_hexdigit() || character == '_',
        "0o" => |character| character.is_digit(8) || character == '_',
        "0b" => |character| matches!(character, '0' | '1' | '_'),
        _ => return false,
    };
    !digits.is_empty() && digits.chars().all(digit_ok)
}

/// Digits with `_`, `.` and `:` (YAML 1.1 integers `1_000`, octals `017`,
/// sexagesimals `1:30`, floats `1.5`, `1.2.3`), optionally with an
/// exponent: anything of that shape reads as a number to some reader.
fn is_decimal_like(text: &str) -> bool {
    let (body, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let body_ok = body.chars().any(|character| character.is_ascii_digit())
        && body
            .chars()
            .all(|character| character.is_ascii_digit() || matches!(character, '_' | '.' | ':'));
    let exponent_ok = exponent.is_none_or(|exponent| {
        let digits = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
        !digits.is_empty() && digits.chars().all(|character| character.is_ascii_digit())
    });
    body_ok && exponent_ok
}

/// `2026-11-25`, `2026-11-25T22:52:48.083Z`, `2001-12-14 21:59:43.10 -5`:
/// four digits and a dash, then only what a YAML 1.1 timestamp holds.
fn is_timestamp_like(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 6
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[5..].iter().all(|byte| {
            byte.is_ascii_digit()
                || matches!(
                    byte,
                    b'-' | b':' | b'.' | b'T' | b't' | b'Z' | b'z' | b'+' | b' ' | b'\t'
                )
        })
}

/// Characters a single-quoted scalar may hold as they are: printable, and
/// not one that YAML 1.1 takes for a line break (U+0085, U+2028, U+2029)
/// or a byte-order mark.
fn is_single_quotable(character: char) -> bool {
    match character {
        ' '..='~' => true,
        '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}' => false,
        '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => true,
        _ => false,
    }
}

/// A double-quoted scalar with escapes that YAML 1.1 and 1.2 both know.
fn double_quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\0' => quoted.push_str("\\0"),
            '\t' => quoted.push_str("\\t"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            character if is_single_quotable(character) => quoted.push(character),
            character => {
                let code = u32::from(character);
                // Writing to a String cannot fail.
                let _ = if code <= 0xFF {
                    write!(quoted, "\\x{code:02X}")
                } else {
                    write!(quoted, "\\u{code:04X}")
                };
            }
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a YAML 1.1 reader takes for another type, and a few a YAML
    /// 1.2 reader does.
    const MISREAD: &[&str] = &[
        "2026-11-25",
        "2026-11-25T22:52:48.083497971Z",
        "2001-12-14 21:59:43.10 -5",
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "true",
        "null",
        "1_000",
        "017",
        "0x1F",
        "0b101",
        "0o17",
        "12:30",
        "190:20:30",
        "1.5",
        "1.2.3",
        "1e3",
        "6.8523015e+5",
        "-7",
        "+1",
        ".5",
        ".inf",
        "-.inf",
        ".NaN",
        "nan",
        "Infinity",
        "~",
        "",
        "<<",
        "=",
        "1",
    ];

    #[test]
    fn strings_that_readers_would_misread_are_quoted() {
        for text in MISREAD {
            let scalar = string_scalar(text);
            assert!(
                scalar.starts_with(['\'', '"']),
                "{text:?} should be quoted, got {scalar}"
            );
        }
    }

    #[test]
    fn ordinary_strings_stay_plain() {
        for text in [
            "0190b4a4-5d3e-7f00-8000-000000000000",
            "resize photos",
            "TASK_STATUS_COMPLETED",
            "taskprocessor.v1.TaskService",
            "step 5 of 10",
            "vm-d13b1b",
            "team=data",
            "http://host:80/path",
            "e1",
            "yesterday",
            "café",
        ] {
            assert_eq!(string_scalar(text), text);
        }
    }

    #[test]
    fn every_string_reads_back_as_itself() {
        let mut strings: Vec<String> = MISREAD.iter().map(|text| (*text).to_owned()).collect();
        strings.extend(
            [
                "it's",
                "a: b",
                "# not a comment",
                "- not a list",
                "trailing ",
                " leading",
                "two\nlines",
                "tab\there",
                "nul\0byte",
                "\u{85}\u{2028}\u{2029}\u{FEFF}\u{7F}\u{9F}",
                "quote \" and backslash \\",
                "🦀",
                "&anchor",
                "*alias",
                "!tag",
                "%directive",
                "@at",
                "`tick",
                "{flow}",
                "[flow]",
                "key:",
                "?",
                "|",
                ">",
                "---",
                "...",
            ]
            .map(str::to_owned),
        );
        strings.push("k".repeat(2_000));
        for string in &strings {
            let mut mapping = Mapping::new();
            mapping.insert(Value::String(string.clone()), Value::String(string.clone()));
            let value =
                Value::Sequence(vec![Value::String(string.clone()), Value::Mapping(mapping)]);
            let yaml = to_string(&value);
            let read: Value = yaml_serde::from_str(&yaml)
                .unwrap_or_else(|error| panic!("{string:?} as {yaml}: {error}"));
            assert_eq!(read, value, "{string:?} as {yaml}");
        }
    }

    #[test]
    fn floats_keep_a_dot_and_a_signed_exponent() {
        let floats: Value =
            serde_json::from_str("[0.25, 1e300, 1.5e-7, -2.5e20, 9007199254740994.0]")
                .expect("JSON");
        assert_eq!(
            to_string(&floats),
            "- 0.25\n- 1.0e+300\n- 1.5e-7\n- -2.5e+20\n- 9007199254740994.0\n"
        );
        let read: Value = yaml_serde::from_str(&to_string(&floats)).expect("YAML");
        assert_eq!(read, floats);
    }

    #[test]
    fn nesting_is_written_in_block_style() {
        let value: Value = serde_json::from_str(
            r#"{"id": "x", "data": {"sizes": [64, {"a": 1, "b": [true, null]}, [], {}], "deep": [[1, 2]]}, "empty": {}}"#,
        )
        .expect("JSON");
        let yaml = to_string(&value);
        assert_eq!(
            yaml,
            "id: x\n\
             data:\n  \
               sizes:\n  \
               - 64\n  \
               - a: 1\n    \
                 b:\n    \
                 - true\n    \
                 - null\n  \
               - []\n  \
               - {}\n  \
               deep:\n  \
               - - 1\n    \
                 - 2\n\
             empty: {}\n"
        );
        let read: Value = yaml_serde::from_str(&yaml).expect("YAML");
        assert_eq!(read, value);
    }
}
