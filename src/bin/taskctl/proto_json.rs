//! Generated messages as proto3 JSON — lowerCamelCase names, enum names,
//! RFC 3339 timestamps, 64-bit integers as strings, default values left
//! out, fields in declaration order, map entries (labels, the keys of
//! `data` and `result`) sorted by key — which is what grpcurl prints, and
//! the same value as YAML (written by `yaml`).
//!
//! prost's types know no JSON; the message is re-read through its
//! descriptor (`prost-reflect`) from the descriptor set the build embeds.
//! The same descriptors read a message from proto3 JSON
//! (`create --from-file`).

use std::{cmp::Ordering, io};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};
use yaml_serde::{Mapping, Value as Tree};

use crate::{errors::CliError, yaml};

/// Full names of the messages `taskctl` prints.
pub const TASK: &str = "taskprocessor.v1.Task";
pub const LIST_TASKS_RESPONSE: &str = "taskprocessor.v1.ListTasksResponse";
pub const BATCH_CREATE_TASKS_RESPONSE: &str = "taskprocessor.v1.BatchCreateTasksResponse";
/// What each line of `create --from-file` holds.
pub const CREATE_TASK_REQUEST: &str = "taskprocessor.v1.CreateTaskRequest";
pub const WATCH_TASK_RESPONSE: &str = "taskprocessor.v1.WatchTaskResponse";
pub const SCHEDULE: &str = "taskprocessor.v1.Schedule";
pub const LIST_SCHEDULES_RESPONSE: &str = "taskprocessor.v1.ListSchedulesResponse";
/// The answer of `DeleteTask` and `DeleteSchedule`.
pub const EMPTY: &str = "google.protobuf.Empty";

/// Integers up to this magnitude are exact in an `f64`.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// The descriptors of our protos, decoded once.
#[derive(Debug, Clone)]
pub struct ProtoJson {
    pool: DescriptorPool,
}

/// How much white space the JSON gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonLayout {
    /// Indented by two spaces, as grpcurl prints.
    Pretty,
    /// One line: one message per line in streams.
    Compact,
}

impl ProtoJson {
    pub fn new() -> Result<Self, CliError> {
        let pool = DescriptorPool::decode(task_processor::pb::FILE_DESCRIPTOR_SET)
            .map_err(|error| CliError::Render(format!("the embedded descriptor set: {error}")))?;
        Ok(Self { pool })
    }

    pub fn descriptor(&self, full_name: &str) -> Result<MessageDescriptor, CliError> {
        self.pool
            .get_message_by_name(full_name)
            .ok_or_else(|| CliError::Render(format!("no descriptor for {full_name}")))
    }

    /// The message as a dynamic one, for serde.
    pub fn dynamic(
        &self,
        message: &impl Message,
        full_name: &str,
    ) -> Result<DynamicMessage, CliError> {
        DynamicMessage::decode(
            self.descriptor(full_name)?,
            message.encode_to_vec().as_slice(),
        )
        .map_err(|error| CliError::Render(format!("{full_name}: {error}")))
    }

    /// The message as proto3 JSON text, without a final newline.
    pub fn to_json(
        &self,
        message: &impl Message,
        full_name: &str,
        layout: JsonLayout,
    ) -> Result<String, CliError> {
        let tree = self.tree(message, full_name)?;
        let mut bytes = Vec::new();
        let written = match layout {
            JsonLayout::Pretty => write_json(&tree, &mut bytes, PrettyFormatter::new()),
            JsonLayout::Compact => write_json(&tree, &mut bytes, CompactFormatter),
        };
        written.map_err(|error| CliError::Render(format!("{full_name}: {error}")))?;
        String::from_utf8(bytes)
            .map_err(|error| CliError::Render(format!("{full_name}: JSON is not UTF-8: {error}")))
    }

    /// The message written as one proto3 JSON value in `text`, read as
    /// protojson reads it: lowerCamelCase or the proto's own field names,
    /// unknown fields refused. The error says what is wrong and at which
    /// column of `text`, which is one line of a file.
    pub fn read_json<M: Message + Default>(
        &self,
        text: &str,
        full_name: &str,
    ) -> Result<M, String> {
        let descriptor = self
            .descriptor(full_name)
            .map_err(|error| error.to_string())?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
            .and_then(|message| deserializer.end().map(|()| message))
            .map_err(|error| at_column(&error))?;
        message
            .transcode_to()
            .map_err(|error| format!("{full_name}: {error}"))
    }

