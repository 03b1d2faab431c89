//! GetTask and CancelTask, timeouts and the forced stop: the state machine
//! as a client sees it.

use serde_json::json;
use task_processor::pb;
use tonic::Code;

use crate::support::{
    TestServer, assert_invalid_argument, create, eventually, get, status_of, wait_for_status,
};

fn ids(
    id: &str,
) -> (
    pb::GetTaskRequest,
    pb::CancelTaskRequest,
    pb::WatchTaskRequest,
) {
    (
        pb::GetTaskRequest { id: id.into() },
        pb::CancelTaskRequest { id: id.into() },
        pb::WatchTaskRequest { id: id.into() },
    )
}

async fn ids_that_are_not_uuids_are_invalid_and_unknown_ones_not_found() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for bad in [
        "",
        "42",
        "not-a-uuid",
        "0192e0a8-0000-7000-8000-00000000000g",
    ] {
        let (get, cancel, watch) = ids(bad);
        assert_invalid_argument(&client.get_task(get).await.expect_err("get"), "id");
        assert_invalid_argument(&client.cancel_task(cancel).await.expect_err("cancel"), "id");
        assert_invalid_argument(&client.watch_task(watch).await.expect_err("watch"), "id");
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let (get, cancel, watch) = ids(&unknown);
    assert_eq!(
        client.get_task(get).await.expect_err("get").code(),
        Code::NotFound
    );
    assert_eq!(
        client.cancel_task(cancel).await.expect_err("cancel").code(),
        Code::NotFound
    );
    assert_eq!(
        client.watch_task(watch).await.expect_err("watch").code(),
        Code::NotFound
    );
}

async fn get_returns_what_create_returned_until_it_changes() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let blocker = create(&mut client, "blocker", "gate", None).await;
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Running).await;
    let waiting = create(&mut client, "waiting", "echo", Some(json!([1]))).await;
    assert_eq!(get(&mut client, &waiting.id).await, waiting);
    server.gate.release(1);
    let done = wait_for_status(&client, &waiting.id, pb::TaskStatus::Completed).await;
    assert!(done.revision > waiting.revision);
    assert_eq!(done.created_at, waiting.created_at);
}

async fn cancelling_a_pending_task_cancels_it_at_once_and_it_never_runs() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let blocker = create(&mut client, "blocker", "gate", None).await;
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Running).await;
    let pending = create(&mut client, "pending", "gate", None).await;

    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: pending.id.clone(),
        })
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert!(cancelled.error.contains("cancel"), "{}", cancelled.error);
    assert_eq!(cancelled.attempt, 0);
    assert!(cancelled.started_at.is_none());

    // A retried cancel succeeds and changes nothing.
    let again = client
        .cancel_task(pb::CancelTaskRequest {
            id: pending.id.clone(),
        })
        .await
        .expect("cancel again")
        .into_inner();
    assert_eq!(again, cancelled);

    server.gate.release(1);
    wait_for_status(&client, &blocker.id, pb::TaskStatus::Completed).await;
    let after = create(&mut client, "after", "gate", None).await;
    server.gate.release(1);
    wait_for_status(&client, &after.id, pb::TaskStatus::Completed).await;
    assert_eq!(
        server.gate.started(),
        vec![blocker.id, after.id],
        "the cancelled task never ran"
    );
    assert_eq!(
        get(&mut client, &pending.id).await,
        cancelled,
        "terminal states never change"
    );
}

async fn cancelling_a_running_task_stops_its_processor_and_frees_the_slot() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let running = create(
        &mut client,
        "sleeper",
        "sleep",
        Some(json!({"seconds": 600})),
    )
    .await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    let next = create(&mut client, "next", "echo", Some(json!("go"))).await;

    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: running.id.clone(),
        })
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(cancelled.attempt, 1);
    assert!(cancelled.error.contains("cancel"), "{}", cancelled.error);

    wait_for_status(&client, &next.id, pb::TaskStatus::Completed).await;
    let final_state = get(&mut client, &running.id).await;
    assert_eq!(
        final_state, cancelled,
        "whatever the run returned afterwards is discarded"
    );
}

