//! Start rules (contract v1.1, "Scheduling") and `DeleteTask`: a delayed
//! task waits without a slot and starts at its time; ready tasks start by
//! priority, then FIFO; a task that waits past its queue timeout fails
//! without a run; a finished task can be deleted. On every store.

use std::time::{Duration, SystemTime};

use serde_json::json;
use task_processor::pb;
use tonic::Code;

use crate::support::{
    Client, TestServer, assert_invalid_argument, create, eventually, get, request, status_of,
    wait_for_status,
};

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn time_of(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("set")).expect("a valid time")
}

async fn create_request(client: &mut Client, request: pb::CreateTaskRequest) -> pb::Task {
    client
        .create_task(request)
        .await
        .expect("create")
        .into_inner()
}

async fn a_delayed_task_waits_without_a_slot_and_starts_at_its_time() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    // Far enough ahead that the other task has run and been read back by
    // then, even on a loaded machine.
    let run_after = SystemTime::now() + Duration::from_secs(3);
    let delayed = create_request(
        &mut client,
        pb::CreateTaskRequest {
            run_after: Some(timestamp(run_after)),
            ..request("later", "echo", Some(json!("later")))
        },
    )
    .await;
    assert_eq!(status_of(&delayed), pb::TaskStatus::Pending);
    let asked = time_of(&delayed.run_after);
    let micros = |time: SystemTime| {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros()
    };
    assert_eq!(micros(asked), micros(run_after), "run_after is echoed");
    // The only slot is free for others meanwhile.
    let now = create(&mut client, "now", "echo", Some(json!("now"))).await;
    wait_for_status(&client, &now.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        status_of(&get(&mut client, &delayed.id).await),
        pb::TaskStatus::Pending,
        "still waiting for its time"
    );
    let done = wait_for_status(&client, &delayed.id, pb::TaskStatus::Completed).await;
    let started = time_of(&done.started_at);
    assert!(
        started >= asked,
        "started {started:?}, before its run_after {asked:?}"
    );
}

async fn a_run_after_in_the_past_means_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create_request(
        &mut client,
        pb::CreateTaskRequest {
            run_after: Some(timestamp(SystemTime::now() - Duration::from_secs(3600))),
            ..request("past", "echo", None)
        },
    )
    .await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
}

async fn ready_tasks_start_by_priority_then_oldest_first() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    // Holds the only slot while the others queue up.
    let blocker = create(&mut client, "blocker", "gate", None).await;
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Running).await;
    let priorities = [0, 5, -3, 5, 10, 0];
    let mut created = Vec::new();
    for (index, priority) in priorities.into_iter().enumerate() {
        let task = create_request(
            &mut client,
            pb::CreateTaskRequest {
                priority,
                ..request(&format!("p{priority} #{index}"), "gate", None)
            },
        )
        .await;
        assert_eq!(task.priority, priority);
        created.push(task);
    }
    server.gate.release(1 + priorities.len());
    for task in &created {
        wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    }
    let started = server.gate.started();
    let names: Vec<&str> = started
        .iter()
        .skip(1)
        .map(|id| {
            created
                .iter()
                .find(|task| &task.id == id)
                .map_or("?", |task| task.name.as_str())
        })
        .collect();
    assert_eq!(
        names,
        ["p10 #4", "p5 #1", "p5 #3", "p0 #0", "p0 #5", "p-3 #2"],
        "higher priority first, then FIFO"
    );
}

async fn a_task_that_waits_past_its_queue_timeout_fails_without_running() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let blocker = create(&mut client, "blocker", "gate", None).await;
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Running).await;
    let impatient = create_request(
        &mut client,
        pb::CreateTaskRequest {
            queue_timeout_seconds: 1,
            ..request("impatient", "echo", None)
        },
    )
    .await;
    assert_eq!(impatient.queue_timeout_seconds, 1);
    let failed = wait_for_status(&client, &impatient.id, pb::TaskStatus::Failed).await;
    assert_eq!(failed.attempt, 0, "it never ran");
    assert!(
        failed.error.contains("never started in time"),
        "{}",
        failed.error
    );
    let waited = time_of(&failed.completed_at)
        .duration_since(time_of(&failed.created_at))
        .expect("after its creation");
    assert!(waited >= Duration::from_secs(1), "failed after {waited:?}");
    // The slot holder is unharmed, and a patient task still runs.
    server.gate.release(1);
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Completed).await;
}

