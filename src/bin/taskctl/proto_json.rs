//! Generated messages as proto3 JSON — lowerCamelCase names, enum names,
//! RFC 3339 timestamps, 64-bit integers as strings, default values left
//! out, fields in declaration order — which is what grpcurl prints, and
//! the same value as YAML.
//!
//! prost's types know no JSON; the message is re-read through its
//! descriptor (`prost-reflect`) from the descriptor set the build embeds.

use std::io;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

use crate::errors::CliError;

/// Full names of the messages `taskctl` prints.
pub const TASK: &str = "taskprocessor.v1.Task";
pub const LIST_TASKS_RESPONSE: &str = "taskprocessor.v1.ListTasksResponse";
pub const WATCH_TASK_RESPONSE: &str = "taskprocessor.v1.WatchTaskResponse";

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
        let dynamic = self.dynamic(message, full_name)?;
        let mut bytes = Vec::new();
        let written = match layout {
            JsonLayout::Pretty => write_json(&dynamic, &mut bytes, PrettyFormatter::new()),
            JsonLayout::Compact => write_json(&dynamic, &mut bytes, CompactFormatter),
        };
        written.map_err(|error| CliError::Render(format!("{full_name}: {error}")))?;
        String::from_utf8(bytes)
            .map_err(|error| CliError::Render(format!("{full_name}: JSON is not UTF-8: {error}")))
    }

    /// The same value as [`Self::to_json`], as YAML (ending in a newline).
    pub fn to_yaml(&self, message: &impl Message, full_name: &str) -> Result<String, CliError> {
        let json = self.to_json(message, full_name, JsonLayout::Compact)?;
        // Read back into YAML's own value, which keeps the field order.
        let value: yaml_serde::Value = serde_json::from_str(&json)
            .map_err(|error| CliError::Render(format!("{full_name}: {error}")))?;
        yaml_serde::to_string(&value)
            .map_err(|error| CliError::Render(format!("{full_name} as YAML: {error}")))
    }
}

fn write_json<F: Formatter>(
    message: &DynamicMessage,
    writer: &mut Vec<u8>,
    formatter: F,
) -> Result<(), serde_json::Error> {
    let mut serializer =
        serde_json::Serializer::with_formatter(writer, IntegralNumbers { inner: formatter });
    message.serialize(&mut serializer)
}

/// Writes a whole `f64` (as every number in a `google.protobuf.Value` is)
/// as an integer, `1` rather than `1.0`, as Go's protojson and so grpcurl
/// do; everything else goes to the inner formatter. Our messages have no
/// other floating-point fields, so no field's meaning changes.
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
}
