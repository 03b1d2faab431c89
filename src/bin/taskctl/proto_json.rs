//! Answers as proto3 JSON — what grpcurl prints: the library's
//! `api::proto_json` with default values left out — and the same value as
//! YAML (written by `yaml`); and the lines of `create --from-file` read
//! from proto3 JSON through the same descriptors.

use prost::Message;
use task_processor::api::proto_json::{self as library, ProtoJsonError, Unpopulated};

use crate::{errors::CliError, yaml};

pub use library::{
    CREATE_TASK_REQUEST, EMPTY, JsonLayout, LIST_SCHEDULES_RESPONSE, LIST_TASKS_RESPONSE, SCHEDULE,
    TASK, WATCH_TASK_RESPONSE, WATCH_TASKS_RESPONSE,
};

/// What `create --from-file` prints: the tasks of every call.
pub const BATCH_CREATE_TASKS_RESPONSE: &str = "taskprocessor.v1.BatchCreateTasksResponse";

/// The descriptors of our protos, decoded once.
#[derive(Debug, Clone)]
pub struct ProtoJson {
    inner: library::ProtoJson,
}

impl ProtoJson {
    pub fn new() -> Result<Self, CliError> {
        Ok(Self {
            inner: library::ProtoJson::new().map_err(render_error)?,
        })
    }

    /// The descriptor of `full_name`, to read a printed message back.
    #[cfg(test)]
    pub fn descriptor(
        &self,
        full_name: &str,
    ) -> Result<prost_reflect::MessageDescriptor, CliError> {
        self.inner.descriptor(full_name).map_err(render_error)
    }

    /// The message as proto3 JSON text, without a final newline.
    pub fn to_json(
        &self,
        message: &impl Message,
        full_name: &str,
        layout: JsonLayout,
    ) -> Result<String, CliError> {
        self.inner
            .to_json(message, full_name, layout, Unpopulated::Omit)
            .map_err(render_error)
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
        self.inner
            .from_json(text.as_bytes(), full_name)
            .map_err(|error| match error {
                ProtoJsonError::Parse { reason, .. } => at_column(&reason),
                other => other.to_string(),
            })
    }

    /// The same value as [`Self::to_json`], as YAML (ending in a newline).
    pub fn to_yaml(&self, message: &impl Message, full_name: &str) -> Result<String, CliError> {
        let tree = self
            .inner
            .tree(message, full_name, Unpopulated::Omit)
            .map_err(render_error)?;
        Ok(yaml::to_string(&tree))
    }
}

fn render_error(error: ProtoJsonError) -> CliError {
    CliError::Render(error.to_string())
}

/// serde_json's error with its place as a column: the text read is one
/// line, so its "at line 1 column 9" would mislead next to a file's line.
fn at_column(reason: &str) -> String {
    let Some((problem, place)) = reason.rsplit_once(" at line ") else {
        return reason.to_owned();
    };
    match place.split_once(" column ") {
        Some((_, column)) => format!("{problem} (column {column})"),
        None => reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::DynamicMessage;
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
