//! The scheduling rules: waiting tasks start in creation order (FIFO), as
//! soon as a slot is free, and never more than `max_concurrent` at once —
//! runs told to stop count until they end. A create beyond
//! `queue_capacity` waiting tasks is `QueueFull`; running tasks do not
//! count against it.

use std::time::Duration;

use serde_json::json;

use super::{HELD, Harness, STUBBORN, config, ms, secs, task, task_with_data};
use crate::{
    manager::ManagerError,
    task::{TaskId, TaskStatus},
};

#[tokio::test(start_paused = true)]
async fn with_one_slot_tasks_start_in_creation_order_each_the_moment_the_one_before_ends() {
    let harness = Harness::new(config(1, 10));
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(harness.create(task(HELD, &format!("task {n}"))).await.id);
    }
    for (n, id) in (0u64..).zip(&ids) {
        assert_eq!(harness.script.wait_started(*id).await, secs(n), "task {n}");
        harness.sleep_until(secs(n + 1)).await;
        assert_eq!(harness.script.live(), vec![*id], "one at a time");
        harness.script.finish(*id, json!(n));
    }
    harness.until_status(ids[4], TaskStatus::Completed).await;
    assert_eq!(harness.script.start_order(), ids);
}

#[tokio::test(start_paused = true)]
async fn with_three_slots_waiting_tasks_start_in_creation_order_whichever_slot_frees_up() {
    let harness = Harness::new(config(3, 20));
    let mut ids = Vec::new();
    for n in 0..9 {
        ids.push(harness.create(task(HELD, &format!("task {n}"))).await.id);
    }
    for id in &ids[..3] {
        assert_eq!(harness.script.wait_started(*id).await, secs(0));
    }
    // Free the slot of the newest run each second: the slot it frees goes
    // to the oldest waiting task all the same.
    for (second, waiting) in (1u64..).zip(&ids[3..]) {
        harness.sleep_until(secs(second)).await;
        let live = harness.script.live();
        assert_eq!(live.len(), 3);
        harness.script.finish(live[2], json!(null));
        assert_eq!(harness.script.wait_started(*waiting).await, secs(second));
    }
    assert_eq!(harness.script.start_order(), ids);
}

