//! `WatchTasks` (contract v1.1, "Watching many tasks"): the initial list and
//! `initial_done`; filters by status, label and kind, with a task that leaves
//! its filter sent once more; a delete sent once with the last state;
//! resuming with a token, nothing lost and nothing repeated; the tokens that
//! are refused and how (other filters, garbage, another process, older than
//! what the journal keeps); and a client too slow to keep up, ended `ABORTED`
//! while another one keeps receiving. On memory and SQLite, and most on
//! PostgreSQL (resumes across its replicas: `watch_tasks_replicas.rs`). (Bookmarks after
//! ten quiet seconds are tested in paused time, in the manager's tests.)

use std::time::Duration;

use serde_json::json;
use task_processor::{config::Config, pb, store::StoreUrl};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::{
    stores,
    support::{
        Client, DEADLINE, TestServer, assert_invalid_argument, request, status_of, test_config,
        wait_for_status,
    },
};

pub(crate) type Stream = Streaming<pb::WatchTasksResponse>;

pub(crate) async fn watch_tasks(client: &mut Client, request: pb::WatchTasksRequest) -> Stream {
    client
        .watch_tasks(request)
        .await
        .expect("watch opened")
        .into_inner()
}

/// The next message, failing the test if none comes in time.
pub(crate) async fn next_message(stream: &mut Stream) -> pb::WatchTasksResponse {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a message, not an error")
}

/// The next message, which must be about a task.
pub(crate) async fn next_task(stream: &mut Stream) -> (pb::Task, String) {
    let message = next_message(stream).await;
    assert!(!message.initial_done, "{message:?}");
    assert!(
        !message.resume_token.is_empty(),
        "every message has a token"
    );
    let task = message.task.expect("a task, not a bookmark");
    (task, message.resume_token)
}

/// The initial list, up to and including the `initial_done` message.
pub(crate) async fn initial_list(stream: &mut Stream) -> (Vec<pb::Task>, String) {
    let mut tasks = Vec::new();
    loop {
        let message = next_message(stream).await;
        assert!(
            !message.resume_token.is_empty(),
            "every message has a token"
        );
        if message.initial_done {
            assert!(message.task.is_none(), "{message:?}");
            return (tasks, message.resume_token);
        }
        tasks.push(message.task.expect("the list sends tasks"));
    }
}

/// Messages until task `id` is in `status`, as (name, status) pairs.
pub(crate) async fn until(
    stream: &mut Stream,
    id: &str,
    status: pb::TaskStatus,
) -> Vec<(String, pb::TaskStatus)> {
    until_tasks(stream, id, status)
        .await
        .iter()
        .map(|task| (task.name.clone(), status_of(task)))
        .collect()
}

/// The tasks of the messages until task `id` is in `status`.
pub(crate) async fn until_tasks(
    stream: &mut Stream,
    id: &str,
    status: pb::TaskStatus,
) -> Vec<pb::Task> {
    let mut seen = Vec::new();
    loop {
        let (task, _) = next_task(stream).await;
        let done = task.id == id && status_of(&task) == status;
        seen.push(task);
        if done {
            return seen;
        }
    }
}

pub(crate) fn labelled(name: &str, kind: &str, team: &str) -> pb::CreateTaskRequest {
    let mut request = request(name, kind, Some(json!({"name": name})));
    request.labels.insert("team".into(), team.into());
    request
}

pub(crate) async fn create(client: &mut Client, request: pb::CreateTaskRequest) -> pb::Task {
    client
        .create_task(request)
        .await
        .expect("created")
        .into_inner()
}

