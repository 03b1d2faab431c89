//! The memory budget (`max_held_bytes`): creates beyond it are
//! RESOURCE_EXHAUSTED with a RetryInfo; memory lets finished tasks go to
//! make room; SQLite keeps finished tasks' payloads in the file only and
//! reads them back for every answer, before and after a restart.

use serde_json::{Value as JsonValue, json};
use task_processor::{
    config::Config,
    manager::ListQuery,
    pb,
    store::{SqliteStore, StoreUrl},
    task::PayloadLocation,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    stores::fresh_sqlite_path,
    support::{
        Client, TestServer, eventually, get, http_get, json, list_all, request, test_config,
        wait_for_status,
    },
};

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

/// `count` echo tasks with distinct data of about `bytes` each; returns
/// their ids and data once all have completed.
async fn completed_echo_tasks(
    client: &mut Client,
    count: usize,
    bytes: usize,
) -> Vec<(String, JsonValue)> {
    let mut created = Vec::new();
    for number in 0..count {
        let unit = format!("{number}:");
        let data = json!({"number": number, "text": unit.repeat(bytes / unit.len())});
        let task = client
            .create_task(request(
                &format!("echo {number}"),
                "echo",
                Some(data.clone()),
            ))
            .await
            .expect("created")
            .into_inner();
        created.push((task.id, data));
    }
    for (id, _) in &created {
        wait_for_status(client, id, pb::TaskStatus::Completed).await;
    }
    created
}

/// Get, List and Watch answer each finished task with its exact data and
/// result (echo: the result is the data).
async fn assert_payloads_read_back(client: &mut Client, created: &[(String, JsonValue)]) {
    for (id, data) in created {
        let task = get(client, id).await;
        assert_eq!(json(&task.data).as_ref(), Some(data), "data of {id}");
        assert_eq!(json(&task.result).as_ref(), Some(data), "result of {id}");
    }
    let listed = list_all(client).await;
    for (id, data) in created {
        let task = listed
            .iter()
            .find(|task| &task.id == id)
            .unwrap_or_else(|| panic!("{id} listed"));
        assert_eq!(json(&task.data).as_ref(), Some(data), "listed data of {id}");
        assert_eq!(json(&task.result).as_ref(), Some(data), "listed result");
    }
    let (id, data) = &created[0];
    let mut stream = client
        .watch_task(pb::WatchTaskRequest { id: id.clone() })
        .await
        .expect("watch opened")
        .into_inner();
    let first = stream
        .next()
        .await
        .expect("one state")
        .expect("OK")
        .task
        .expect("a task");
    assert_eq!(json(&first.result).as_ref(), Some(data), "watched result");
    assert!(
        stream.next().await.is_none(),
        "a finished task's watch ends"
    );
}

async fn wait_until_nothing_held(server: &TestServer) {
    eventually("finished payloads let go", || async {
        (server.stats().await.held_bytes == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sqlite_keeps_finished_payloads_in_the_file_only_and_reads_them_back() {
    let path = fresh_sqlite_path();
    let config = Config {
        store: StoreUrl::Sqlite(path.clone()),
        ..test_config()
    };
    let server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    let created = completed_echo_tasks(&mut client, 20, 40_000).await;
    // Cancelled while waiting: a finished task whose result is empty.
    let mut with_request_id = request("cancelled", "sleep", Some(long_sleep(30_000)));
    with_request_id.request_id = "memory-budget-1".into();
    let cancelled = client
        .create_task(with_request_id.clone())
        .await
        .expect("created")
        .into_inner();
    client
        .cancel_task(pb::CancelTaskRequest {
            id: cancelled.id.clone(),
        })
        .await
        .expect("cancelled");

    wait_until_nothing_held(&server).await;
    assert_eq!(held_bytes_metric(&server).await, 0);
    assert_payloads_read_back(&mut client, &created).await;
    let again = client
        .cancel_task(pb::CancelTaskRequest {
            id: cancelled.id.clone(),
        })
        .await
        .expect("cancelling a cancelled task returns it")
        .into_inner();
    assert_eq!(json(&again.data), Some(long_sleep(30_000)));
    let repeated = client
        .create_task(with_request_id.clone())
        .await
        .expect("the repeated create returns the first task")
        .into_inner();
    assert_eq!(repeated.id, cancelled.id);
    assert_eq!(json(&repeated.data), Some(long_sleep(30_000)));
    with_request_id.data = request("", "", Some(long_sleep(1))).data;
    let conflict = client
        .create_task(with_request_id)
        .await
        .expect_err("other data under the same request_id");
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");

    let mut server = server;
    server.begin_shutdown().await.expect("stopped");
    drop(server);
    // The file is free once the first manager has ended.
    eventually("the first server to let go of the file", || async {
        SqliteStore::open(&path).await.ok().map(drop)
    })
    .await;
    let restarted = TestServer::start_with(config).await;
    let mut client = restarted.client().await;
    let stats = restarted.stats().await;
    assert_eq!(stats.tasks, created.len() + 1);
    assert_eq!(stats.held_bytes, 0, "finished payloads stay in the file");
    assert_payloads_read_back(&mut client, &created).await;
    let reloaded = get(&mut client, &cancelled.id).await;
    assert_eq!(json(&reloaded.data), Some(long_sleep(30_000)));
}

#[tokio::test]
async fn sqlite_reads_a_page_of_large_finished_tasks_only_up_to_the_page_limit() {
    let config = Config {
        store: StoreUrl::Sqlite(fresh_sqlite_path()),
        ..test_config()
    };
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    // Data and result of 900 KB each: two tasks fill a 4 MiB page.
    let created = completed_echo_tasks(&mut client, 5, 900_000).await;
    wait_until_nothing_held(&server).await;

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = server
            .manager
            .list_tasks(ListQuery {
                after,
                limit: 100,
                ..ListQuery::default()
            })
            .await
            .expect("listed");
        assert!(
            (1..=2).contains(&page.tasks.len()),
            "{} tasks read for one page",
            page.tasks.len()
        );
        for task in &page.tasks {
            assert_eq!(task.payload, PayloadLocation::InTask, "read back");
            seen.push(task.id.to_string());
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(seen, expected, "every task once, in order");
    assert_payloads_read_back(&mut client, &created).await;
}