async fn the_queue_timeout_counts_from_run_after() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Waits 3 s by design: that is not waiting in the queue. Counted from
    // the creation, the 2 s would be over before it may start; counted from
    // `run_after`, a loaded machine has 2 s to start it.
    let task = create_request(
        &mut client,
        pb::CreateTaskRequest {
            run_after: Some(timestamp(SystemTime::now() + Duration::from_secs(3))),
            queue_timeout_seconds: 2,
            ..request("delayed", "echo", None)
        },
    )
    .await;
    let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(done.attempt, 1);
}

async fn out_of_range_start_rules_are_refused_naming_their_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let cases = [
        (
            pb::CreateTaskRequest {
                priority: 101,
                ..request("bad", "echo", None)
            },
            "priority",
        ),
        (
            pb::CreateTaskRequest {
                priority: -101,
                ..request("bad", "echo", None)
            },
            "priority",
        ),
        (
            pb::CreateTaskRequest {
                run_after: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 2_000_000_000,
                }),
                ..request("bad", "echo", None)
            },
            "run_after",
        ),
        (
            pb::CreateTaskRequest {
                run_after: Some(timestamp(
                    SystemTime::now() + Duration::from_secs(400 * 24 * 3600),
                )),
                ..request("bad", "echo", None)
            },
            "run_after",
        ),
    ];
    for (request, field) in cases {
        let status = client.create_task(request).await.expect_err("refused");
        assert_invalid_argument(&status, field);
    }
}

async fn delete_forgets_a_finished_task_and_refuses_an_unfinished_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let done = create_request(
        &mut client,
        pb::CreateTaskRequest {
            request_id: "once".into(),
            ..request("done", "echo", Some(json!({"big": "x".repeat(1000)})))
        },
    )
    .await;
    wait_for_status(&client, &done.id, pb::TaskStatus::Completed).await;
    let running = create(&mut client, "running", "gate", None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;

    client
        .delete_task(pb::DeleteTaskRequest {
            id: done.id.clone(),
        })
        .await
        .expect("a finished task is deleted");
    let gone = client
        .get_task(pb::GetTaskRequest {
            id: done.id.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    let again = client
        .delete_task(pb::DeleteTaskRequest {
            id: done.id.clone(),
        })
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);
    // Its request_id is free again.
    let anew = create_request(
        &mut client,
        pb::CreateTaskRequest {
            request_id: "once".into(),
            ..request("done", "echo", None)
        },
    )
    .await;
    assert_ne!(anew.id, done.id);

    let unfinished = client
        .delete_task(pb::DeleteTaskRequest {
            id: running.id.clone(),
        })
        .await
        .expect_err("still running");
    assert_eq!(
        unfinished.code(),
        Code::FailedPrecondition,
        "{unfinished:?}"
    );
    assert!(
        unfinished.message().contains("cancel it first"),
        "{unfinished:?}"
    );
    assert_eq!(
        status_of(&get(&mut client, &running.id).await),
        pb::TaskStatus::Running,
        "a refused delete changes nothing"
    );
    let bad = client
        .delete_task(pb::DeleteTaskRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .expect_err("not a uuid");
    assert_invalid_argument(&bad, "id");
    server.gate.release(1);
    let listed = eventually("the deleted task to stay gone from lists", || {
        let mut client = client.clone();
        let done = done.id.clone();
        async move {
            let all = crate::support::list_all(&mut client).await;
            (!all.iter().any(|task| task.id == done)).then_some(all.len())
        }
    })
    .await;
    assert_eq!(listed, 2, "the running task and the new one");
}

contract_tests!(
    a_delayed_task_waits_without_a_slot_and_starts_at_its_time,
    a_run_after_in_the_past_means_at_once,
    ready_tasks_start_by_priority_then_oldest_first,
    a_task_that_waits_past_its_queue_timeout_fails_without_running,
    the_queue_timeout_counts_from_run_after,
    out_of_range_start_rules_are_refused_naming_their_field,
    delete_forgets_a_finished_task_and_refuses_an_unfinished_one,
);