pub(crate) fn team(name: &str) -> pb::WatchTasksRequest {
    pb::WatchTasksRequest {
        labels: [("team".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

use pb::TaskStatus::{Cancelled, Completed, Pending, Running};

async fn the_initial_list_sends_every_matching_task_then_initial_done_then_changes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut ours = Vec::new();
    for number in 0..3 {
        ours.push(create(&mut client, labelled(&format!("a{number}"), "echo", "a")).await);
        create(&mut client, labelled(&format!("b{number}"), "echo", "b")).await;
    }
    for task in &ours {
        wait_for_status(&client, &task.id, Completed).await;
    }
    let mut stream = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            send_initial: true,
            ..team("a")
        },
    )
    .await;
    let (listed, _) = initial_list(&mut stream).await;
    let listed_ids: Vec<&str> = listed.iter().map(|task| task.id.as_str()).collect();
    let ours_ids: Vec<&str> = ours.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(listed_ids, ours_ids, "every matching task, oldest first");
    assert!(listed.iter().all(|task| status_of(task) == Completed));
    assert_eq!(
        listed[0].data, ours[0].data,
        "tasks as they are, data included"
    );

    let next = create(&mut client, labelled("a-next", "echo", "a")).await;
    create(&mut client, labelled("b-next", "echo", "b")).await;
    let changes = until_tasks(&mut stream, &next.id, Completed).await;
    let seen: Vec<(String, pb::TaskStatus)> = changes
        .iter()
        .map(|task| (task.name.clone(), status_of(task)))
        .collect();
    assert_eq!(
        seen,
        [
            ("a-next".to_string(), Pending),
            ("a-next".to_string(), Running),
            ("a-next".to_string(), Completed)
        ],
        "every status of the new task, and nothing of team b"
    );
    // Each change carries the task whole: its data (which PostgreSQL's
    // change feed leaves out), and its result once it has one.
    for task in &changes {
        assert_eq!(task.data, next.data, "{task:?}");
        assert_eq!(
            task.result.is_some(),
            status_of(task) == Completed,
            "{task:?}"
        );
    }
}

async fn a_task_that_leaves_its_filter_is_sent_once_more_and_then_no_longer() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            statuses: vec![Pending as i32, Running as i32],
            ..Default::default()
        },
    )
    .await;
    let gated = create(&mut client, request("gated", "gate", None)).await;
    let seen = until(&mut stream, &gated.id, Running).await;
    assert_eq!(
        seen,
        [
            ("gated".to_string(), Pending),
            ("gated".to_string(), Running)
        ]
    );
    server.gate.release(1);
    let (left, _) = next_task(&mut stream).await;
    assert_eq!(
        (left.id.as_str(), status_of(&left)),
        (gated.id.as_str(), Completed)
    );
    // Deleting it is a change of a task that matches neither before nor
    // after: nothing. The next message is about the next task.
    client
        .delete_task(pb::DeleteTaskRequest {
            id: gated.id.clone(),
        })
        .await
        .expect("deleted");
    let sentinel = create(&mut client, request("sentinel", "gate", None)).await;
    let (next, _) = next_task(&mut stream).await;
    assert_eq!((status_of(&next), next.id), (Pending, sentinel.id));
    server.gate.release(1);
}

async fn kinds_and_labels_filter_what_is_sent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            kinds: vec!["echo".into()],
            ..team("a")
        },
    )
    .await;
    create(&mut client, labelled("other kind", "fail", "a")).await;
    create(&mut client, labelled("other team", "echo", "b")).await;
    let wanted = create(&mut client, labelled("wanted", "echo", "a")).await;
    let seen = until(&mut stream, &wanted.id, Completed).await;
    assert_eq!(
        seen,
        [
            ("wanted".to_string(), Pending),
            ("wanted".to_string(), Running),
            ("wanted".to_string(), Completed)
        ]
    );
}

async fn a_deleted_task_is_sent_once_with_its_last_state() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, pb::WatchTasksRequest::default()).await;
    let task = create(&mut client, request("to delete", "echo", None)).await;
    until(&mut stream, &task.id, Completed).await;
    let last = wait_for_status(&client, &task.id, Completed).await;
    client
        .delete_task(pb::DeleteTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("deleted");
    let (deleted, _) = next_task(&mut stream).await;
    assert_eq!(deleted.id, task.id);
    assert_eq!(
        (status_of(&deleted), deleted.revision),
        (Completed, last.revision),
        "its last state"
    );
    let sentinel = create(&mut client, request("sentinel", "echo", None)).await;
    let (next, _) = next_task(&mut stream).await;
    assert_eq!(next.id, sentinel.id, "the delete is sent once");
}

