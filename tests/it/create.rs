//! CreateTask: what is stored, every input limit, idempotency and the
//! queue bound.

use std::collections::HashMap;

use prost_types::{ListValue, Value as ProtoValue, value::Kind};
use serde_json::json;
use task_processor::{api::json::json_to_proto, config::Config, pb};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    TestServer, assert_invalid_argument, count_tasks, create, eventually, json, request, status_of,
    test_config, wait_for_status,
};

async fn create_returns_the_stored_pending_task() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut create_request = request("  nightly report  ", "gate", Some(json!({"x": [1, 2.5]})));
    create_request.description = "a description".into();
    create_request.labels = HashMap::from([("team".into(), "data".into())]);
    let task = client
        .create_task(create_request)
        .await
        .expect("created")
        .into_inner();

    assert!(uuid::Uuid::parse_str(&task.id).is_ok_and(|id| id.get_version_num() == 7));
    assert_eq!(task.name, "nightly report", "stored trimmed");
    assert_eq!(task.description, "a description");
    assert_eq!(task.kind, "gate");
    assert_eq!(status_of(&task), pb::TaskStatus::Pending);
    assert_eq!(json(&task.data), Some(json!({"x": [1, 2.5]})));
    assert_eq!(task.result, None);
    assert_eq!(task.error, "");
    assert_eq!(task.timeout_seconds, 60, "0 becomes the default timeout");
    assert_eq!(task.labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(
        (task.attempt, task.node.as_str(), task.revision),
        (0, "", 1)
    );
    assert!(task.created_at.is_some());
    assert!(task.started_at.is_none() && task.completed_at.is_none());
    server.gate.release(1);
}

async fn an_empty_kind_runs_the_demo_processor_with_progress() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "demo", "", Some(json!({"b": 2, "a": "x"}))).await;
    assert_eq!(task.kind, "demo");
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        json(&done.result),
        Some(json!(r#"Processed: {"a":"x","b":2}"#))
    );
    let progress = done.progress.expect("demo reports progress");
    assert_eq!(progress.percent, 100);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.node, "test-node");
    assert!(done.started_at.is_some() && done.completed_at.is_some());
}

async fn built_in_kinds_do_what_the_contract_says() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let data =
        json!({"text": "a\u{0000}b", "emoji": "🦀", "n": -3, "f": 0.125, "list": [null, true, {}]});
    let echo = create(&mut client, "echo", "echo", Some(data.clone())).await;
    let sleep = create(
        &mut client,
        "sleep",
        "sleep",
        Some(json!({"seconds": 0.05})),
    )
    .await;
    let fail = create(
        &mut client,
        "fail",
        "fail",
        Some(json!({"message": "disk on fire"})),
    )
    .await;
    let fail_plain = create(&mut client, "fail plain", "fail", None).await;
    let bad_sleep = create(
        &mut client,
        "bad sleep",
        "sleep",
        Some(json!({"seconds": -1})),
    )
    .await;

    let echo = wait_for_status(&client, &echo.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        json(&echo.result),
        Some(data.clone()),
        "result is data unchanged"
    );
    assert_eq!(
        json(&echo.data),
        Some(data),
        "data comes back exactly as sent"
    );
    let sleep = wait_for_status(&client, &sleep.id, pb::TaskStatus::Completed).await;
    assert_eq!(json(&sleep.result), Some(json!({"slept": 0.05})));
    let fail = wait_for_status(&client, &fail.id, pb::TaskStatus::Failed).await;
    assert_eq!(fail.error, "disk on fire");
    assert!(fail.result.is_none());
    let fail_plain = wait_for_status(&client, &fail_plain.id, pb::TaskStatus::Failed).await;
    assert!(!fail_plain.error.is_empty());
    let bad_sleep = wait_for_status(&client, &bad_sleep.id, pb::TaskStatus::Failed).await;
    assert!(bad_sleep.error.contains("seconds"), "{}", bad_sleep.error);
}

