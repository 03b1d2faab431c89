//! Retention: a finished task is forgotten (`NotFound`, its `request_id`
//! free again) once `retention` has passed since it finished — checked by
//! the manager's housekeeping, once a second, so within a second after —
//! and never before; beyond `max_finished_tasks`, only the newest finished
//! tasks are kept. Unfinished tasks are never forgotten.

use std::time::Duration;

use serde_json::json;

use super::{HELD, Harness, config, ms, secs, task};
use crate::{
    manager::{ManagerConfig, ManagerError},
    task::{TaskId, TaskStatus},
};

/// How often the manager looks for expired tasks: the most a task may
/// outlive its retention.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);

fn retaining_for(retention: Duration) -> ManagerConfig {
    ManagerConfig {
        retention,
        ..config(2, 10)
    }
}

async fn is_forgotten(harness: &Harness, id: TaskId) -> bool {
    match harness.manager.get_task(id).await {
        Ok(_) => false,
        Err(ManagerError::NotFound(missing)) if missing == id => true,
        Err(other) => panic!("getting {id}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_finished_task_is_forgotten_once_retention_has_passed_since_it_finished_and_not_before() {
    const RETENTION: Duration = Duration::from_secs(5);
    let harness = Harness::new(retaining_for(RETENTION));
    let id = harness.create_started(HELD, "kept a while").await;
    // Off the housekeeping beat, so the task outlives its retention a bit.
    harness.sleep_until(ms(300)).await;
    harness.script.finish(id, json!("done"));
    harness.until_status(id, TaskStatus::Completed).await;
    let finished_at = harness.now();
    assert_eq!(finished_at, ms(300));

    harness.sleep_until(finished_at + RETENTION - ms(1)).await;
    assert!(!is_forgotten(&harness, id).await, "1 ms before retention");
    assert_eq!(harness.stats().await.finished, 1);
    assert_eq!(harness.listed(TaskStatus::Completed).await, vec![id]);

    harness
        .sleep_until(finished_at + RETENTION + HOUSEKEEPING_PERIOD)
        .await;
    assert!(is_forgotten(&harness, id).await, "after retention");
    assert!(harness.listed(TaskStatus::Completed).await.is_empty());
    let stats = harness.stats().await;
    assert_eq!((stats.tasks, stats.finished), (0, 0));
    assert!(matches!(
        harness.manager.watch_task(id).await,
        Err(ManagerError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn retention_counts_from_when_a_task_finished_not_from_when_it_was_created() {
    const RETENTION: Duration = Duration::from_secs(5);
    let harness = Harness::new(retaining_for(RETENTION));
    let id = harness.create_started(HELD, "long run").await;
    harness.sleep_until(secs(10)).await;
    assert!(!is_forgotten(&harness, id).await, "a running task stays");
    harness.script.finish(id, json!(null));
    harness.until_status(id, TaskStatus::Completed).await;

    harness.sleep_until(secs(10) + RETENTION - ms(1)).await;
    assert!(!is_forgotten(&harness, id).await);
    harness
        .sleep_until(secs(10) + RETENTION + HOUSEKEEPING_PERIOD)
        .await;
    assert!(is_forgotten(&harness, id).await);
}

#[tokio::test(start_paused = true)]
async fn tasks_are_forgotten_one_by_one_in_the_order_they_finished() {
    const RETENTION: Duration = Duration::from_secs(5);
    let harness = Harness::new(retaining_for(RETENTION));
    let early = harness.create_started(HELD, "finishes at 1 s").await;
    let late = harness.create_started(HELD, "finishes at 3 s").await;
    harness.sleep_until(secs(1)).await;
    harness.script.finish(early, json!(null));
    harness.sleep_until(secs(3)).await;
    harness.script.finish(late, json!(null));
    harness.until_status(late, TaskStatus::Completed).await;

    harness
        .sleep_until(secs(1) + RETENTION + HOUSEKEEPING_PERIOD)
        .await;
    assert!(is_forgotten(&harness, early).await);
    assert!(!is_forgotten(&harness, late).await, "finished 2 s later");
    harness
        .sleep_until(secs(3) + RETENTION + HOUSEKEEPING_PERIOD)
        .await;
    assert!(is_forgotten(&harness, late).await);
}

#[tokio::test(start_paused = true)]
async fn a_request_id_answers_with_its_task_until_the_task_is_forgotten_and_is_free_again_after() {
    const RETENTION: Duration = Duration::from_secs(5);
    let harness = Harness::new(retaining_for(RETENTION));
    let with_request_id = |kind: &str| crate::task::NewTask {
        request_id: Some("once".into()),
        ..task(kind, "idempotent")
    };
    let first = harness.create(with_request_id("echo")).await;
    harness.until_status(first.id, TaskStatus::Completed).await;

    harness.sleep_until(RETENTION - ms(1)).await;
    let repeated = harness.create(with_request_id("echo")).await;
    assert_eq!(repeated.id, first.id, "the same task answers");
    assert_eq!(repeated.status, TaskStatus::Completed);
    let conflict = harness.manager.create_task(with_request_id("fail")).await;
    assert!(
        matches!(conflict, Err(ManagerError::RequestIdConflict { .. })),
        "{conflict:?}"
    );

    harness.sleep_until(RETENTION + HOUSEKEEPING_PERIOD).await;
    assert!(is_forgotten(&harness, first.id).await);
    let anew = harness.create(with_request_id("fail")).await;
    assert_ne!(anew.id, first.id, "a new task with the freed request_id");
    assert_eq!(harness.stats().await.request_ids, 1);
}

#[tokio::test(start_paused = true)]
async fn beyond_max_finished_tasks_only_the_newest_finished_tasks_are_kept() {
    let harness = Harness::new(ManagerConfig {
        max_finished_tasks: 3,
        ..config(2, 10)
    });
    let running = harness.create_started(HELD, "still running").await;
    let mut finished = Vec::new();
    for n in 0..5 {
        let id = harness.create(task("echo", &format!("echo {n}"))).await.id;
        harness.until_status(id, TaskStatus::Completed).await;
        finished.push(id);
        harness.sleep_until(secs(n + 1)).await;
    }

    for id in &finished[..2] {
        assert!(is_forgotten(&harness, *id).await, "one of the oldest");
    }
    assert_eq!(harness.listed(TaskStatus::Completed).await, finished[2..]);
    assert_eq!(harness.status(running).await, TaskStatus::Running);
    let stats = harness.stats().await;
    assert_eq!((stats.tasks, stats.finished), (4, 3));
}

#[tokio::test(start_paused = true)]
async fn unfinished_tasks_are_never_forgotten_however_long_they_run_or_wait() {
    let harness = Harness::new(ManagerConfig {
        retention: secs(1),
        max_finished_tasks: 1,
        ..config(1, 10)
    });
    let running = harness.create_started(HELD, "running for an hour").await;
    let waiting = harness.create(task(HELD, "waiting for an hour")).await.id;
    for n in 0..3 {
        let id = harness.create(task("echo", &format!("echo {n}"))).await.id;
        harness.manager.cancel_task(id).await.expect("cancellable");
    }

    harness.sleep_until(secs(3600)).await;
    assert_eq!(harness.status(running).await, TaskStatus::Running);
    assert_eq!(harness.status(waiting).await, TaskStatus::Pending);
    let stats = harness.stats().await;
    assert_eq!((stats.tasks, stats.finished), (2, 0));
}
