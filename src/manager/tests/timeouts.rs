//! Timeouts: a run over its task's `timeout_seconds` fails the task at
//! exactly the timeout, with the timeout error; a run that ignores the stop
//! is aborted `FORCED_STOP_AFTER` later, and only then frees its slot. A
//! run that ends in time, or a task without a timeout, is never touched.

use serde_json::json;

use super::{
    End, HELD, Harness, STOPPED_ON_CANCEL, STUBBORN, config, ms, secs, task, task_with_timeout,
};
use crate::{manager::FORCED_STOP_AFTER, task::TaskStatus};

#[tokio::test(start_paused = true)]
async fn a_task_that_runs_past_its_timeout_fails_at_exactly_the_timeout_with_the_timeout_error() {
    let harness = Harness::new(config(1, 10));
    let id = harness.create(task_with_timeout(HELD, "slow", 2)).await.id;
    assert_eq!(harness.script.wait_started(id).await, secs(0));

    harness.sleep_until(ms(1999)).await;
    assert_eq!(harness.status(id).await, TaskStatus::Running, "1 ms early");
    assert_eq!(harness.script.run(id).expect("started").cancelled_at, None);

    let failed = harness.until_status(id, TaskStatus::Failed).await;
    assert_eq!(harness.now(), secs(2), "it fails at the timeout, not later");
    assert_eq!(failed.error, "timed out after 2s");
    assert_eq!(failed.result, None);
    let run = harness.script.run(id).expect("started");
    assert_eq!(run.cancelled_at, Some(secs(2)), "the run is told to stop");
    assert_eq!(
        harness.script.wait_ended(id).await,
        (secs(2), End::Returned),
        "a run that stops when told ends at once"
    );
    // What the stopped run returned does not replace the timeout error.
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.finished), (0, 1));
    let got = harness.get(id).await;
    assert_eq!(got.error, "timed out after 2s");
    assert_ne!(got.error, STOPPED_ON_CANCEL);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_finishes_a_millisecond_before_its_timeout_completes_and_is_never_stopped() {
    let harness = Harness::new(config(1, 10));
    let id = harness
        .create(task_with_timeout(HELD, "just in time", 2))
        .await
        .id;
    harness.script.wait_started(id).await;

    harness.sleep_until(ms(1999)).await;
    harness.script.finish(id, json!("made it"));
    let completed = harness.until_status(id, TaskStatus::Completed).await;
    assert_eq!(harness.now(), ms(1999));
    assert_eq!(completed.result.as_deref(), Some(&json!("made it")));

    // Well past the timeout, nothing about it has changed.
    harness.sleep_until(secs(10)).await;
    let later = harness.get(id).await;
    assert_eq!(later.status, TaskStatus::Completed);
    assert_eq!(later.error, "");
    assert_eq!(later.revision, completed.revision);
    assert_eq!(harness.script.run(id).expect("ran").cancelled_at, None);
}

#[tokio::test(start_paused = true)]
async fn a_task_without_a_timeout_runs_for_an_hour_untouched_until_it_returns() {
    let harness = Harness::new(config(1, 10));
    let id = harness.create_started(HELD, "patient").await;

    harness.sleep_until(secs(3600)).await;
    assert_eq!(harness.status(id).await, TaskStatus::Running);
    assert_eq!(harness.script.run(id).expect("ran").cancelled_at, None);

    harness.script.finish(id, json!(1));
    let completed = harness.until_status(id, TaskStatus::Completed).await;
    assert_eq!(harness.now(), secs(3600));
    assert_eq!(completed.error, "");
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ignores_its_timeout_fails_at_the_timeout_and_its_run_is_aborted_one_second_later()
 {
    let harness = Harness::new(config(1, 10));
    let stubborn = harness
        .create(task_with_timeout(STUBBORN, "stubborn", 2))
        .await
        .id;
    harness.script.wait_started(stubborn).await;
    let next = harness.create(task(HELD, "next")).await.id;

    let failed = harness.until_status(stubborn, TaskStatus::Failed).await;
    assert_eq!(harness.now(), secs(2));
    assert_eq!(failed.error, "timed out after 2s");
    let run = harness.script.run(stubborn).expect("started");
    assert_eq!(run.cancelled_at, Some(secs(2)));

    // It failed, but its processor still runs and holds the only slot.
    harness
        .sleep_until(secs(2) + FORCED_STOP_AFTER - ms(1))
        .await;
    assert_eq!(harness.script.live(), vec![stubborn]);
    assert_eq!(harness.stats().await.running, 1);
    assert_eq!(harness.status(next).await, TaskStatus::Pending);

    assert_eq!(
        harness.script.wait_ended(stubborn).await,
        (secs(2) + FORCED_STOP_AFTER, End::Aborted)
    );
    assert_eq!(
        harness.script.wait_started(next).await,
        secs(2) + FORCED_STOP_AFTER,
        "the freed slot goes to the next task at once"
    );
    let still = harness.get(stubborn).await;
    assert_eq!(
        (still.status, still.error.as_str()),
        (TaskStatus::Failed, "timed out after 2s")
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeout_counts_from_when_the_task_started_not_from_when_it_was_created() {
    let harness = Harness::new(config(1, 10));
    let first = harness.create_started(HELD, "first").await;
    let timed = harness
        .create(task_with_timeout(HELD, "waits, then times out", 2))
        .await
        .id;

    harness.sleep_until(secs(5)).await;
    assert_eq!(harness.status(timed).await, TaskStatus::Pending);
    harness.script.finish(first, json!(null));
    assert_eq!(harness.script.wait_started(timed).await, secs(5));

    let failed = harness.until_status(timed, TaskStatus::Failed).await;
    assert_eq!(
        harness.now(),
        secs(7),
        "2 s after it started, not after create"
    );
    assert_eq!(failed.error, "timed out after 2s");
}