async fn a_panicking_processor_fails_its_task_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "panics", "panic", None).await;
    let failed = wait_for_status(&client, &task.id, pb::TaskStatus::Failed).await;
    assert!(failed.error.contains("panicked"), "{}", failed.error);
    assert!(
        failed.error.contains("deliberate test panic"),
        "{}",
        failed.error
    );
    let after = create(&mut client, "after", "echo", Some(json!(1))).await;
    wait_for_status(&client, &after.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        server.stats().await.running,
        0,
        "the panicked run's slot is free"
    );
}

fn nested(depth: usize) -> ProtoValue {
    (1..depth).fold(json_to_proto(&json!(1)), |inner, _| ProtoValue {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![inner],
        })),
    })
}

fn number(value: f64) -> ProtoValue {
    ProtoValue {
        kind: Some(Kind::NumberValue(value)),
    }
}

/// Every rule of "Limits on input" (docs/api.md): the broken request and the field the
/// error must name.
async fn every_broken_input_rule_is_invalid_argument_naming_its_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let base = || request("valid", "echo", None);
    let with = |change: &dyn Fn(&mut pb::CreateTaskRequest)| {
        let mut create_request = base();
        change(&mut create_request);
        create_request
    };
    let too_many_labels: HashMap<String, String> = (0..65)
        .map(|index| (format!("k{index}"), "v".to_owned()))
        .collect();
    let cases: Vec<(&str, pb::CreateTaskRequest)> = vec![
        ("name", with(&|r| r.name = String::new())),
        ("name", with(&|r| r.name = "   \t ".into())),
        ("name", with(&|r| r.name = "x".repeat(201))),
        ("name", with(&|r| r.name = "two\nlines".into())),
        ("name", with(&|r| r.name = "nul\0".into())),
        ("description", with(&|r| r.description = "d".repeat(4097))),
        (
            "description",
            with(&|r| r.description = "nul\0inside".into()),
        ),
        ("kind", with(&|r| r.kind = "no-such-kind".into())),
        ("timeout_seconds", with(&|r| r.timeout_seconds = 301)),
        ("labels", with(&|r| r.labels = too_many_labels.clone())),
        (
            "labels",
            with(&|r| r.labels = HashMap::from([(String::new(), "v".into())])),
        ),
        (
            "labels",
            with(&|r| r.labels = HashMap::from([("k".repeat(64), "v".into())])),
        ),
        (
            "labels",
            with(&|r| r.labels = HashMap::from([("bad key".into(), "v".into())])),
        ),
        (
            "labels",
            with(&|r| r.labels = HashMap::from([("k".into(), "v".repeat(257))])),
        ),
        (
            "labels",
            with(&|r| r.labels = HashMap::from([("k".into(), "a\0b".into())])),
        ),
        ("request_id", with(&|r| r.request_id = "r".repeat(129))),
        ("request_id", with(&|r| r.request_id = "tab\there".into())),
        ("data", with(&|r| r.data = Some(nested(33)))),
        // Deeper than the protobuf decoder itself will go.
        ("data", with(&|r| r.data = Some(nested(60)))),
        ("data", with(&|r| r.data = Some(nested(500)))),
        ("data", with(&|r| r.data = Some(number(f64::NAN)))),
        ("data", with(&|r| r.data = Some(ProtoValue { kind: None }))),
        ("data", with(&|r| r.data = Some(number(f64::INFINITY)))),
        (
            "data",
            with(&|r| r.data = Some(json_to_proto(&json!("x".repeat(1024 * 1024 + 1))))),
        ),
    ];
    for (field, bad_request) in cases {
        let status = client
            .create_task(bad_request.clone())
            .await
            .expect_err(&format!("{field} case must be refused: {bad_request:?}"));
        assert_invalid_argument(&status, field);
    }
    assert_eq!(
        count_tasks(&mut client.clone()).await,
        0,
        "refused requests store nothing"
    );
}