async fn a_resumed_stream_continues_after_its_token_with_nothing_lost_or_repeated() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, team("a")).await;
    let first = create(&mut client, labelled("first", "echo", "a")).await;
    let token = loop {
        let (task, resume_token) = next_task(&mut stream).await;
        if task.id == first.id && status_of(&task) == Completed {
            break resume_token;
        }
    };
    drop(stream);

    // While no stream is open: two tasks run, one is cancelled.
    let second = create(&mut client, labelled("second", "echo", "a")).await;
    wait_for_status(&client, &second.id, Completed).await;
    let third = create(&mut client, labelled("third", "gate", "a")).await;
    wait_for_status(&client, &third.id, Running).await;
    client
        .cancel_task(pb::CancelTaskRequest {
            id: third.id.clone(),
        })
        .await
        .expect("cancelled");

    let mut resumed = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            resume_token: token,
            // Ignored when resuming: the token says where the stream is.
            send_initial: true,
            ..team("a")
        },
    )
    .await;
    let resumed_tasks = until_tasks(&mut resumed, &third.id, Cancelled).await;
    // The journal keeps no payloads; a resumed stream reads them back, each
    // as it was at that change.
    for task in &resumed_tasks {
        assert_eq!(
            crate::support::json(&task.data),
            Some(json!({"name": task.name})),
            "{task:?}"
        );
        let completed = status_of(task) == Completed;
        assert_eq!(task.result.is_some(), completed, "{task:?}");
    }
    let seen: Vec<(String, pb::TaskStatus)> = resumed_tasks
        .iter()
        .map(|task| (task.name.clone(), status_of(task)))
        .collect();
    assert_eq!(
        seen,
        [
            ("second".to_string(), Pending),
            ("second".to_string(), Running),
            ("second".to_string(), Completed),
            ("third".to_string(), Pending),
            ("third".to_string(), Running),
            ("third".to_string(), Cancelled),
        ]
    );
    let fourth = create(&mut client, labelled("fourth", "echo", "a")).await;
    let (next, _) = next_task(&mut resumed).await;
    assert_eq!(
        (status_of(&next), next.id),
        (Pending, fourth.id),
        "then live changes, nothing repeated"
    );
    server.gate.release(1);
}

async fn a_token_from_the_initial_list_resumes_the_list_where_it_was() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for number in 0..4 {
        let task = create(
            &mut client,
            labelled(&format!("listed {number}"), "echo", "a"),
        )
        .await;
        wait_for_status(&client, &task.id, Completed).await;
        created.push(task);
    }
    let mut stream = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            send_initial: true,
            ..team("a")
        },
    )
    .await;
    let (first, _) = next_task(&mut stream).await;
    let (second, token) = next_task(&mut stream).await;
    assert_eq!(
        (first.id.as_str(), second.id.as_str()),
        (created[0].id.as_str(), created[1].id.as_str())
    );
    drop(stream);
    // Meanwhile one listed task is deleted and one not yet listed is too.
    for gone in [&created[0], &created[2]] {
        client
            .delete_task(pb::DeleteTaskRequest {
                id: gone.id.clone(),
            })
            .await
            .expect("deleted");
    }
    let mut resumed = watch_tasks(
        &mut client,
        pb::WatchTasksRequest {
            resume_token: token,
            ..team("a")
        },
    )
    .await;
    let (deleted, _) = next_task(&mut resumed).await;
    assert_eq!(
        deleted.id, created[0].id,
        "first what changed among the listed"
    );
    let (rest, _) = initial_list(&mut resumed).await;
    let rest: Vec<&str> = rest.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(
        rest,
        [created[3].id.as_str()],
        "then the rest of the list, as it is now"
    );
}