async fn a_processor_that_ignores_cancel_is_aborted_and_its_slot_freed() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let stubborn = create(&mut client, "stubborn", "stubborn", None).await;
    wait_for_status(&client, &stubborn.id, pb::TaskStatus::Running).await;
    let next = create(&mut client, "next", "echo", None).await;
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest {
            id: stubborn.id.clone(),
        })
        .await
        .expect("cancelled")
        .into_inner();
    let next = wait_for_status(&client, &next.id, pb::TaskStatus::Completed).await;
    // The slot is held until the forced stop a second after the cancel, and
    // only then freed: the next task cannot have started earlier. (Timers
    // never fire early; the margin covers the two clocks' rounding.)
    let as_time = |timestamp: Option<prost_types::Timestamp>| {
        std::time::SystemTime::try_from(timestamp.expect("set")).expect("valid")
    };
    let held = as_time(next.started_at)
        .duration_since(as_time(cancelled.completed_at))
        .expect("the next task started after the cancel");
    assert!(
        held >= task_processor::manager::FORCED_STOP_AFTER - std::time::Duration::from_millis(10),
        "the stubborn run held its slot only {held:?}"
    );
    eventually("no runs left", || async {
        (server.stats().await.running == 0).then_some(())
    })
    .await;
    assert_eq!(
        status_of(&get(&mut client, &stubborn.id).await),
        pb::TaskStatus::Cancelled
    );
}

async fn cancelling_a_finished_task_is_a_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let completed = create(&mut client, "done", "echo", None).await;
    let failed = create(&mut client, "broken", "fail", None).await;
    for (task, status) in [
        (completed, pb::TaskStatus::Completed),
        (failed, pb::TaskStatus::Failed),
    ] {
        let before = wait_for_status(&client, &task.id, status).await;
        let error = client
            .cancel_task(pb::CancelTaskRequest {
                id: task.id.clone(),
            })
            .await
            .expect_err("finished tasks cannot be cancelled");
        assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
        assert_eq!(
            get(&mut client, &task.id).await,
            before,
            "and stay as they were"
        );
    }
}

async fn a_task_over_its_timeout_fails_saying_it_timed_out() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut slow = crate::support::request("slow", "sleep", Some(json!({"seconds": 600})));
    slow.timeout_seconds = 1;
    let slow = client
        .create_task(slow)
        .await
        .expect("created")
        .into_inner();
    assert_eq!(slow.timeout_seconds, 1);
    let failed = wait_for_status(&client, &slow.id, pb::TaskStatus::Failed).await;
    assert!(failed.error.contains("timed out"), "{}", failed.error);
    eventually("the timed-out run to stop", || async {
        (server.stats().await.running == 0).then_some(())
    })
    .await;
}

async fn a_stubborn_task_over_its_timeout_is_aborted_too() {
    let server = TestServer::with_one_slot().await;
    let mut client = server.client().await;
    let mut stubborn = crate::support::request("stubborn", "stubborn", None);
    stubborn.timeout_seconds = 1;
    let stubborn = client
        .create_task(stubborn)
        .await
        .expect("created")
        .into_inner();
    let next = create(&mut client, "next", "echo", None).await;
    let failed = wait_for_status(&client, &stubborn.id, pb::TaskStatus::Failed).await;
    assert!(failed.error.contains("timed out"), "{}", failed.error);
    wait_for_status(&client, &next.id, pb::TaskStatus::Completed).await;
}

contract_tests!(
    ids_that_are_not_uuids_are_invalid_and_unknown_ones_not_found,
    get_returns_what_create_returned_until_it_changes,
    cancelling_a_pending_task_cancels_it_at_once_and_it_never_runs,
    cancelling_a_running_task_stops_its_processor_and_frees_the_slot,
    a_processor_that_ignores_cancel_is_aborted_and_its_slot_freed,
    cancelling_a_finished_task_is_a_failed_precondition,
    a_task_over_its_timeout_fails_saying_it_timed_out,
    a_stubborn_task_over_its_timeout_is_aborted_too,
);