async fn values_at_the_limits_are_accepted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let labels: HashMap<String, String> = (0..64)
        .map(|index| (format!("a-Z.0_/{index:0>56}"), "v".repeat(256)))
        .collect();
    let at_limits = pb::CreateTaskRequest {
        name: "é".repeat(200),
        description: "ü".repeat(4096),
        kind: "echo".into(),
        data: Some(nested(32)),
        timeout_seconds: 300,
        labels,
        request_id: "r".repeat(128),
        ..Default::default()
    };
    let task = client
        .create_task(at_limits)
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(task.timeout_seconds, 300);
    assert_eq!(task.labels.len(), 64);
    // Just under the data limit, counting the encoding's own overhead.
    let big = json_to_proto(&json!("x".repeat(1024 * 1024 - 16)));
    let mut big_request = request("big", "echo", None);
    big_request.data = Some(big);
    client
        .create_task(big_request)
        .await
        .expect("data under the limit is accepted");
}

async fn the_data_limit_is_configurable() {
    let config = Config {
        max_data_bytes: 100,
        ..test_config()
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let status = client
        .create_task(request("big", "echo", Some(json!("y".repeat(200)))))
        .await
        .expect_err("over 100 bytes");
    assert_invalid_argument(&status, "data");
    create(&mut client, "small", "echo", Some(json!("y".repeat(50)))).await;
}

async fn a_repeated_request_id_returns_the_first_task_or_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut first_request = request("idempotent", "echo", Some(json!({"k": 1})));
    first_request.request_id = "req-1".into();
    let first = client
        .create_task(first_request.clone())
        .await
        .expect("first")
        .into_inner();
    wait_for_status(&client, &first.id, pb::TaskStatus::Completed).await;

    let again = client
        .create_task(first_request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.id, first.id, "the same task comes back");
    assert_eq!(
        status_of(&again),
        pb::TaskStatus::Completed,
        "in its current state"
    );

    let mut different = first_request.clone();
    different.data = Some(json_to_proto(&json!({"k": 2})));
    let status = client
        .create_task(different)
        .await
        .expect_err("other parameters");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("req-1"), "{}", status.message());
    assert_eq!(count_tasks(&mut client.clone()).await, 1);
}

async fn concurrent_creates_with_one_request_id_make_one_task() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut create_request = request("racing", "echo", None);
    create_request.request_id = "race".into();
    let creates = (0..20).map(|_| {
        let mut client = client.clone();
        let create_request = create_request.clone();
        tokio::spawn(async move {
            client
                .create_task(create_request)
                .await
                .expect("created")
                .into_inner()
                .id
        })
    });
    let mut ids = Vec::new();
    for create in creates {
        ids.push(create.await.expect("joined"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count_tasks(&mut client.clone()).await, 1);
}

async fn a_full_queue_is_resource_exhausted_with_retry_info() {
    let config = Config {
        max_concurrent: 1,
        queue_capacity: 2,
        ..test_config()
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let running = create(&mut client, "running", "gate", None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    // With PostgreSQL the replica learns from its change feed that the task
    // left the queue, a moment after the row says so.
    eventually("the running task to leave the queue", || {
        let server = &server;
        async move { (server.stats().await.pending == 0).then_some(()) }
    })
    .await;
    create(&mut client, "waiting 1", "gate", None).await;
    create(&mut client, "waiting 2", "gate", None).await;

    let status = client
        .create_task(request("one too many", "gate", None))
        .await
        .expect_err("queue full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()));

    // Space frees as the queue drains; nothing accepted was lost.
    server.gate.release(1);
    let accepted = eventually("room in the queue", || {
        let mut client = client.clone();
        async move {
            client
                .create_task(request("fits now", "gate", None))
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    server.gate.release(3);
    wait_for_status(&client, &accepted.id, pb::TaskStatus::Completed).await;
    assert_eq!(count_tasks(&mut client.clone()).await, 4);
}

contract_tests!(
    create_returns_the_stored_pending_task,
    an_empty_kind_runs_the_demo_processor_with_progress,
    built_in_kinds_do_what_the_contract_says,
    a_panicking_processor_fails_its_task_and_the_server_keeps_serving,
    every_broken_input_rule_is_invalid_argument_naming_its_field,
    values_at_the_limits_are_accepted,
    the_data_limit_is_configurable,
    a_repeated_request_id_returns_the_first_task_or_is_refused,
    concurrent_creates_with_one_request_id_make_one_task,
    a_full_queue_is_resource_exhausted_with_retry_info,
);