async fn a_token_with_other_filters_or_garbage_is_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, team("a")).await;
    create(&mut client, labelled("one", "echo", "a")).await;
    let (_, token) = next_task(&mut stream).await;
    for (request, what) in [
        (
            pb::WatchTasksRequest {
                resume_token: token.clone(),
                ..team("b")
            },
            "other labels",
        ),
        (
            pb::WatchTasksRequest {
                resume_token: token.clone(),
                kinds: vec!["echo".into()],
                ..team("a")
            },
            "a kind more",
        ),
        (
            pb::WatchTasksRequest {
                resume_token: "not-a-token".into(),
                ..team("a")
            },
            "garbage",
        ),
        (
            pb::WatchTasksRequest {
                resume_token: format!("{token}A"),
                ..team("a")
            },
            "tampered",
        ),
    ] {
        let refused = client
            .watch_tasks(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: refused"));
        assert_invalid_argument(&refused, "resume_token");
    }
    let refused = client
        .watch_tasks(pb::WatchTasksRequest {
            statuses: vec![0],
            ..Default::default()
        })
        .await
        .expect_err("no such status");
    assert_invalid_argument(&refused, "statuses");
}

async fn a_token_from_another_process_is_failed_precondition() {
    let store = stores::fresh_store().await;
    let config = Config {
        store: store.clone(),
        ..test_config()
    };
    let mut server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, team("a")).await;
    create(&mut client, labelled("one", "echo", "a")).await;
    let (_, token) = next_task(&mut stream).await;
    drop(stream);
    // On SQLite, the same file after a restart; on memory, another server.
    let other = if matches!(store, StoreUrl::Sqlite(_)) {
        server.begin_shutdown().await.expect("stopped");
        // The file is free once the last handle of its manager is gone.
        drop(server);
        TestServer::start_with(config).await
    } else {
        TestServer::start().await
    };
    let mut other_client = other.client().await;
    // Its journal has changes of its own, numbered as the old one's were.
    let mut own = watch_tasks(&mut other_client, team("a")).await;
    let task = create(&mut other_client, labelled("own", "echo", "a")).await;
    until(&mut own, &task.id, Completed).await;
    let refused = other_client
        .watch_tasks(pb::WatchTasksRequest {
            resume_token: token,
            ..team("a")
        })
        .await
        .expect_err("not this process's token");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("list the tasks again"),
        "{refused:?}"
    );
}

