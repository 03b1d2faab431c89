//! One run, start to end: what its processor returns becomes the task's
//! result or error; a panic fails the task with the panic's message and
//! frees the slot like any other end; progress reaches every watcher, in
//! order, and `get`.

use serde_json::json;

use super::{End, HELD, Harness, Step, config, secs, task, task_with_data};
use crate::{processor::ProcessorError, task::TaskStatus};

#[tokio::test(start_paused = true)]
async fn what_a_processor_returns_becomes_the_result_and_the_task_passes_through_each_status_once()
{
    let harness = Harness::new(config(1, 10));
    let before = harness.create_started(HELD, "before").await;
    let created = harness.create(task(HELD, "works")).await;
    assert_eq!(created.status, TaskStatus::Pending);
    let mut watch = harness
        .manager
        .watch_task(created.id)
        .await
        .expect("watchable");

    harness.sleep_until(secs(1)).await;
    harness.script.finish(before, json!(null));
    assert_eq!(harness.script.wait_started(created.id).await, secs(1));
    harness.sleep_until(secs(4)).await;
    harness
        .script
        .finish(created.id, json!({"answer": 42, "text": "é"}));
    let mut statuses = Vec::new();
    while let Some(state) = super::within("the watch ending", watch.next()).await {
        statuses.push(state.status);
    }
    assert_eq!(
        statuses,
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed
        ]
    );
    let done = harness.get(created.id).await;
    assert_eq!(
        done.result.as_deref(),
        Some(&json!({"answer": 42, "text": "é"}))
    );
    assert_eq!((done.error.as_str(), done.attempt), ("", 1));
    assert_eq!(done.node, "paused");
    assert_eq!(
        harness.script.wait_ended(created.id).await,
        (secs(4), End::Returned)
    );
}

#[tokio::test(start_paused = true)]
async fn a_processor_error_fails_the_task_with_its_message() {
    let harness = Harness::new(config(1, 10));
    let id = harness.create_started(HELD, "fails").await;
    harness.script.tell(
        id,
        Step::Return(Err(ProcessorError::new("the input is wrong"))),
    );
    let failed = harness.until_status(id, TaskStatus::Failed).await;
    assert_eq!(failed.error, "the input is wrong");
    assert_eq!(failed.result, None);

    let builtin = harness
        .create(task_with_data(
            "fail",
            "builtin",
            json!({"message": "as asked"}),
        ))
        .await
        .id;
    assert_eq!(
        harness
            .until_status(builtin, TaskStatus::Failed)
            .await
            .error,
        "as asked"
    );
}

#[tokio::test(start_paused = true)]
async fn a_processor_that_panics_fails_its_task_with_the_panic_message_and_frees_its_slot_at_once()
{
    let harness = Harness::new(config(1, 10));
    let panicking = harness.create_started(HELD, "panics").await;
    let next = harness.create(task(HELD, "next")).await.id;

    harness.sleep_until(secs(2)).await;
    harness
        .script
        .tell(panicking, Step::Panic("the disk is on fire"));
    let failed = harness.until_status(panicking, TaskStatus::Failed).await;
    assert_eq!(harness.now(), secs(2));
    assert_eq!(failed.error, "processor panicked: the disk is on fire");
    assert_eq!(
        harness.script.wait_ended(panicking).await,
        (secs(2), End::Panicked)
    );
    assert_eq!(harness.script.wait_started(next).await, secs(2));

    // The manager carries on as before.
    harness.script.finish(next, json!("fine"));
    harness.until_status(next, TaskStatus::Completed).await;
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.finished), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn progress_a_processor_reports_reaches_every_watcher_in_order_and_get() {
    let harness = Harness::new(config(1, 10));
    let id = harness.create_started(HELD, "reports").await;
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut watch = harness.manager.watch_task(id).await.expect("watchable");
        let first = watch.next().await.expect("the current state first");
        assert_eq!(
            (first.status, &first.progress),
            (TaskStatus::Running, &None)
        );
        watchers.push(watch);
    }
    assert_eq!(harness.stats().await.watchers, 2);

    for (second, percent, message) in [(1, 25, "a quarter"), (2, 50, "half"), (3, 100, "all")] {
        harness.sleep_until(secs(second)).await;
        harness.script.tell(id, Step::Progress(percent, message));
        for watch in &mut watchers {
            let seen = super::within("a progress report", watch.next())
                .await
                .expect("the task is still running");
            assert_eq!(harness.now(), secs(second), "heard at once");
            assert_eq!(seen.status, TaskStatus::Running);
            let progress = seen.progress.as_ref().expect("progress");
            assert_eq!(
                (progress.percent, progress.message.as_str()),
                (percent, message)
            );
        }
        let got = harness.get(id).await;
        assert_eq!(
            got.progress.as_ref().map(|progress| progress.percent),
            Some(percent)
        );
    }

    harness.script.finish(id, json!(null));
    for watch in &mut watchers {
        let last = super::within("the end", watch.next())
            .await
            .expect("an end");
        assert_eq!(last.status, TaskStatus::Completed);
        assert!(watch.next().await.is_none(), "nothing after the end");
    }
}
