//! Cancel: a pending task is cancelled at once and never runs; a running
//! one is cancelled at once and its run told to stop, and its slot goes to
//! the next task as soon as the run ends — for a processor that ignores the
//! stop, `FORCED_STOP_AFTER` later, when it is aborted. What a cancelled
//! run returns late is discarded. Finished tasks cannot be cancelled.

use serde_json::json;

use super::{End, HELD, Harness, STUBBORN, config, ms, secs, task};
use crate::{
    manager::{FORCED_STOP_AFTER, ManagerError},
    task::{TaskId, TaskStatus},
};

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_task_cancels_it_at_once_and_the_next_task_starts_at_that_moment() {
    let harness = Harness::new(config(1, 10));
    let running = harness.create_started(HELD, "running").await;
    let next = harness.create(task(HELD, "next")).await.id;

    harness.sleep_until(secs(5)).await;
    let cancelled = harness
        .manager
        .cancel_task(running)
        .await
        .expect("cancellable");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.error, "cancelled by client request");

    assert_eq!(
        harness.script.wait_ended(running).await,
        (secs(5), End::Returned)
    );
    let run = harness.script.run(running).expect("ran");
    assert_eq!(run.cancelled_at, Some(secs(5)));
    assert_eq!(harness.script.wait_started(next).await, secs(5));
    assert_eq!(harness.get(running).await.status, TaskStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_processor_that_ignores_cancel_is_aborted_exactly_one_second_after_the_cancel_and_its_slot_goes_to_the_next_task()
 {
    let harness = Harness::new(config(1, 10));
    let stubborn = harness.create_started(STUBBORN, "stubborn").await;
    let next = harness.create(task(HELD, "next")).await.id;

    harness.sleep_until(secs(5)).await;
    let cancelled = harness
        .manager
        .cancel_task(stubborn)
        .await
        .expect("cancellable");
    assert_eq!(
        cancelled.status,
        TaskStatus::Cancelled,
        "the task is cancelled at once, whatever its processor does"
    );

    // Told to stop, it carries on, and keeps the only slot.
    harness
        .sleep_until(secs(5) + FORCED_STOP_AFTER - ms(1))
        .await;
    assert_eq!(
        harness.script.run(stubborn).expect("ran").cancelled_at,
        Some(secs(5))
    );
    assert_eq!(harness.script.live(), vec![stubborn]);
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.pending), (1, 1));
    assert_eq!(harness.status(next).await, TaskStatus::Pending);

    assert_eq!(
        harness.script.wait_ended(stubborn).await,
        (secs(5) + FORCED_STOP_AFTER, End::Aborted)
    );
    assert_eq!(harness.script.wait_started(next).await, secs(6));
    assert_eq!(FORCED_STOP_AFTER, secs(1), "the contract's forced stop");
    assert_eq!(harness.status(stubborn).await, TaskStatus::Cancelled);
    assert_eq!(harness.script.most_live(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_pending_task_cancels_it_at_once_and_it_never_runs() {
    let harness = Harness::new(config(1, 10));
    let running = harness.create_started(HELD, "running").await;
    let waiting = harness.create(task(HELD, "waiting")).await.id;
    let after = harness.create(task(HELD, "after")).await.id;
    assert_eq!(harness.stats().await.pending, 2);

    harness.sleep_until(secs(1)).await;
    let cancelled = harness
        .manager
        .cancel_task(waiting)
        .await
        .expect("cancellable");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.started_at, None);
    assert_eq!(harness.stats().await.pending, 1);

    harness.sleep_until(secs(2)).await;
    harness.script.finish(running, json!(null));
    assert_eq!(
        harness.script.wait_started(after).await,
        secs(2),
        "the cancelled task's turn is skipped"
    );
    assert_eq!(harness.script.start_order(), vec![running, after]);
    assert_eq!(harness.script.run(waiting).map(|run| run.started_at), None);
    assert_eq!(harness.status(waiting).await, TaskStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn the_late_result_of_a_cancelled_run_is_discarded_and_its_slot_freed_when_it_returns() {
    let harness = Harness::new(config(1, 10));
    let stubborn = harness.create_started(STUBBORN, "stubborn").await;
    let next = harness.create(task(HELD, "next")).await.id;

    harness.sleep_until(secs(1)).await;
    let cancelled = harness
        .manager
        .cancel_task(stubborn)
        .await
        .expect("cancellable");

    // Within its second of grace the run returns a result after all.
    harness.sleep_until(ms(1500)).await;
    harness.script.finish(stubborn, json!("too late"));
    assert_eq!(
        harness.script.wait_ended(stubborn).await,
        (ms(1500), End::Returned)
    );
    assert_eq!(harness.script.wait_started(next).await, ms(1500));

    let task = harness.get(stubborn).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.result, None, "the late result is not kept");
    assert_eq!(task.error, "cancelled by client request");
    assert_eq!(task.revision, cancelled.revision, "nothing changed since");
    let stats = harness.stats().await;
    assert_eq!(stats.finished, 1);
    assert_eq!(stats.held_bytes, 0, "nor held against the memory budget");
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_finished_task_is_refused_and_cancelling_a_cancelled_one_returns_it_unchanged()
{
    let harness = Harness::new(config(2, 10));
    let completed = harness.create(task("echo", "completed")).await.id;
    let failed = harness.create(task("fail", "failed")).await.id;
    harness.until_status(completed, TaskStatus::Completed).await;
    harness.until_status(failed, TaskStatus::Failed).await;
    for (id, status) in [
        (completed, TaskStatus::Completed),
        (failed, TaskStatus::Failed),
    ] {
        let refused = harness.manager.cancel_task(id).await;
        assert!(
            matches!(
                refused,
                Err(ManagerError::NotCancellable { id: refused_id, status: refused_status })
                    if refused_id == id && refused_status == status
            ),
            "{refused:?}"
        );
        assert_eq!(harness.status(id).await, status, "left as it was");
    }

    let cancelled_task = harness.create(task(HELD, "cancelled")).await.id;
    let first = harness
        .manager
        .cancel_task(cancelled_task)
        .await
        .expect("cancellable");
    harness.sleep_until(secs(3)).await;
    let again = harness
        .manager
        .cancel_task(cancelled_task)
        .await
        .expect("cancelling a cancelled task is not an error");
    assert_eq!(again, first, "returned unchanged");
}

#[tokio::test(start_paused = true)]
async fn cancelling_or_getting_a_task_nobody_created_is_not_found() {
    let harness = Harness::new(config(1, 10));
    let unknown = TaskId::generate();
    assert!(matches!(
        harness.manager.cancel_task(unknown).await,
        Err(ManagerError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        harness.manager.get_task(unknown).await,
        Err(ManagerError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        harness.manager.watch_task(unknown).await,
        Err(ManagerError::NotFound(id)) if id == unknown
    ));
}
