//! The steps of a shutdown on the memory store: stop accepting (creates
//! are `ShuttingDown`, everything else carries on), stop starting (running
//! tasks finish, waiting ones stay pending), cancel running (every running
//! task cancelled with the reason given), and wait until idle (done when
//! the last run has ended, a stubborn one `FORCED_STOP_AFTER` later).

use serde_json::json;

use super::{End, HELD, Harness, STUBBORN, config, secs, task, within};
use crate::{
    manager::{FORCED_STOP_AFTER, ManagerError},
    task::TaskStatus,
};

#[tokio::test(start_paused = true)]
async fn stop_accepting_refuses_creates_with_shutting_down_while_running_and_waiting_tasks_carry_on()
 {
    let harness = Harness::new(config(1, 10));
    let running = harness.create_started(HELD, "running").await;
    let waiting = harness.create(task(HELD, "waiting")).await.id;

    harness.manager.stop_accepting().await.expect("alive");
    let refused = harness.manager.create_task(task("echo", "too late")).await;
    assert!(
        matches!(refused, Err(ManagerError::ShuttingDown)),
        "{refused:?}"
    );

    harness.sleep_until(secs(1)).await;
    harness.script.finish(running, json!(null));
    assert_eq!(harness.script.wait_started(waiting).await, secs(1));
    harness.script.finish(waiting, json!(null));
    harness.until_status(waiting, TaskStatus::Completed).await;
    assert_eq!(harness.stats().await.tasks, 2);
}

#[tokio::test(start_paused = true)]
async fn stop_starting_lets_running_tasks_finish_and_leaves_waiting_ones_pending() {
    let harness = Harness::new(config(1, 10));
    let running = harness.create_started(HELD, "running").await;
    let waiting = harness.create(task(HELD, "waiting")).await.id;

    harness.manager.stop_starting().await.expect("alive");
    harness.sleep_until(secs(1)).await;
    harness.script.finish(running, json!(null));
    harness.until_status(running, TaskStatus::Completed).await;

    harness.sleep_until(secs(60)).await;
    assert_eq!(harness.status(waiting).await, TaskStatus::Pending);
    assert_eq!(harness.script.run(waiting).map(|run| run.started_at), None);
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.pending), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn cancel_running_cancels_every_running_task_with_its_reason_and_starts_no_more() {
    let harness = Harness::new(config(2, 10));
    let first = harness.create_started(HELD, "first").await;
    let second = harness.create_started(HELD, "second").await;
    let waiting = harness.create(task(HELD, "waiting")).await.id;

    harness.sleep_until(secs(2)).await;
    let cancelled = harness
        .manager
        .cancel_running("the server is shutting down")
        .await
        .expect("alive");
    assert_eq!(cancelled, 2);
    for id in [first, second] {
        let task = harness.get(id).await;
        assert_eq!(task.status, TaskStatus::Cancelled);
        assert_eq!(task.error, "the server is shutting down");
        assert_eq!(
            harness.script.wait_ended(id).await,
            (secs(2), End::Returned)
        );
    }

    harness.sleep_until(secs(60)).await;
    assert_eq!(harness.status(waiting).await, TaskStatus::Pending);
    assert_eq!(harness.script.start_order(), vec![first, second]);
}

#[tokio::test(start_paused = true)]
async fn wait_until_idle_completes_the_moment_the_last_run_ends_a_stubborn_one_when_it_is_aborted()
{
    let harness = Harness::new(config(2, 10));
    within(
        "idle with nothing running",
        harness.manager.wait_until_idle(),
    )
    .await
    .expect("alive");
    assert_eq!(harness.now(), secs(0), "at once");

    let held = harness.create_started(HELD, "stops when told").await;
    let stubborn = harness.create_started(STUBBORN, "does not").await;
    harness.sleep_until(secs(2)).await;
    assert_eq!(
        harness
            .manager
            .cancel_running("shutdown")
            .await
            .expect("alive"),
        2
    );
    within(
        "idle after cancel_running",
        harness.manager.wait_until_idle(),
    )
    .await
    .expect("alive");
    assert_eq!(harness.now(), secs(2) + FORCED_STOP_AFTER);
    assert_eq!(
        harness.script.wait_ended(held).await,
        (secs(2), End::Returned)
    );
    assert_eq!(
        harness.script.wait_ended(stubborn).await,
        (secs(2) + FORCED_STOP_AFTER, End::Aborted)
    );
    assert_eq!(harness.stats().await.running, 0);
}