async fn a_token_older_than_what_the_journal_keeps_is_failed_precondition() {
    let server = TestServer::start_with(Config {
        watch_journal_capacity: 4,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, team("a")).await;
    let first = create(&mut client, labelled("first", "echo", "a")).await;
    let (_, kept_token) = next_task(&mut stream).await;
    until(&mut stream, &first.id, Completed).await;
    // Three changes after the token: still kept.
    let resumed = client
        .watch_tasks(pb::WatchTasksRequest {
            resume_token: kept_token.clone(),
            ..team("a")
        })
        .await;
    assert!(resumed.is_ok(), "{resumed:?}");
    // Three more push the token's successors out of a journal of four.
    let second = create(&mut client, labelled("second", "echo", "a")).await;
    until(&mut stream, &second.id, Completed).await;
    let refused = client
        .watch_tasks(pb::WatchTasksRequest {
            resume_token: kept_token,
            ..team("a")
        })
        .await
        .expect_err("expired");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

async fn a_client_too_slow_is_aborted_while_another_keeps_receiving() {
    let server = TestServer::start_with(Config {
        max_concurrent: 50,
        queue_capacity: 100_000,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    // Opened, then never read while the changes pour in.
    let mut slow = watch_tasks(&mut server.client().await, pb::WatchTasksRequest::default()).await;
    let mut fast = watch_tasks(&mut server.client().await, team("fast")).await;
    // Large messages fill the slow client's HTTP/2 windows with a few
    // hundred; then the server buffers a bounded number of changes for it.
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 200;
    let padding = "x".repeat(8 * 1024);
    for batch in 0..BATCHES {
        let requests = (0..PER_BATCH)
            .map(|number| {
                request(
                    &format!("{batch}-{number}"),
                    "echo",
                    Some(json!({"padding": padding})),
                )
            })
            .collect();
        client
            .batch_create_tasks(pb::BatchCreateTasksRequest { requests })
            .await
            .expect("created");
    }
    // The other stream looked at every change and still hears the next.
    let probe = create(&mut client, labelled("probe", "echo", "fast")).await;
    let seen = until(&mut fast, &probe.id, Completed).await;
    assert_eq!(seen.len(), 3, "{seen:?}");

    let mut received = 0;
    let ended = loop {
        match tokio::time::timeout(DEADLINE, slow.next())
            .await
            .expect("in time")
        {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("the slow stream ended without a status after {received}"),
        }
    };
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("resume_token"), "{ended:?}");
    assert!(
        received < BATCHES * PER_BATCH * 3,
        "only what was buffered: {received}"
    );
}

async fn shutdown_ends_streams_with_unavailable() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = watch_tasks(&mut client, pb::WatchTasksRequest::default()).await;
    create(&mut client, request("one", "echo", None)).await;
    next_task(&mut stream).await;
    let stopping = server.begin_shutdown();
    let ended = loop {
        match tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("in time")
        {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("ended without a status"),
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stops")
        .expect("stops cleanly");
}

/// Instantiates each listed test on memory and SQLite.
macro_rules! local_store_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::stores::on_store(
                        crate::stores::StoreUnderTest::Memory,
                        super::$name(),
                    )
                    .await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::stores::on_store(
                        crate::stores::StoreUnderTest::Sqlite,
                        super::$name(),
                    )
                    .await;
                }
            )*
        }
    };
}

/// Instantiates each listed test on PostgreSQL too (one replica: a stream
/// resumes on the replica that served it).
macro_rules! postgres_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if crate::stores::postgres_available(concat!(
                        module_path!(),
                        "::",
                        stringify!($name)
                    )) {
                        crate::stores::on_store(
                            crate::stores::StoreUnderTest::Postgres,
                            super::$name(),
                        )
                        .await;
                    }
                }
            )*
        }
    };
}

postgres_tests!(
    the_initial_list_sends_every_matching_task_then_initial_done_then_changes,
    a_task_that_leaves_its_filter_is_sent_once_more_and_then_no_longer,
    kinds_and_labels_filter_what_is_sent,
    a_deleted_task_is_sent_once_with_its_last_state,
    a_resumed_stream_continues_after_its_token_with_nothing_lost_or_repeated,
    a_token_from_the_initial_list_resumes_the_list_where_it_was,
    a_token_with_other_filters_or_garbage_is_invalid_argument,
    a_token_from_another_process_is_failed_precondition,
    a_client_too_slow_is_aborted_while_another_keeps_receiving,
    shutdown_ends_streams_with_unavailable,
);

local_store_tests!(
    the_initial_list_sends_every_matching_task_then_initial_done_then_changes,
    a_task_that_leaves_its_filter_is_sent_once_more_and_then_no_longer,
    kinds_and_labels_filter_what_is_sent,
    a_deleted_task_is_sent_once_with_its_last_state,
    a_resumed_stream_continues_after_its_token_with_nothing_lost_or_repeated,
    a_token_from_the_initial_list_resumes_the_list_where_it_was,
    a_token_with_other_filters_or_garbage_is_invalid_argument,
    a_token_from_another_process_is_failed_precondition,
    a_token_older_than_what_the_journal_keeps_is_failed_precondition,
    a_client_too_slow_is_aborted_while_another_keeps_receiving,
    shutdown_ends_streams_with_unavailable,
);
