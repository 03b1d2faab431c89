use crate::{api::json::json_to_proto, pb};

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

fn compact(message: &impl Message, full_name: &str) -> String {
    ProtoJson::new()
        .expect("descriptors")
        .to_json(message, full_name, JsonLayout::Compact, Unpopulated::Omit)
        .expect("renders")
}

#[test]
fn json_is_what_grpcurl_prints() {
    let json = compact(&sample_task(), TASK);
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
fn emitted_defaults_write_every_scalar_field() {
    let json = ProtoJson::new()
        .expect("descriptors")
        .to_json(
            &pb::Task::default(),
            TASK,
            JsonLayout::Compact,
            Unpopulated::Emit,
        )
        .expect("renders");
    for field in [
        r#""id":"""#,
        r#""status":"TASK_STATUS_UNSPECIFIED""#,
        r#""timeoutSeconds":0"#,
        r#""revision":"0""#,
        r#""labels":{}"#,
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    // prost-reflect leaves unset messages out rather than writing null.
    assert!(!json.contains("result"), "{json}");
}

#[test]
fn scheduling_fields_and_empty_print_as_grpcurl_does() {
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
    let json = compact(&task, TASK);
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
    assert_eq!(
        compact(&multiplier, TASK),
        r#"{"retryPolicy":{"backoffMultiplier":1.5}}"#
    );
    // DeleteTask's answer.
    assert_eq!(compact(&(), EMPTY), "{}");
}

#[test]
fn json_reads_back_to_the_same_task() {
    let proto_json = ProtoJson::new().expect("descriptors");
    let task = sample_task();
    for unpopulated in [Unpopulated::Omit, Unpopulated::Emit] {
        let json = proto_json
            .to_json(&task, TASK, JsonLayout::Pretty, unpopulated)
            .expect("renders");
        let read: pb::Task = proto_json
            .from_json(json.as_bytes(), TASK)
            .expect("reads back");
        assert_eq!(read, task);
    }
}

#[test]
fn map_entries_come_out_sorted_by_key() {
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
    let json = compact(&task, TASK);
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
}

#[test]
fn requests_read_in_either_spelling_and_refuse_what_is_not_one() {
    let proto_json = ProtoJson::new().expect("descriptors");
    let camel: pb::CreateTaskRequest = proto_json
        .from_json(
            br#"{"name": "n", "timeoutSeconds": 5, "requestId": "r", "data": {"a": [1]}}"#,
            CREATE_TASK_REQUEST,
        )
        .expect("lowerCamelCase");
    let snake: pb::CreateTaskRequest = proto_json
        .from_json(
            br#"{"name": "n", "timeout_seconds": "5", "request_id": "r", "data": {"a": [1]}}"#,
            CREATE_TASK_REQUEST,
        )
        .expect("proto names, a number as a string");
    assert_eq!(camel, snake);
    assert_eq!(camel.timeout_seconds, 5);

    for (json, expected) in [
        (&br#"{"nme": "n"}"#[..], "nme"),
        (br#"{"name": 5}"#, "string"),
        (br#"{"name": "n"} x"#, "trailing"),
        (br#"{"name": "n""#, "EOF"),
        (b"", "EOF"),
    ] {
        let error = proto_json
            .from_json::<pb::CreateTaskRequest>(json, CREATE_TASK_REQUEST)
            .expect_err("refused");
        assert!(
            matches!(error, ProtoJsonError::Parse { .. }) && error.to_string().contains(expected),
            "{expected} in {error}"
        );
    }
}

#[test]
fn a_status_prints_its_details_as_grpc_gateway_does() {
    use tonic_types::{ErrorDetails, StatusExt};
    let status = tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        "name: must not be empty",
        ErrorDetails::with_bad_request_violation("name", "must not be empty"),
    );
    let decoded = tonic_types::pb::Status::decode(status.details()).expect("a google.rpc.Status");
    let json = compact(&decoded, RPC_STATUS);
    assert_eq!(
        json,
        r#"{"code":3,"message":"name: must not be empty","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"name","description":"must not be empty"}]}]}"#
    );
}
