//! What operators rely on: Prometheus metrics after known work, request
//! ids, and retention that keeps memory flat.

use serde_json::json;
use task_processor::{config::Config, pb};
use tonic::{Code, Request};

use crate::support::{
    TestServer, create, eventually, http_get, request, test_config, wait_for_status,
};

pub fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("valid Prometheus text")
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(value))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_count_known_work() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for index in 0..3 {
        let task = create(&mut client, &format!("echo {index}"), "echo", None).await;
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    let failed = create(&mut client, "fails", "fail", None).await;
    wait_for_status(&client, &failed.id, pb::TaskStatus::Failed).await;
    let waiting = create(&mut client, "waits", "gate", None).await;
    wait_for_status(&client, &waiting.id, pb::TaskStatus::Running).await;
    let _watch = client
        .watch_task(pb::WatchTaskRequest {
            id: waiting.id.clone(),
        })
        .await
        .expect("watch");
    let not_found = client
        .get_task(pb::GetTaskRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(not_found.code(), Code::NotFound);

    let admin = server.admin_address.to_string();
    let (status, body) = http_get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = scrape(&body);
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&metrics, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in\n{body}"))
    };
    assert_eq!(
        value("task_processor_tasks_created_total", &[("kind", "echo")]),
        3.0
    );
    assert_eq!(
        value("task_processor_tasks_created_total", &[("kind", "gate")]),
        1.0
    );
    assert_eq!(
        value(
            "task_processor_tasks_finished_total",
            &[("kind", "echo"), ("status", "completed")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "task_processor_tasks_finished_total",
            &[("kind", "fail"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(
        value("task_processor_task_run_seconds_count", &[("kind", "echo")]),
        3.0
    );
    assert_eq!(value("task_processor_running_tasks", &[]), 1.0);
    assert_eq!(value("task_processor_queue_depth", &[]), 0.0);
    assert_eq!(value("task_processor_active_watchers", &[]), 1.0);
    assert_eq!(
        value(
            "task_processor_rpc_requests_total",
            &[("method", "TaskService/CreateTask"), ("code", "Ok")]
        ),
        5.0
    );
    assert_eq!(
        value(
            "task_processor_rpc_requests_total",
            &[("method", "TaskService/GetTask"), ("code", "NotFound")]
        ),
        1.0
    );
    assert!(
        value(
            "task_processor_rpc_duration_seconds_count",
            &[("method", "TaskService/CreateTask")]
        ) >= 5.0
    );
    server.gate.release(1);
}

#[tokio::test]
async fn a_request_id_is_taken_from_the_client_or_made_and_always_returned() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut with_id = Request::new(request("traced", "echo", None));
    with_id
        .metadata_mut()
        .insert("x-request-id", "trace-42".parse().expect("ascii"));
    let response = client.create_task(with_id).await.expect("created");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-42")
    );

    let response = client
        .create_task(request("untraced", "echo", None))
        .await
        .expect("created");
    let made = response
        .metadata()
        .get("x-request-id")
        .expect("a request id is made");
    assert!(!made.is_empty());

    let error = client
        .get_task(pb::GetTaskRequest { id: "nope".into() })
        .await
        .expect_err("invalid");
    assert!(
        error.metadata().get("x-request-id").is_some(),
        "errors carry it too"
    );
}

#[tokio::test]
async fn finished_tasks_beyond_the_cap_are_forgotten_oldest_first() {
    let server = TestServer::start_with(Config {
        max_finished_tasks: 50,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut first = request("first", "echo", None);
    first.request_id = "first-key".into();
    let first = client
        .create_task(first)
        .await
        .expect("created")
        .into_inner();
    let mut last = None;
    for index in 0..500 {
        last = Some(
            create(
                &mut client,
                &format!("t{index}"),
                "echo",
                Some(json!(index)),
            )
            .await,
        );
    }
    let last = last.expect("created");
    wait_for_status(&client, &last.id, pb::TaskStatus::Completed).await;
    let stats = server.stats().await;
    assert!(stats.finished <= 50 && stats.tasks <= 50, "{stats:?}");
    assert!(stats.request_ids <= 50, "{stats:?}");
    let gone = client
        .get_task(pb::GetTaskRequest {
            id: first.id.clone(),
        })
        .await
        .expect_err("forgotten");
    assert_eq!(gone.code(), Code::NotFound);
    // Its idempotency key went with it.
    let mut again = request("first", "echo", None);
    again.request_id = "first-key".into();
    let reused = client
        .create_task(again)
        .await
        .expect("created")
        .into_inner();
    assert_ne!(reused.id, first.id);
}

#[tokio::test]
async fn finished_tasks_older_than_the_retention_are_forgotten() {
    let server = TestServer::start_with(Config {
        retention: std::time::Duration::from_millis(200),
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let task = create(&mut client, "short-lived", "echo", None).await;
    let pending = create(&mut client, "kept while it waits", "gate", None).await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    eventually("the finished task to be forgotten", || {
        let mut client = client.clone();
        let id = task.id.clone();
        async move {
            let result = client.get_task(pb::GetTaskRequest { id }).await;
            matches!(result, Err(status) if status.code() == Code::NotFound).then_some(())
        }
    })
    .await;
    let still_there = crate::support::get(&mut client, &pending.id).await;
    assert_eq!(
        still_there.status,
        pb::TaskStatus::Running as i32,
        "unfinished tasks are never forgotten"
    );
    server.gate.release(1);
}

/// The value on the line of the exposition that starts with `name` and a
/// space (a metric without labels).
fn plain_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn a_durable_store_reports_its_commits() {
    crate::stores::on_store(crate::stores::StoreUnderTest::Sqlite, async {
        let server = TestServer::start().await;
        let mut client = server.client().await;
        let mut ids = Vec::new();
        for index in 0..20 {
            ids.push(
                create(&mut client, &format!("stored {index}"), "echo", None)
                    .await
                    .id,
            );
        }
        for id in &ids {
            wait_for_status(&client, id, pb::TaskStatus::Completed).await;
        }
        server.manager.flush().await.expect("flushed");
        let (_, text) = http_get(&server.admin_address.to_string(), "/metrics").await;
        let writes = plain_sample(&text, "task_processor_store_commit_writes_sum")
            .expect("commit writes reported");
        let commits = plain_sample(&text, "task_processor_store_commit_seconds_count")
            .expect("commit latency reported");
        // Each task was stored at least when created; states after that may
        // share its write.
        assert!(writes >= 20.0, "{writes} writes");
        assert!(commits >= 1.0, "{commits} commits");
        assert_eq!(
            plain_sample(&text, "task_processor_store_commit_failures_total"),
            Some(0.0)
        );
    })
    .await;
}
