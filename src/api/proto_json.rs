//! Generated messages ⇄ proto3 JSON: lowerCamelCase names, enum names,
//! RFC 3339 timestamps, 64-bit integers as strings, whole numbers of a
//! `google.protobuf.Value` as integers (`1`, not `1.0`), fields in
//! declaration order and map entries (labels, the keys of `data` and
//! `result`) sorted by key, so one message always prints the same way.
//! `taskctl` prints answers with it (as grpcurl does, defaults left out);
//! the HTTP gateway reads request bodies and writes answers with it (as
//! grpc-gateway does, every scalar field present).
//!
//! prost's types know no JSON; a message is re-read through its descriptor
//! (`prost-reflect`) from the descriptor sets the build embeds: ours, and
//! tonic-types' `google.rpc` error details, so a status's details print too.

use std::{cmp::Ordering, io};

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions,
};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};
use yaml_serde::{Mapping, Value as Tree};

use crate::pb;

/// Full names of the messages printed or read as JSON.
pub const TASK: &str = "taskprocessor.v1.Task";
pub const CREATE_TASK_REQUEST: &str = "taskprocessor.v1.CreateTaskRequest";
pub const BATCH_CREATE_TASKS_REQUEST: &str = "taskprocessor.v1.BatchCreateTasksRequest";
pub const BATCH_CREATE_TASKS_RESPONSE: &str = "taskprocessor.v1.BatchCreateTasksResponse";
pub const LIST_TASKS_RESPONSE: &str = "taskprocessor.v1.ListTasksResponse";
pub const WATCH_TASK_RESPONSE: &str = "taskprocessor.v1.WatchTaskResponse";
pub const WATCH_TASKS_RESPONSE: &str = "taskprocessor.v1.WatchTasksResponse";
pub const SCHEDULE: &str = "taskprocessor.v1.Schedule";
pub const CREATE_SCHEDULE_REQUEST: &str = "taskprocessor.v1.CreateScheduleRequest";
pub const LIST_SCHEDULES_RESPONSE: &str = "taskprocessor.v1.ListSchedulesResponse";
/// The answer of `DeleteTask` and `DeleteSchedule`.
pub const EMPTY: &str = "google.protobuf.Empty";
/// A gRPC status with its details, as grpc-gateway writes errors.
pub const RPC_STATUS: &str = "google.rpc.Status";

/// Integers up to this magnitude are exact in an `f64`.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// The descriptors of our protos, decoded once; cheap to clone.
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

/// What becomes of fields that hold their default value (empty strings,
/// zeros, unset messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpopulated {
    /// Left out, as grpcurl prints.
    Omit,
    /// Written (`""`, `0`, `[]`, `{}`), as grpc-gateway answers, so a
    /// browser finds every field; a message field that is not set
    /// (`result`, `startedAt`) is still left out.
    Emit,
}

/// Why a message could not be written or read as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ProtoJsonError {
    #[error("the embedded descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("no descriptor for {0}")]
    UnknownMessage(String),
    #[error("{full_name}: {reason}")]
    Render { full_name: String, reason: String },
    /// The JSON text is not a valid `full_name`: the reason names the
    /// field, line and column.
    #[error("{reason}")]
    Parse { full_name: String, reason: String },
}

impl ProtoJson {
    pub fn new() -> Result<Self, ProtoJsonError> {
        let mut pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)?;
        // Files both sets hold (google/protobuf/duration.proto) are skipped.
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
        Ok(Self { pool })
    }

    pub fn descriptor(&self, full_name: &str) -> Result<MessageDescriptor, ProtoJsonError> {
        self.pool
            .get_message_by_name(full_name)
            .ok_or_else(|| ProtoJsonError::UnknownMessage(full_name.to_owned()))
    }

    /// The message as a dynamic one, for serde.
    pub fn dynamic(
        &self,
        message: &impl Message,
        full_name: &str,
    ) -> Result<DynamicMessage, ProtoJsonError> {
        DynamicMessage::decode(
            self.descriptor(full_name)?,
            message.encode_to_vec().as_slice(),
        )
        .map_err(|error| render_error(full_name, error))
    }

    /// The message as proto3 JSON text, without a final newline.
    pub fn to_json(
        &self,
        message: &impl Message,
        full_name: &str,
        layout: JsonLayout,
        unpopulated: Unpopulated,
    ) -> Result<String, ProtoJsonError> {
        let tree = self.tree(message, full_name, unpopulated)?;
        let mut bytes = Vec::new();
        let written = match layout {
            JsonLayout::Pretty => write_json(&tree, &mut bytes, PrettyFormatter::new()),
            JsonLayout::Compact => write_json(&tree, &mut bytes, CompactFormatter),
        };
        written.map_err(|error| render_error(full_name, error))?;
        String::from_utf8(bytes)
            .map_err(|error| render_error(full_name, format!("JSON is not UTF-8: {error}")))
    }

    /// The proto3 JSON value of the message, in an order-keeping tree with
    /// map entries sorted: prost-reflect writes maps in hash order, which
    /// would print the same task differently each time. (The tree is
    /// `yaml_serde`'s, whose mappings keep their order; `serde_json`'s keep
    /// it only with a feature that would change every map of the build.)
    pub fn tree(
        &self,
        message: &impl Message,
        full_name: &str,
        unpopulated: Unpopulated,
    ) -> Result<Tree, ProtoJsonError> {
        let dynamic = self.dynamic(message, full_name)?;
        let options = SerializeOptions::new().skip_default_fields(unpopulated == Unpopulated::Omit);
        let mut bytes = Vec::new();
        // Whole numbers become integers here already, so the YAML that
        // `taskctl` writes from the tree says `1`, as the JSON does.
        let mut serializer = serde_json::Serializer::with_formatter(
            &mut bytes,
            IntegralNumbers {
                inner: CompactFormatter,
            },
        );
        dynamic
            .serialize_with_options(&mut serializer, &options)
            .map_err(|error| render_error(full_name, error))?;
        let mut tree: Tree =
            serde_json::from_slice(&bytes).map_err(|error| render_error(full_name, error))?;
        sort_maps(&mut tree, &dynamic.descriptor());
        Ok(tree)
    }

    /// Reads proto3 JSON text as the message `full_name`: field names in
    /// lowerCamelCase or as in the .proto, enums by name or number. An
    /// unknown field, a value of the wrong type or text after the value is
    /// an error that says which and where.
    pub fn from_json<T: Message + Default>(
        &self,
        json: &[u8],
        full_name: &str,
    ) -> Result<T, ProtoJsonError> {
        let parse_error = |reason: String| ProtoJsonError::Parse {
            full_name: full_name.to_owned(),
            reason,
        };
        let descriptor = self.descriptor(full_name)?;
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let dynamic = DynamicMessage::deserialize_with_options(
            descriptor,
            &mut deserializer,
            &DeserializeOptions::new(),
        )
        .map_err(|error| parse_error(error.to_string()))?;
        deserializer
            .end()
            .map_err(|error| parse_error(error.to_string()))?;
        dynamic
            .transcode_to::<T>()
            .map_err(|error| parse_error(error.to_string()))
    }
}

fn render_error(full_name: &str, reason: impl std::fmt::Display) -> ProtoJsonError {
    ProtoJsonError::Render {
        full_name: full_name.to_owned(),
        reason: reason.to_string(),
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
/// and grpc-gateway do; everything else goes to the inner formatter. The
/// one other `double` of our messages, `RetryPolicy.backoff_multiplier`,
/// prints as protojson prints it too: `2`, `1.5`.
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
mod tests;