    /// The same value as [`Self::to_json`], as YAML (ending in a newline).
    pub fn to_yaml(&self, message: &impl Message, full_name: &str) -> Result<String, CliError> {
        Ok(yaml::to_string(&self.tree(message, full_name)?))
    }

    /// The proto3 JSON value of the message, in an order-keeping tree with
    /// map entries sorted: prost-reflect writes maps in hash order, which
    /// would print the same task differently each time.
    fn tree(&self, message: &impl Message, full_name: &str) -> Result<Tree, CliError> {
        let dynamic = self.dynamic(message, full_name)?;
        let mut bytes = Vec::new();
        write_json(&dynamic, &mut bytes, CompactFormatter)
            .map_err(|error| CliError::Render(format!("{full_name}: {error}")))?;
        let mut tree: Tree = serde_json::from_slice(&bytes)
            .map_err(|error| CliError::Render(format!("{full_name}: {error}")))?;
        sort_maps(&mut tree, &dynamic.descriptor());
        Ok(tree)
    }
}

/// Sorts, in the JSON value of a `message`, the entries of every map field
/// and of every `google.protobuf.Struct`, at any depth.
fn sort_maps(value: &mut Tree, message: &MessageDescriptor) {
    if matches!(
        message.full_name(),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
    ) {
        sort_struct_value(value);
        return;
    }
    let Tree::Mapping(fields) = value else {
        return;
    };
    for (name, field_value) in fields.iter_mut() {
        let Some(field) = name
            .as_str()
            .and_then(|name| message.get_field_by_json_name(name))
        else {
            continue;
        };
        let Kind::Message(field_message) = field.kind() else {
            continue;
        };
        match field_value {
            Tree::Mapping(entries) if field.is_map() => {
                sort_entries(entries);
                if let Kind::Message(value_message) = field_message.map_entry_value_field().kind() {
                    for entry_value in entries.values_mut() {
                        sort_maps(entry_value, &value_message);
                    }
                }
            }
            Tree::Sequence(items) if field.is_list() => {
                for item in items {
                    sort_maps(item, &field_message);
                }
            }
            single => sort_maps(single, &field_message),
        }
    }
}

/// A `google.protobuf.Value` as JSON: objects are `Struct`s, whose keys are
/// sorted; arrays are `ListValue`s.
fn sort_struct_value(value: &mut Tree) {
    match value {
        Tree::Mapping(entries) => {
            sort_entries(entries);
            entries.values_mut().for_each(sort_struct_value);
        }
        Tree::Sequence(items) => items.iter_mut().for_each(sort_struct_value),
        _ => {}
    }
}

/// Sorts the entries of one map by key: integer keys (JSON writes them as
/// strings) by value, all others as text.
fn sort_entries(entries: &mut Mapping) {
    let mut sorted: Vec<(Tree, Tree)> = std::mem::take(entries).into_iter().collect();
    sorted.sort_by(|(left, _), (right, _)| compare_keys(left, right));
    *entries = sorted.into_iter().collect();
}

fn compare_keys(left: &Tree, right: &Tree) -> Ordering {
    let (Some(left), Some(right)) = (left.as_str(), right.as_str()) else {
        return Ordering::Equal;
    };
    match (left.parse::<i128>(), right.parse::<i128>()) {
        (Ok(left_number), Ok(right_number)) => left_number.cmp(&right_number),
        _ => left.cmp(right),
    }
}

/// serde_json's error with its place as a column: the text read is one
/// line, so its "at line 1 column 9" would mislead next to a file's line.
fn at_column(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let place = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&place) {
        Some(problem) => format!("{problem} (column {})", error.column()),
        None => text,
    }
}

fn write_json<F: Formatter>(
    value: &impl Serialize,
    writer: &mut Vec<u8>,
    formatter: F,
) -> Result<(), serde_json::Error> {
    let mut serializer =
        serde_json::Serializer::with_formatter(writer, IntegralNumbers { inner: formatter });
    value.serialize(&mut serializer)
}

