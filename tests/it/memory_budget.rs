//! The memory budget (`max_held_bytes`): creates beyond it are
//! RESOURCE_EXHAUSTED with a RetryInfo; memory lets finished tasks go to
//! make room.

use serde_json::{Value as JsonValue, json};
use task_processor::{config::Config, pb};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{TestServer, get, http_get, json, request, test_config, wait_for_status};

/// A sleep of an hour carrying `pad` bytes of text: it waits as long as
/// the test needs, and counts about `pad` bytes against the budget.
fn long_sleep(pad: usize) -> JsonValue {
    json!({"seconds": 3600, "pad": "s".repeat(pad)})
}

/// What a payload counts: the length of its compact JSON text.
fn counted(value: &JsonValue) -> u64 {
    value.to_string().len() as u64
}

/// The `task_processor_held_bytes` gauge from `/metrics`.
async fn held_bytes_metric(server: &TestServer) -> u64 {
    let (status, text) = http_get(&server.admin_address.to_string(), "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix("task_processor_held_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no task_processor_held_bytes in {text}"))
}

#[tokio::test]
async fn memory_refuses_creates_beyond_the_budget_until_finished_tasks_make_room() {
    let data = long_sleep(20_000);
    let size = counted(&data);
    // Four such tasks fit, a fifth does not.
    let config = Config {
        max_concurrent: 1,
        max_data_bytes: 50_000,
        max_held_bytes: 4 * size + size / 2,
        ..test_config()
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut waiting = Vec::new();
    for number in 0..4 {
        let task = client
            .create_task(request(
                &format!("fits {number}"),
                "sleep",
                Some(data.clone()),
            ))
            .await
            .expect("within the budget")
            .into_inner();
        waiting.push(task.id);
    }
    wait_for_status(&client, &waiting[0], pb::TaskStatus::Running).await;
    assert_eq!(server.stats().await.held_bytes, 4 * size);
    assert_eq!(held_bytes_metric(&server).await, 4 * size);

    let status = match client
        .create_task(request("one too many", "sleep", Some(data.clone())))
        .await
    {
        Ok(task) => panic!("over the budget, yet created {}", task.into_inner().id),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("memory budget"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()));
    // Small tasks still fit in what is left; the refused one took nothing.
    client
        .create_task(request("small", "echo", Some(json!("x"))))
        .await
        .expect("a small task fits");
    for id in &waiting {
        assert_eq!(
            json(&get(&mut client, id).await.data),
            Some(data.clone()),
            "waiting tasks keep their data"
        );
    }

    // A cancelled task is finished: memory keeps it, but lets it go, oldest
    // finished first, to make room for a create.
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: waiting[3].clone(),
        })
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(cancelled.status, pb::TaskStatus::Cancelled as i32);
    client
        .create_task(request("fits again", "sleep", Some(data.clone())))
        .await
        .expect("room made by letting the cancelled task go");
    let gone = client
        .get_task(pb::GetTaskRequest {
            id: waiting[3].clone(),
        })
        .await
        .expect_err("let go to make room");
    assert_eq!(gone.code(), Code::NotFound);
    let held = server.stats().await.held_bytes;
    assert!(held <= 4 * size + size / 2, "{held} within the budget");
    assert_eq!(held_bytes_metric(&server).await, held);
}
