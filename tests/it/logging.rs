//! What the real binary logs as shipped, and at `debug`: a successful call
//! or task writes no line by default, a call the server turned away and a
//! failed task do; `LOG_LEVEL=debug` brings every call's line back; and
//! lines the writer cannot keep up with are dropped and counted, never
//! waited for.

use std::time::Duration;

use serde_json::{Value as JsonValue, json};
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tonic::Code;

use crate::{
    operations::{sample, scrape},
    process::{Process, start_binary, start_binary_with_stdout_unread},
    support::{eventually, http_get, request, wait_for_status},
};

/// The name the dropped-lines counter is exposed under.
const DROPPED: &str = "task_processor_log_lines_dropped_total";

/// Every line the process logged so far, for the lines matching `keep`.
fn lines(process: &Process, keep: impl Fn(&JsonValue) -> bool) -> Vec<JsonValue> {
    process
        .log
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|entry| keep(entry))
        .cloned()
        .collect()
}

async fn dropped_lines(process: &Process) -> f64 {
    let (status, body) = http_get(&process.admin_address, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    sample(&scrape(&body), DROPPED, &[]).unwrap_or_else(|| panic!("{DROPPED} in\n{body}"))
}

#[tokio::test]
async fn by_default_only_refused_calls_and_failed_tasks_write_a_line() {
    // One slot and one place in the queue: the third create is refused.
    let process = start_binary(&["--max-concurrent", "1", "--queue-capacity", "1"], &[]);
    let mut client = process.client().await;

    let echo = client
        .create_task(request("fine", "echo", Some(json!({"n": 1}))))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &echo.id, pb::TaskStatus::Completed).await;
    let failed = client
        .create_task(request("fails", "fail", None))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &failed.id, pb::TaskStatus::Failed).await;
    let unknown = client
        .get_task(pb::GetTaskRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("no such task");
    assert_eq!(unknown.code(), Code::NotFound);

    let running = client
        .create_task(request(
            "holds the slot",
            "sleep",
            Some(json!({"seconds": 600})),
        ))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    client
        .create_task(request("waits", "echo", None))
        .await
        .expect("queued");
    let refused = client
        .create_task(request("refused", "echo", None))
        .await
        .expect_err("the queue is full");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // Lines reach stdout in the order they were logged, so once the refused
    // call's line is there, every line of the calls and tasks before it is.
    let refused_line = eventually("the refused call's line", || {
        let found = lines(&process, |entry| {
            entry["message"] == "rpc finished" && entry["code"] == "ResourceExhausted"
        });
        async move { found.into_iter().next() }
    })
    .await;
    assert_eq!(refused_line["level"], "INFO", "{refused_line}");
    assert_eq!(refused_line["method"], "TaskService/CreateTask");
    assert!(
        refused_line["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{refused_line}"
    );
    assert!(refused_line["latency_ms"].is_number(), "{refused_line}");

    let calls = lines(&process, |entry| entry["message"] == "rpc finished");
    assert_eq!(
        calls.len(),
        1,
        "successful calls and NOT_FOUND write no line by default: {calls:#?}"
    );
    let per_task = lines(&process, |entry| {
        ["task created", "task started", "task claimed"]
            .contains(&entry["message"].as_str().unwrap_or_default())
            || (entry["message"] == "task finished" && entry["status"] != "failed")
    });
    assert!(
        per_task.is_empty(),
        "routine task lines by default: {per_task:#?}"
    );
    let failure = lines(&process, |entry| {
        entry["message"] == "task finished" && entry["task_id"] == failed.id.as_str()
    });
    assert_eq!(failure.len(), 1, "{failure:#?}");
    assert_eq!(failure[0]["level"], "INFO");
    assert_eq!(failure[0]["status"], "failed");
    let debug = lines(&process, |entry| entry["level"] == "DEBUG");
    assert!(debug.is_empty(), "nothing at debug by default: {debug:#?}");
    assert_eq!(
        dropped_lines(&process).await,
        0.0,
        "the counter is exported"
    );
}

#[tokio::test]
async fn at_debug_every_call_writes_its_line_naming_its_task() {
    let process = start_binary(&[], &[("LOG_LEVEL", "debug")]);
    let mut client = process.client().await;
    let task = client
        .create_task(request("logged", "echo", None))
        .await
        .expect("created")
        .into_inner();
    let line = eventually("the CreateTask line", || {
        let found = lines(&process, |entry| {
            entry["message"] == "rpc finished"
                && entry["method"] == "TaskService/CreateTask"
                && entry["span"]["task_id"] == task.id.as_str()
        });
        async move { found.into_iter().next() }
    })
    .await;
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(line["code"], "Ok", "{line}");
    assert!(
        line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{line}"
    );
    eventually("the task's own lines", || {
        let seen =
            process.logged("task created", &task.id) && process.logged("task finished", &task.id);
        async move { seen.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn lines_nobody_reads_are_dropped_and_counted_and_calls_never_wait_for_them() {
    // At debug each create writes about six lines; nothing reads them, so
    // the pipe (64 KiB) and then the writer's buffer (2048 lines) fill.
    let (process, _unread) = start_binary_with_stdout_unread(&[], &[("LOG_LEVEL", "debug")]);
    let creates = 3_000;
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut client = TaskServiceClient::new(process.channel().await);
        workers.push(tokio::spawn(async move {
            for index in (worker..creates).step_by(8) {
                client
                    .create_task(request(&format!("t{index}"), "echo", None))
                    .await
                    .expect("created while the log is stuck");
            }
        }));
    }
    let all_created = async {
        for worker in workers {
            worker.await.expect("worker");
        }
    };
    // A logger that waited for the pipe would hang here for good.
    tokio::time::timeout(Duration::from_secs(120), all_created)
        .await
        .expect("every create answered while nothing read the log");
    let dropped = dropped_lines(&process).await;
    assert!(dropped > 0.0, "{DROPPED} = {dropped}");
}