/// Writes a whole `f64` (as every number in a `google.protobuf.Value` is)
/// as an integer, `1` rather than `1.0`, as Go's protojson and so grpcurl
/// do; everything else goes to the inner formatter. The one other `double`
/// of our messages, `RetryPolicy.backoff_multiplier`, prints as protojson
/// prints it too: `2`, `1.5`.
struct IntegralNumbers<F> {
    inner: F,
}

impl<F: Formatter> Formatter for IntegralNumbers<F> {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // -0.0 keeps its sign by staying a float.
        let negative_zero = value == 0.0 && value.is_sign_negative();
        if value.fract() == 0.0 && value.abs() < MAX_EXACT_INTEGER && !negative_zero {
            // Exact: whole and well inside i64's range.
            return self.inner.write_i64(writer, value as i64);
        }
        self.inner.write_f64(writer, value)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.inner.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.end_object_key(writer)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.inner.end_object_value(writer)
    }
}

#[cfg(test)]
mod tests {
    use task_processor::{api::json::json_to_proto, pb};

    use super::*;

    fn sample_task() -> pb::Task {
        pb::Task {
            id: "0190b4a4-5d3e-7f00-8000-000000000000".into(),
            name: "report".into(),
            kind: "echo".into(),
            status: pb::TaskStatus::Completed.into(),
            data: Some(json_to_proto(&serde_json::json!({
                "int": 1, "frac": 0.5, "neg": -3, "nul": "a\u{0000}b", "list": [null, true], "big": 1e300
            }))),
            revision: 7,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            labels: [("team".to_owned(), "data".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn json_is_what_grpcurl_prints() {
        let proto_json = ProtoJson::new().expect("descriptors");
        let json = proto_json
            .to_json(&sample_task(), TASK, JsonLayout::Compact)
            .expect("renders");
        assert!(json.starts_with(r#"{"id":"0190b4a4"#), "{json}");
        assert!(
            json.contains(r#""status":"TASK_STATUS_COMPLETED""#),
            "{json}"
        );
        assert!(json.contains(r#""revision":"7""#), "{json}");
        assert!(
            json.contains(r#""createdAt":"2023-11-14T22:13:20.123Z""#),
            "{json}"
        );
        assert!(
            json.contains(r#""int":1,"#),
            "whole numbers print as integers: {json}"
        );
        assert!(json.contains(r#""frac":0.5"#), "{json}");
        assert!(
            !json.contains("timeoutSeconds"),
            "defaults are left out: {json}"
        );
    }

    #[test]
    fn scheduling_fields_and_empty_print_as_grpcurl_does() {
        let proto_json = ProtoJson::new().expect("descriptors");
        let task = pb::Task {
            retry_policy: Some(pb::RetryPolicy {
                max_attempts: 3,
                initial_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                backoff_multiplier: 2.0,
            }),
            run_after: Some(prost_types::Timestamp {
                seconds: 1_796_320_800,
                nanos: 0,
            }),
            priority: -5,
            queue_timeout_seconds: 120,
            ..sample_task()
        };
        let json = proto_json
            .to_json(&task, TASK, JsonLayout::Compact)
            .expect("renders");
        assert!(
            json.ends_with(
                r#""retryPolicy":{"maxAttempts":3,"initialBackoff":"1.500s","maxBackoff":"300s","backoffMultiplier":2},"runAfter":"2026-12-03T18:00:00Z","priority":-5,"queueTimeoutSeconds":120}"#
            ),
            "{json}"
        );
        let multiplier = pb::Task {
            retry_policy: Some(pb::RetryPolicy {
                backoff_multiplier: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = proto_json
            .to_json(&multiplier, TASK, JsonLayout::Compact)
            .expect("renders");
        assert_eq!(json, r#"{"retryPolicy":{"backoffMultiplier":1.5}}"#);

        let yaml = proto_json.to_yaml(&task, TASK).expect("renders");
        assert!(yaml.contains("  initialBackoff: 1.500s\n"), "{yaml}");
        let descriptor = proto_json.descriptor(TASK).expect("descriptor");
        let from_yaml =
            DynamicMessage::deserialize(descriptor, yaml_serde::Deserializer::from_str(&yaml))
                .expect("YAML reads back");
        assert_eq!(from_yaml.transcode_to::<pb::Task>().expect("a task"), task);

        // DeleteTask's answer.
        assert_eq!(
            proto_json
                .to_json(&(), EMPTY, JsonLayout::Pretty)
                .expect("renders"),
            "{}"
        );
        assert_eq!(proto_json.to_yaml(&(), EMPTY).expect("renders"), "{}\n");
    }

    #[test]
    fn json_and_yaml_read_back_to_the_same_task() {
        let proto_json = ProtoJson::new().expect("descriptors");
        let task = sample_task();
        let descriptor = proto_json.descriptor(TASK).expect("descriptor");

        let json = proto_json
            .to_json(&task, TASK, JsonLayout::Pretty)
            .expect("renders");
        let mut deserializer = serde_json::Deserializer::from_str(&json);
        let from_json = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
            .expect("JSON reads back");
        assert_eq!(from_json.transcode_to::<pb::Task>().expect("a task"), task);

        let yaml = proto_json.to_yaml(&task, TASK).expect("renders");
        let from_yaml =
            DynamicMessage::deserialize(descriptor, yaml_serde::Deserializer::from_str(&yaml))
                .expect("YAML reads back");
        assert_eq!(from_yaml.transcode_to::<pb::Task>().expect("a task"), task);
    }

    #[test]
    fn map_entries_come_out_sorted_by_key() {
        let proto_json = ProtoJson::new().expect("descriptors");
        let keys = ["m", "c", "x", "a", "k", "b", "z", "e", "q", "d"];
        let task = pb::Task {
            labels: keys
                .iter()
                .map(|key| ((*key).to_owned(), "v".to_owned()))
                .collect(),
            data: Some(json_to_proto(&serde_json::json!({
                "zeta": {"y": 1, "b": 2}, "alpha": [{"d": 1, "c": 2}]
            }))),
            ..sample_task()
        };
        let json = proto_json
            .to_json(&task, TASK, JsonLayout::Compact)
            .expect("renders");
        let mut sorted = keys;
        sorted.sort_unstable();
        let labels = sorted.map(|key| format!(r#""{key}":"v""#)).join(",");
        assert!(
            json.contains(&format!(r#""labels":{{{labels}}}"#)),
            "{json}"
        );
        assert!(
            json.contains(r#""data":{"alpha":[{"c":2,"d":1}],"zeta":{"b":2,"y":1}}"#),
            "{json}"
        );
        // Fields stay in declaration order.
        assert!(json.starts_with(r#"{"id":"#), "{json}");

        let yaml = proto_json.to_yaml(&task, TASK).expect("renders");
        let labels_at = yaml.find("labels:\n").expect("labels");
        let label_lines: Vec<&str> = yaml[labels_at..].lines().skip(1).take(keys.len()).collect();
        let expected: Vec<String> = sorted.iter().map(|key| format!("  {key}: v")).collect();
        assert_eq!(label_lines, expected, "{yaml}");
    }

    #[test]
    fn yaml_quotes_what_yaml_1_1_reads_as_another_type() {
        let proto_json = ProtoJson::new().expect("descriptors");
        let task = pb::Task {
            name: "2026-11-25".into(),
            kind: "yes".into(),
            description: "1_000".into(),
            node: "on".into(),
            labels: [("no".to_owned(), "12:30".to_owned())].into(),
            data: Some(json_to_proto(&serde_json::json!({"day": "2026-11-25"}))),
            ..sample_task()
        };
        let yaml = proto_json.to_yaml(&task, TASK).expect("renders");
        for line in [
            "name: '2026-11-25'",
            "kind: 'yes'",
            "description: '1_000'",
            "node: 'on'",
            "  'no': '12:30'",
            "  day: '2026-11-25'",
            "createdAt: '2023-11-14T22:13:20.123Z'",
            "revision: '7'",
        ] {
            assert!(
                yaml.lines().any(|written| written == line),
                "{line} in {yaml}"
            );
        }
        let descriptor = proto_json.descriptor(TASK).expect("descriptor");
        let from_yaml =
            DynamicMessage::deserialize(descriptor, yaml_serde::Deserializer::from_str(&yaml))
                .expect("YAML reads back");
        assert_eq!(from_yaml.transcode_to::<pb::Task>().expect("a task"), task);
    }
}
