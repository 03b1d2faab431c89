//! WatchTask: first message, order, end on terminal, many watchers, slow
//! watchers and watchers that go away.

use serde_json::json;
use task_processor::pb;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::support::{Client, TestServer, create, eventually, status_of, wait_for_status};

async fn watch(client: &mut Client, id: &str) -> Streaming<pb::WatchTaskResponse> {
    client
        .watch_task(pb::WatchTaskRequest { id: id.into() })
        .await
        .expect("watch opened")
        .into_inner()
}

/// Reads a stream to its end, checking it ends with `OK`.
async fn read_to_end(mut stream: Streaming<pb::WatchTaskResponse>) -> Vec<pb::Task> {
    let mut tasks = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.expect("the stream ends with OK");
        tasks.push(message.task.expect("every message carries the task"));
    }
    tasks
}

/// The contract's rules for any one stream.
fn assert_well_formed(tasks: &[pb::Task]) {
    assert!(!tasks.is_empty());
    for pair in tasks.windows(2) {
        assert!(pair[0].revision < pair[1].revision, "revisions go up");
        assert!(
            pair[0].status <= pair[1].status || status_of(&pair[0]) == pb::TaskStatus::Running,
            "statuses move forward"
        );
    }
    let last = tasks.last().expect("not empty");
    assert!(matches!(
        status_of(last),
        pb::TaskStatus::Completed | pb::TaskStatus::Failed | pb::TaskStatus::Cancelled
    ));
    assert!(
        tasks[..tasks.len() - 1].iter().all(|task| {
            matches!(
                status_of(task),
                pb::TaskStatus::Pending | pb::TaskStatus::Running
            )
        }),
        "only the last message is terminal"
    );
}

/// The distinct statuses a stream went through, in order.
fn statuses(tasks: &[pb::Task]) -> Vec<pb::TaskStatus> {
    let mut statuses: Vec<pb::TaskStatus> = tasks.iter().map(status_of).collect();
    statuses.dedup();
    statuses
}

async fn a_watch_sees_the_current_state_then_every_status_then_ends_ok() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "watched", "gate", Some(json!("payload"))).await;
    let mut stream = watch(&mut client, &task.id).await;
    let first = stream
        .next()
        .await
        .expect("a first message")
        .expect("ok")
        .task
        .expect("task");
    assert_eq!(first.id, task.id);
    assert!(first.revision >= task.revision);
    server.gate.release(1);
    let mut seen = vec![first];
    seen.extend(read_to_end(stream).await);
    assert_well_formed(&seen);
    assert_eq!(
        status_of(seen.last().expect("terminal")),
        pb::TaskStatus::Completed
    );
    let statuses = statuses(&seen);
    assert!(
        statuses.ends_with(&[pb::TaskStatus::Running, pb::TaskStatus::Completed]),
        "{statuses:?}"
    );
}

async fn a_watch_of_a_finished_task_sends_it_once_and_ends() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "done", "echo", None).await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    let seen = read_to_end(watch(&mut client, &task.id).await).await;
    assert_eq!(seen, vec![done]);
}

async fn a_watch_sees_progress_and_the_latest_progress_arrives() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "demo", "demo", Some(json!(1))).await;
    let seen = read_to_end(watch(&mut client, &task.id).await).await;
    assert_well_formed(&seen);
    assert!(
        seen.iter().any(|task| task
            .progress
            .as_ref()
            .is_some_and(|p| p.percent > 0 && p.percent < 100)),
        "intermediate progress is streamed"
    );
    let last = seen.last().expect("terminal");
    assert_eq!(last.progress.as_ref().map(|p| p.percent), Some(100));
}

async fn sixty_watchers_of_one_task_each_see_every_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "popular", "gate", None).await;
    let mut readers = Vec::new();
    for _ in 0..60 {
        let stream = watch(&mut client, &task.id).await;
        readers.push(tokio::spawn(read_to_end(stream)));
    }
    eventually("all sixty watchers subscribed", || async {
        (server.stats().await.watchers == 60).then_some(())
    })
    .await;
    server.gate.release(1);
    for reader in readers {
        let seen = reader.await.expect("reader");
        assert_well_formed(&seen);
        let statuses = statuses(&seen);
        assert!(
            statuses
                == [
                    pb::TaskStatus::Pending,
                    pb::TaskStatus::Running,
                    pb::TaskStatus::Completed
                ]
                || statuses == [pb::TaskStatus::Running, pb::TaskStatus::Completed],
            "{statuses:?}"
        );
    }
}

/// A watcher that reads nothing while the task reports thousands of
/// progress updates still gets every status, in order, and the latest
/// progress; others meanwhile are not held up.
async fn a_slow_watcher_loses_no_status_and_slows_no_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(
        &mut client,
        "chatty",
        "chatty",
        Some(json!({"reports": 5000})),
    )
    .await;
    let mut slow = watch(&mut client, &task.id).await;
    let first = slow
        .next()
        .await
        .expect("first")
        .expect("ok")
        .task
        .expect("task");

    // A fast watcher of the same task, and other work, finish meanwhile.
    let fast = read_to_end(watch(&mut client, &task.id).await).await;
    assert_well_formed(&fast);
    let other = create(&mut client, "other", "echo", None).await;
    wait_for_status(&client, &other.id, pb::TaskStatus::Completed).await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;

    // Only now does the slow watcher read.
    let mut seen = vec![first];
    seen.extend(read_to_end(slow).await);
    assert_well_formed(&seen);
    assert_eq!(
        seen.last(),
        Some(&done),
        "the final state, latest progress included"
    );
    assert_eq!(
        done.progress.as_ref().map(|p| p.message.as_str()),
        Some("report 5000")
    );
    let statuses = statuses(&seen);
    assert!(
        statuses.ends_with(&[pb::TaskStatus::Running, pb::TaskStatus::Completed]),
        "{statuses:?}"
    );
}

async fn watchers_that_disconnect_leave_nothing_behind() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "abandoned", "gate", None).await;
    // Three connections: the server allows 100 streams on each.
    let mut watchers = [
        server.client().await,
        server.client().await,
        server.client().await,
    ];
    let mut streams = Vec::new();
    for index in 0..300 {
        streams.push(watch(&mut watchers[index % 3], &task.id).await);
    }
    assert_eq!(server.stats().await.watchers, 300);
    drop(streams);
    eventually("every dropped watcher released", || async {
        (server.stats().await.watchers == 0).then_some(())
    })
    .await;
    // The task carries on, and a new watcher still works.
    let stream = watch(&mut client, &task.id).await;
    server.gate.release(1);
    let seen = read_to_end(stream).await;
    assert_eq!(
        status_of(seen.last().expect("terminal")),
        pb::TaskStatus::Completed
    );
    let stats = server.stats().await;
    assert_eq!((stats.watchers, stats.watched_tasks), (0, 0));
}

async fn watching_an_unknown_task_is_not_found() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let status = client
        .watch_task(pb::WatchTaskRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
}

contract_tests!(
    a_watch_sees_the_current_state_then_every_status_then_ends_ok,
    a_watch_of_a_finished_task_sends_it_once_and_ends,
    a_watch_sees_progress_and_the_latest_progress_arrives,
    sixty_watchers_of_one_task_each_see_every_status,
    a_slow_watcher_loses_no_status_and_slows_no_one,
    watchers_that_disconnect_leave_nothing_behind,
    watching_an_unknown_task_is_not_found,
);
