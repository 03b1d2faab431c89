//! The WorkerService rules of the contract, each on every store.

use std::time::Duration;

use serde_json::json;
use task_processor::pb::{self, worker_service_client::WorkerServiceClient};
use tokio_stream::StreamExt;

use super::{RawWorker, assert_refused, hello, worker_server};
use crate::{
    retries::{create_with_policy, policy},
    support::{create, eventually, get, http_get, json, request, status_of, wait_for_status},
};

contract_tests!(
    a_worker_runs_a_task_with_progress_and_its_result,
    tasks_wait_for_a_worker_and_go_in_order_never_beyond_max_concurrent,
    the_servers_slots_and_a_kinds_limit_bound_worker_runs_too,
    a_failure_follows_the_retry_policy_and_the_retry_goes_to_another_worker,
    a_cancel_reaches_the_worker_and_its_slot_frees_only_with_an_outcome,
    a_timeout_reaches_the_worker,
    a_closed_stream_gives_its_tasks_back_to_run_again,
    a_task_given_back_can_be_cancelled_before_it_runs_again,
    a_bad_hello_or_a_broken_message_ends_the_stream_invalid_argument,
    outcomes_and_progress_for_runs_not_running_are_ignored,
    a_draining_worker_gets_no_more_tasks_and_its_stream_ends_ok,
    shutdown_cancels_on_the_stream_then_ends_it_unavailable,
    list_workers_shows_each_stream,
);

async fn a_worker_runs_a_task_with_progress_and_its_result() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let created = client
        .create_task(pb::CreateTaskRequest {
            timeout_seconds: 120,
            ..request("thumbnail", "remote", Some(json!({"image": "cat.png"})))
        })
        .await
        .expect("a worker kind is accepted")
        .into_inner();
    assert_eq!(status_of(&created), pb::TaskStatus::Pending);
    let mut watch = client
        .watch_task(pb::WatchTaskRequest {
            id: created.id.clone(),
        })
        .await
        .expect("watch")
        .into_inner();

    let mut worker = RawWorker::connect(&server, &["remote"], 1, "resizer-1").await;
    let assigned = worker.next_assignment().await;
    assert_eq!(assigned.id, created.id);
    assert_eq!(status_of(&assigned), pb::TaskStatus::Running);
    assert_eq!(assigned.attempt, 1);
    assert_eq!(assigned.timeout_seconds, 120);
    assert_eq!(json(&assigned.data), Some(json!({"image": "cat.png"})));
    assert_eq!(assigned.node, "test-node/resizer-1");
    // Stored too (on PostgreSQL, once the change is committed).
    crate::support::eventually("the worker's node to be stored", || {
        let mut client = client.clone();
        let id = created.id.clone();
        async move { (get(&mut client, &id).await.node == "test-node/resizer-1").then_some(()) }
    })
    .await;

    worker.progress(&assigned, 40, "scaling").await;
    let mut running_nodes = Vec::new();
    let progress = loop {
        let state = watch
            .next()
            .await
            .expect("the watch goes on")
            .expect("a state")
            .task
            .expect("task");
        if status_of(&state) == pb::TaskStatus::Running {
            running_nodes.push(state.node.clone());
        }
        if let Some(progress) = state.progress {
            break progress;
        }
    };
    // Where the run starts in one step (memory, SQLite), watchers never see
    // it running without its worker; a PostgreSQL claim names the worker
    // in a second change.
    if crate::stores::current() != crate::stores::StoreUnderTest::Postgres {
        assert!(
            running_nodes
                .iter()
                .all(|node| node == "test-node/resizer-1"),
            "{running_nodes:?}"
        );
    }
    assert_eq!(
        (progress.percent, progress.message.as_str()),
        (40, "scaling")
    );

    worker
        .complete(
            &assigned.id,
            assigned.attempt,
            json!({"thumbnail": "cat-64.png"}),
        )
        .await;
    let done = wait_for_status(&client, &created.id, pb::TaskStatus::Completed).await;
    assert_eq!(json(&done.result), Some(json!({"thumbnail": "cat-64.png"})));
    assert_eq!(done.attempt, 1);
}