/// When each of `durations` (in creation order) starts and ends if they
/// run first come, first served on `slots` slots from time zero.
fn fifo_schedule(durations: &[Duration], slots: usize) -> Vec<(Duration, Duration)> {
    let mut free_at = vec![Duration::ZERO; slots];
    durations
        .iter()
        .map(|duration| {
            let earliest = free_at.iter_mut().min().expect("at least one slot");
            let start = *earliest;
            *earliest = start + *duration;
            (start, start + *duration)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_100_ms_the_running_tasks_are_exactly_those_a_fifo_schedule_on_max_concurrent_slots_predicts()
 {
    const SLOTS: usize = 3;
    let harness = Harness::new(config(SLOTS, 100));
    let tenths: [u64; 14] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7];
    let durations: Vec<Duration> = tenths.iter().map(|tenths| ms(100 * tenths)).collect();
    let mut ids: Vec<TaskId> = Vec::new();
    for (n, tenths) in tenths.iter().enumerate() {
        let seconds = *tenths as f64 / 10.0;
        let new_task = task_with_data("sleep", &format!("task {n}"), json!({"seconds": seconds}));
        ids.push(harness.create(new_task).await.id);
    }
    let schedule = fifo_schedule(&durations, SLOTS);
    let makespan = schedule.iter().map(|(_, end)| *end).max().expect("tasks");

    // Halfway between the moments things happen (multiples of 100 ms).
    let mut at = ms(50);
    while at < makespan + ms(100) {
        harness.sleep_until(at).await;
        let mut expected: Vec<TaskId> = ids
            .iter()
            .zip(&schedule)
            .filter(|(_, (start, end))| *start <= at && at < *end)
            .map(|(id, _)| *id)
            .collect();
        let mut running = harness.listed(TaskStatus::Running).await;
        expected.sort();
        running.sort();
        assert_eq!(running, expected, "at {at:?}");
        let stats = harness.stats().await;
        assert!(stats.running <= SLOTS, "at {at:?}: {stats:?}");
        at += ms(100);
    }
    assert_eq!(harness.listed(TaskStatus::Completed).await.len(), ids.len());
}

#[tokio::test(start_paused = true)]
async fn the_number_running_never_exceeds_max_concurrent_at_any_step_and_waiting_tasks_fill_every_free_slot()
 {
    const SLOTS: usize = 3;
    let harness = Harness::new(config(SLOTS, 100));
    let mut ids = Vec::new();
    for n in 0..16 {
        let kind = if n % 4 == 1 { STUBBORN } else { HELD };
        ids.push(harness.create(task(kind, &format!("task {n}"))).await.id);
    }
    let stubborn: Vec<TaskId> = ids.iter().skip(1).step_by(4).copied().collect();

    let mut step = 0u64;
    loop {
        // Check halfway between steps, when nothing is happening.
        harness.sleep_until(ms(100 * step + 50)).await;
        let stats = harness.stats().await;
        let live = harness.script.live();
        let listed = harness.listed(TaskStatus::Running).await;
        assert!(stats.running <= SLOTS, "step {step}: {stats:?}");
        assert!(
            live.len() <= SLOTS,
            "step {step}: {} processors",
            live.len()
        );
        assert!(
            listed.len() <= SLOTS,
            "step {step}: {} listed",
            listed.len()
        );
        assert_eq!(stats.running, live.len(), "step {step}: slots are runs");
        if stats.pending > 0 {
            assert_eq!(stats.running, SLOTS, "step {step}: a slot left idle");
        }
        if stats.pending == 0 && live.is_empty() {
            break;
        }
        assert!(step < 1000, "the tasks never all finished");

        step += 1;
        harness.sleep_until(ms(100 * step)).await;
        // Finish or cancel one run, picked all over the place; a stubborn
        // run, once cancelled, holds its slot until it is aborted.
        let id = live[(step as usize * 5) % live.len()];
        let told_to_stop = harness.script.run(id).and_then(|run| run.cancelled_at);
        if told_to_stop.is_some() {
            continue;
        }
        if stubborn.contains(&id) || step.is_multiple_of(3) {
            harness.manager.cancel_task(id).await.expect("cancellable");
        } else {
            harness.script.finish(id, json!(step));
        }
    }
    assert_eq!(harness.script.most_live(), SLOTS, "the limit was reached");
    assert_eq!(harness.script.start_order(), ids, "and FIFO held");
    for id in ids {
        assert!(harness.status(id).await.is_terminal());
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_beyond_queue_capacity_waiting_tasks_is_queue_full_and_running_tasks_do_not_count()
{
    let harness = Harness::new(config(2, 3));
    let first = harness.create_started(HELD, "running 1").await;
    harness.create_started(HELD, "running 2").await;
    let mut waiting = Vec::new();
    for n in 0..3 {
        waiting.push(harness.create(task(HELD, &format!("waiting {n}"))).await.id);
    }
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.pending, stats.tasks), (2, 3, 5));

    let refused = harness
        .manager
        .create_task(task(HELD, "one too many"))
        .await;
    assert!(
        matches!(
            refused,
            Err(ManagerError::QueueFull { capacity: 3, retry_after }) if retry_after == secs(1)
        ),
        "{refused:?}"
    );
    assert_eq!(harness.stats().await.tasks, 5, "nothing was added");

    // A cancelled waiting task makes room.
    harness
        .manager
        .cancel_task(waiting[2])
        .await
        .expect("cancellable");
    harness.create(task(HELD, "in its place")).await;
    let again = harness.manager.create_task(task(HELD, "full again")).await;
    assert!(
        matches!(again, Err(ManagerError::QueueFull { .. })),
        "{again:?}"
    );

    // So does a waiting task that starts when a slot frees up.
    harness.script.finish(first, json!(null));
    harness.script.wait_started(waiting[0]).await;
    assert_eq!(harness.stats().await.pending, 2);
    harness.create(task(HELD, "after a start")).await;
    assert_eq!(harness.stats().await.pending, 3);
}