async fn tasks_wait_for_a_worker_and_go_in_order_never_beyond_max_concurrent() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let low = create(&mut client, "low", "remote", None).await;
    let first = create(&mut client, "first", "remote", None).await;
    let high = client
        .create_task(pb::CreateTaskRequest {
            priority: 50,
            ..request("high", "remote", None)
        })
        .await
        .expect("create")
        .into_inner();
    let other = create(&mut client, "other kind", "other-remote", None).await;
    // No worker: everything waits, however long, and the gauge says so.
    let admin = server.admin_address.to_string();
    eventually("the waiting tasks to be counted", || {
        let admin = admin.clone();
        async move {
            let (_, metrics) = http_get(&admin, "/metrics").await;
            let counted = metrics
                .contains(r#"task_processor_tasks_waiting_for_worker{kind="remote"} 3"#)
                && metrics
                    .contains(r#"task_processor_tasks_waiting_for_worker{kind="other-remote"} 1"#);
            counted.then_some(())
        }
    })
    .await;
    for task in [&low, &first, &high, &other] {
        assert_eq!(
            status_of(&get(&mut client, &task.id).await),
            pb::TaskStatus::Pending
        );
    }

    // A worker of one kind, two at once: the highest priority, then the
    // oldest; never a third before an outcome, never the other kind.
    let mut worker = RawWorker::connect(&server, &["remote"], 2, "pair").await;
    let one = worker.next_assignment().await;
    let two = worker.next_assignment().await;
    assert_eq!(
        [one.id.as_str(), two.id.as_str()],
        [high.id.as_str(), low.id.as_str()]
    );
    worker.expect_nothing_for(Duration::from_millis(300)).await;
    assert_eq!(
        status_of(&get(&mut client, &first.id).await),
        pb::TaskStatus::Pending
    );
    assert_eq!(
        status_of(&get(&mut client, &other.id).await),
        pb::TaskStatus::Pending
    );

    worker.complete(&one.id, one.attempt, json!(1)).await;
    let three = worker.next_assignment().await;
    assert_eq!(three.id, first.id);
    worker.expect_nothing_for(Duration::from_millis(200)).await;
    worker.complete(&two.id, two.attempt, json!(2)).await;
    worker.complete(&three.id, three.attempt, json!(3)).await;
    for task in [&high, &low, &first] {
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    assert_eq!(
        status_of(&get(&mut client, &other.id).await),
        pb::TaskStatus::Pending
    );
}

async fn the_servers_slots_and_a_kinds_limit_bound_worker_runs_too() {
    use task_processor::config::{Config, KindSettings};
    // Two slots in all; one for `remote`; the stream could take ten.
    let server = crate::support::TestServer::start_with(Config {
        max_concurrent: 2,
        kinds: [(
            "remote".to_owned(),
            KindSettings {
                max_concurrent: Some(1),
                ..KindSettings::default()
            },
        )]
        .into(),
        ..super::worker_config()
    })
    .await;
    let mut client = server.client().await;
    let remote = [
        create(&mut client, "remote 1", "remote", None).await,
        create(&mut client, "remote 2", "remote", None).await,
    ];
    let other = [
        create(&mut client, "other 1", "other-remote", None).await,
        create(&mut client, "other 2", "other-remote", None).await,
    ];
    let mut worker = RawWorker::connect(&server, &["remote", "other-remote"], 10, "wide").await;
    let first = worker.next_assignment().await;
    let second = worker.next_assignment().await;
    let mut assigned = [first.id.clone(), second.id.clone()];
    assigned.sort();
    let mut expected = [remote[0].id.clone(), other[0].id.clone()];
    expected.sort();
    assert_eq!(
        assigned, expected,
        "one of the limited kind, then the server is full"
    );
    worker.expect_nothing_for(Duration::from_millis(300)).await;
    // A slot of the limited kind frees: its next task goes.
    let remote_run = if first.kind == "remote" {
        &first
    } else {
        &second
    };
    worker
        .complete(&remote_run.id, remote_run.attempt, json!(1))
        .await;
    let third = worker.next_assignment().await;
    assert_eq!(third.id, remote[1].id);
    worker.expect_nothing_for(Duration::from_millis(200)).await;
    assert_eq!(
        status_of(&get(&mut client, &other[1].id).await),
        pb::TaskStatus::Pending
    );
}

async fn a_failure_follows_the_retry_policy_and_the_retry_goes_to_another_worker() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let retried = create_with_policy(
        &mut client,
        "remote",
        json!({}),
        policy(3, Duration::from_millis(100)),
    )
    .await;
    let mut first = RawWorker::connect(&server, &["remote"], 1, "first").await;
    let run = first.next_assignment().await;
    first.fail(&run.id, run.attempt, "disk full", false).await;
    let retrying = wait_for_status(&client, &retried.id, pb::TaskStatus::Retrying).await;
    assert_eq!(retrying.error, "disk full");
    // The first worker leaves; the retry goes to the one still there.
    first.drain().await;
    let (_, ended) = first.end().await;
    assert!(ended.is_ok(), "{ended:?}");
    let mut second = RawWorker::connect(&server, &["remote"], 1, "second").await;
    let again = second.next_assignment().await;
    assert_eq!((again.id.as_str(), again.attempt), (retried.id.as_str(), 2));
    assert_eq!(again.node, "test-node/second");
    second.complete(&again.id, again.attempt, json!("ok")).await;
    wait_for_status(&client, &retried.id, pb::TaskStatus::Completed).await;

    // A permanent failure is final, whatever attempts remain.
    let permanent = create_with_policy(
        &mut client,
        "remote",
        json!({}),
        policy(3, Duration::from_millis(100)),
    )
    .await;
    let run = second.next_assignment().await;
    assert_eq!(run.id, permanent.id);
    second.fail(&run.id, run.attempt, "bad input", true).await;
    let failed = wait_for_status(&client, &permanent.id, pb::TaskStatus::Failed).await;
    assert_eq!((failed.error.as_str(), failed.attempt), ("bad input", 1));
}

async fn a_cancel_reaches_the_worker_and_its_slot_frees_only_with_an_outcome() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let cancelled = create(&mut client, "cancelled", "remote", None).await;
    let next = create(&mut client, "next", "remote", None).await;
    let mut worker = RawWorker::connect(&server, &["remote"], 1, "solo").await;
    let run = worker.next_assignment().await;
    assert_eq!(run.id, cancelled.id);

    let answer = client
        .cancel_task(pb::CancelTaskRequest {
            id: cancelled.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(status_of(&answer), pb::TaskStatus::Cancelled, "at once");
    let cancellation = worker.next_cancellation().await;
    assert_eq!(
        (cancellation.task_id.as_str(), cancellation.attempt),
        (cancelled.id.as_str(), 1)
    );
    assert_eq!(cancellation.reason, "cancelled by client request");
    assert_eq!(cancellation.cause(), pb::CancellationCause::Cancelled);

    // The stream's one slot is still the cancelled run's.
    worker.expect_nothing_for(Duration::from_millis(300)).await;
    assert_eq!(
        status_of(&get(&mut client, &next.id).await),
        pb::TaskStatus::Pending
    );
    // Any outcome frees it, and is discarded.
    worker
        .complete(&run.id, run.attempt, json!("too late"))
        .await;
    let following = worker.next_assignment().await;
    assert_eq!(following.id, next.id);
    let still = get(&mut client, &cancelled.id).await;
    assert_eq!(status_of(&still), pb::TaskStatus::Cancelled);
    assert_eq!(still.result, None);
    let (_, metrics) = http_get(&server.admin_address.to_string(), "/metrics").await;
    for line in [
        r#"task_processor_worker_assignments_total{kind="remote"} 2"#,
        r#"task_processor_worker_outcomes_total{result="ignored"} 1"#,
        r#"task_processor_workers_connected{kind="remote"} 1"#,
        r#"task_processor_tasks_waiting_for_worker{kind="remote"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
    assert!(!metrics.contains(r#"task_processor_worker_outcomes_total{result="completed"}"#));
}

async fn a_timeout_reaches_the_worker() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let slow = client
        .create_task(pb::CreateTaskRequest {
            timeout_seconds: 1,
            ..request("slow", "remote", None)
        })
        .await
        .expect("create")
        .into_inner();
    let mut worker = RawWorker::connect(&server, &["remote"], 1, "slow").await;
    let run = worker.next_assignment().await;
    assert_eq!(run.timeout_seconds, 1);
    let cancellation = worker.next_cancellation().await;
    assert_eq!(cancellation.task_id, slow.id);
    assert_eq!(cancellation.cause(), pb::CancellationCause::TimedOut);
    assert_eq!(cancellation.reason, "timed out after 1s");
    let failed = wait_for_status(&client, &slow.id, pb::TaskStatus::Failed).await;
    assert_eq!(failed.error, "timed out after 1s");
    worker.fail(&run.id, run.attempt, "stopped", false).await;
}

async fn a_closed_stream_gives_its_tasks_back_to_run_again() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let task = create(&mut client, "handed back", "remote", None).await;
    let mut leaving = RawWorker::connect(&server, &["remote"], 1, "leaving").await;
    let run = leaving.next_assignment().await;
    assert_eq!(run.attempt, 1);
    leaving.close();
    drop(leaving);

    let mut staying = RawWorker::connect(&server, &["remote"], 1, "staying").await;
    let again = staying.next_assignment().await;
    assert_eq!((again.id.as_str(), again.attempt), (task.id.as_str(), 2));
    assert_eq!(again.node, "test-node/staying");
    staying
        .complete(&again.id, again.attempt, json!("done"))
        .await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(done.attempt, 2);
    assert_eq!(done.error, "", "a run cut short is not a failure");
}

async fn a_task_given_back_can_be_cancelled_before_it_runs_again() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let task = create(&mut client, "given back", "remote", None).await;
    let mut leaving = RawWorker::connect(&server, &["remote"], 1, "leaving").await;
    leaving.next_assignment().await;
    leaving.close();
    drop(leaving);
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    let mut next = RawWorker::connect(&server, &["remote"], 1, "next").await;
    next.expect_nothing_for(Duration::from_millis(1500)).await;
    let still = get(&mut client, &task.id).await;
    assert_eq!(status_of(&still), pb::TaskStatus::Cancelled);
}

async fn a_bad_hello_or_a_broken_message_ends_the_stream_invalid_argument() {
    let server = worker_server().await;
    let refusal = |first: pb::WorkRequest| {
        let server = &server;
        async move {
            match RawWorker::open(server.channel().await, first).await {
                Err(status) => status,
                Ok(mut worker) => worker.end().await.1.expect_err("refused"),
            }
        }
    };
    let progress_first = pb::WorkRequest {
        message: Some(pb::work_request::Message::Drain(pb::WorkDrain {})),
    };
    assert_refused(&refusal(progress_first).await, "hello");
    assert_refused(&refusal(hello(&[], 1, "w")).await, "hello.kinds");
    assert_refused(
        &refusal(hello(&["remote", "echo"], 1, "w")).await,
        "hello.kinds[1]",
    );
    assert_refused(
        &refusal(hello(&["remote", "remote"], 1, "w")).await,
        "hello.kinds[1]",
    );
    assert_refused(
        &refusal(hello(&["remote"], 0, "w")).await,
        "hello.max_concurrent",
    );
    assert_refused(
        &refusal(hello(&["remote"], 1, "bad\u{7}name")).await,
        "hello.worker_name",
    );

    // After a good hello: a second hello, a task id that is no UUID, an
    // outcome with neither result nor failure.
    let mut twice = RawWorker::connect(&server, &["remote"], 1, "w").await;
    twice
        .send(hello(&["remote"], 1, "w").message.expect("hello"))
        .await;
    assert_refused(&twice.end().await.1.expect_err("refused"), "hello");
    let mut bad_id = RawWorker::connect(&server, &["remote"], 1, "w").await;
    bad_id
        .send(pb::work_request::Message::Outcome(pb::WorkOutcome {
            task_id: "not-a-uuid".into(),
            attempt: 1,
            outcome: Some(pb::work_outcome::Outcome::Result(Default::default())),
        }))
        .await;
    assert_refused(
        &bad_id.end().await.1.expect_err("refused"),
        "outcome.task_id",
    );
    let mut empty = RawWorker::connect(&server, &["remote"], 1, "w").await;
    empty
        .send(pb::work_request::Message::Outcome(pb::WorkOutcome {
            task_id: uuid::Uuid::now_v7().to_string(),
            attempt: 1,
            outcome: None,
        }))
        .await;
    assert_refused(
        &empty.end().await.1.expect_err("refused"),
        "outcome.outcome",
    );
}

async fn outcomes_and_progress_for_runs_not_running_are_ignored() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let task = create(&mut client, "task", "remote", None).await;
    let mut worker = RawWorker::connect(&server, &["remote"], 1, "w").await;
    let run = worker.next_assignment().await;
    // Another attempt of the same task, and a task never assigned.
    worker
        .fail(&run.id, run.attempt + 1, "wrong attempt", true)
        .await;
    worker
        .complete(&uuid::Uuid::now_v7().to_string(), 1, json!("stranger"))
        .await;
    let mut wrong_attempt = run.clone();
    wrong_attempt.attempt += 1;
    worker.progress(&wrong_attempt, 99, "wrong attempt").await;
    worker.progress(&run, 10, "right").await;
    let seen = crate::support::eventually("the right progress", || {
        let mut client = client.clone();
        let id = task.id.clone();
        async move {
            let task = get(&mut client, &id).await;
            let right = task
                .progress
                .as_ref()
                .is_some_and(|progress| progress.percent == 10);
            right.then_some(task)
        }
    })
    .await;
    assert_eq!(
        status_of(&seen),
        pb::TaskStatus::Running,
        "nothing ended it"
    );
    worker.complete(&run.id, run.attempt, json!("right")).await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(json(&done.result), Some(json!("right")));
}

async fn a_draining_worker_gets_no_more_tasks_and_its_stream_ends_ok() {
    let server = worker_server().await;
    let mut client = server.client().await;
    let running = create(&mut client, "running", "remote", None).await;
    let mut worker = RawWorker::connect(&server, &["remote"], 1, "w").await;
    let run = worker.next_assignment().await;
    worker.drain().await;
    let waiting = create(&mut client, "waiting", "remote", None).await;
    worker
        .complete(&run.id, run.attempt, json!("finished"))
        .await;
    let (messages, ended) = worker.end().await;
    assert!(
        messages.is_empty(),
        "no assignment after drain: {messages:?}"
    );
    assert!(ended.is_ok(), "{ended:?}");
    wait_for_status(&client, &running.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        status_of(&get(&mut client, &waiting.id).await),
        pb::TaskStatus::Pending
    );
}

async fn shutdown_cancels_on_the_stream_then_ends_it_unavailable() {
    let mut server = worker_server().await;
    let mut client = server.client().await;
    let task = create(&mut client, "interrupted", "remote", None).await;
    let mut worker = RawWorker::connect(&server, &["remote"], 1, "w").await;
    let run = worker.next_assignment().await;
    assert_eq!(run.id, task.id);
    let stopping = server.begin_shutdown();
    let cancellation = worker.next_cancellation().await;
    assert_eq!(cancellation.task_id, task.id);
    assert_eq!(cancellation.reason, "shutting down");
    assert_eq!(cancellation.cause(), pb::CancellationCause::ShuttingDown);
    let (_, ended) = worker.end().await;
    let status = ended.expect_err("ended by the server");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    stopping.await.expect("the server stops");
}

async fn list_workers_shows_each_stream() {
    let server = worker_server().await;
    let mut workers = WorkerServiceClient::new(server.channel().await);
    let listed = workers
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.workers.is_empty());
    let mut client = server.client().await;
    let _worker_a = RawWorker::connect(&server, &["remote"], 3, "a").await;
    let mut worker_b = RawWorker::connect(&server, &["remote", "other-remote"], 1, "b").await;
    create(&mut client, "other", "other-remote", None).await;
    worker_b.next_assignment().await;
    let listed = workers
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("list")
        .into_inner()
        .workers;
    let summary: Vec<(&str, Vec<&str>, u32, u32, &str)> = listed
        .iter()
        .map(|worker| {
            (
                worker.worker_name.as_str(),
                worker.kinds.iter().map(String::as_str).collect(),
                worker.max_concurrent,
                worker.in_flight,
                worker.node.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a", vec!["remote"], 3, 0, "test-node"),
            ("b", vec!["remote", "other-remote"], 1, 1, "test-node"),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|worker| !worker.peer.is_empty() && worker.connected_at.is_some())
    );
}
