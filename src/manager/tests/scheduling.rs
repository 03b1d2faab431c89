//! The v1.1 scheduling rules in paused time: failed runs retried after a
//! back-off of 0.8 to 1.0 times `min(initial × multiplier^(n−1), max)`, up
//! to `max_attempts` runs; a permanent failure and a run that times out;
//! `run_after`, which holds no slot; priority, then FIFO, with one slot;
//! queue timeouts, counted from when a task became ready (its creation, its
//! `run_after`, the end of its back-off); and the cancel of a retrying task.
//!
//! The actor stamps tasks with the real clock (`SystemTime`) and arms its
//! timers with the difference to it, while the timers run on tokio's paused
//! clock. The real time that passes between a stamp and the arming of its
//! timer (microseconds; a millisecond on a loaded machine) makes a timer
//! fire that much early on the paused clock, never late: a lower bound is
//! therefore checked less [`DRIFT`], an upper bound exactly. Every time is
//! read on the paused clock; `SystemTime` stamps are never compared.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use serde_json::{Value as JsonValue, json};
use tokio::{sync::watch, time::Instant};

use super::{HELD, Harness, config, ms, secs, task, task_with_data, within};
use crate::{
    processor::{Processor, ProcessorError, TaskContext},
    task::{NewTask, RetryPolicy, Scheduling, TaskId, TaskStatus},
};

/// The kind whose runs [`Recorder`] records.
const RECORDED: &str = "recorded";

/// How early a timer may fire on the paused clock because the real clock
/// moved on between the stamp it counts from and its arming.
const DRIFT: Duration = Duration::from_millis(2);

/// One run, as the recorder saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RecordedRun {
    task: TaskId,
    attempt: u32,
    /// Paused time since the harness's origin.
    started_at: Duration,
}

/// A processor that records every run and then, by its task's data:
/// `failures` (default 0) is how many of the first runs fail — at once,
/// with `failure N`, permanently if `permanent` is `true`, or, if `hang` is
/// `true`, only when told to stop (a timeout); later runs complete at once
/// with `{"attempts": N}`, like the built-in `flaky`. A run that fails at
/// once fails at the paused instant it started.
#[derive(Clone)]
struct Recorder {
    runs: Arc<watch::Sender<Vec<RecordedRun>>>,
    t0: Instant,
}

impl Recorder {
    fn new(t0: Instant) -> Self {
        Self {
            runs: Arc::new(watch::Sender::new(Vec::new())),
            t0,
        }
    }

    /// The runs of task `id`, in the order they started.
    fn runs_of(&self, id: TaskId) -> Vec<RecordedRun> {
        let runs = self.runs.borrow();
        runs.iter().filter(|run| run.task == id).copied().collect()
    }

    /// Every task's runs, in the order they started.
    fn start_order(&self) -> Vec<TaskId> {
        self.runs.borrow().iter().map(|run| run.task).collect()
    }

    /// Waits until task `id` has started `count` runs; returns them.
    async fn wait_runs(&self, id: TaskId, count: usize) -> Vec<RecordedRun> {
        let mut runs = self.runs.subscribe();
        within(&format!("{count} runs of {id}"), async {
            runs.wait_for(|runs| runs.iter().filter(|run| run.task == id).count() >= count)
                .await
                .expect("the recorder lives as long as the test");
        })
        .await;
        self.runs_of(id)
    }
}

#[async_trait]
impl Processor for Recorder {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let attempt = context.attempt;
        let started_at = self.t0.elapsed();
        self.runs.send_modify(|runs| {
            runs.push(RecordedRun {
                task: context.task_id,
                attempt,
                started_at,
            });
        });
        let data = context.data();
        let failures = data
            .get("failures")
            .and_then(JsonValue::as_u64)
            .unwrap_or(0);
        if u64::from(attempt) > failures {
            return Ok(json!({ "attempts": attempt }));
        }
        if data.get("hang") == Some(&JsonValue::Bool(true)) {
            context.cancellation.cancelled().await;
            return Err(ProcessorError::new("stopped"));
        }
        let error = format!("failure {attempt}");
        if data.get("permanent") == Some(&JsonValue::Bool(true)) {
            Err(ProcessorError::permanent(error))
        } else {
            Err(ProcessorError::new(error))
        }
    }
}

/// A harness whose `recorded` kind is a [`Recorder`], and that recorder.
fn harness_with_recorder(max_concurrent: usize) -> (Harness, Recorder) {
    let mut recorder = None;
    let harness = Harness::with_registry(config(max_concurrent, 100), |registry, t0| {
        let made = Recorder::new(t0);
        registry.register(RECORDED, made.clone());
        recorder = Some(made);
    });
    (harness, recorder.expect("registered"))
}

/// A `recorded` task with `data` and `scheduling`.
fn recorded(name: &str, data: JsonValue, scheduling: Scheduling) -> NewTask {
    NewTask {
        scheduling,
        ..task_with_data(RECORDED, name, data)
    }
}

/// A policy of `max_attempts` runs, waits of `initial` growing by
/// `multiplier` up to `max`.
fn policy(max_attempts: u32, initial: Duration, multiplier: f64, max: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: initial,
        max_backoff: max,
        backoff_multiplier: multiplier,
    }
}

/// A policy of `max_attempts` runs with waits of `backoff`, not growing.
fn fixed(max_attempts: u32, backoff: Duration) -> RetryPolicy {
    policy(max_attempts, backoff, 1.0, backoff)
}

fn retrying_with(retry_policy: RetryPolicy) -> Scheduling {
    Scheduling {
        retry_policy,
        ..Scheduling::default()
    }
}

/// Asserts that `gap` is the wait of a back-off of at most `full`: between
/// 0.8 and 1.0 of it (less [`DRIFT`]).
fn assert_backoff(gap: Duration, full: Duration, what: &str) {
    let shortest = full.mul_f64(0.8);
    assert!(
        gap >= shortest - DRIFT && gap <= full,
        "{what}: waited {gap:?}, not between {shortest:?} and {full:?}"
    );
}

/// Every status a watch of `id` delivers until it ends (each change once).
async fn statuses_to_the_end(harness: &Harness, id: TaskId) -> Vec<TaskStatus> {
    let mut watch = harness.manager.watch_task(id).await.expect("watchable");
    within(&format!("the watch of {id} ending"), async {
        let mut statuses: Vec<TaskStatus> = Vec::new();
        while let Some(task) = watch.next().await {
            if statuses.last() != Some(&task.status) {
                statuses.push(task.status);
            }
        }
        statuses
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn each_retry_waits_between_80_and_100_percent_of_its_backoff_which_grows_up_to_its_cap() {
    // Twenty tasks at once, so the jitter is drawn sixty times.
    const TASKS: usize = 20;
    let (harness, recorder) = harness_with_recorder(TASKS);
    let retry_policy = policy(4, secs(10), 2.0, secs(25));
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let new_task = recorded(
            &format!("flaky {n}"),
            json!({"failures": 3}),
            retrying_with(retry_policy.clone()),
        );
        ids.push(harness.create(new_task).await.id);
    }
    // The waits after the first, second and third failed runs: 10 s, 20 s,
    // then 40 s capped at 25 s.
    let full_waits = [secs(10), secs(20), secs(25)];
    let mut first_waits = Vec::new();
    for id in &ids {
        let completed = harness.until_status(*id, TaskStatus::Completed).await;
        assert_eq!(completed.attempt, 4);
        assert_eq!(completed.result.as_deref(), Some(&json!({"attempts": 4})));
        let runs = recorder.runs_of(*id);
        let attempts: Vec<u32> = runs.iter().map(|run| run.attempt).collect();
        assert_eq!(attempts, [1, 2, 3, 4], "{id}");
        assert_eq!(runs[0].started_at, secs(0));
        for (n, pair) in runs.windows(2).enumerate() {
            // Each failed run failed the instant it started.
            let gap = pair[1].started_at - pair[0].started_at;
            assert_backoff(
                gap,
                full_waits[n],
                &format!("{id}: after failed run {}", n + 1),
            );
        }
        first_waits.push(runs[1].started_at);
    }
    first_waits.sort();
    first_waits.dedup();
    assert!(
        first_waits.len() > 1,
        "the jitter spreads the retries of tasks that failed together: {first_waits:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_fails_at_the_end_of_its_last_allowed_run_with_that_runs_error() {
    let (harness, recorder) = harness_with_recorder(1);
    let id = harness
        .create(recorded(
            "always fails",
            json!({"failures": 10}),
            Scheduling {
                // A moment's delay, so the watch sees every status.
                run_after: Some(SystemTime::now() + secs(1)),
                ..retrying_with(fixed(3, secs(2)))
            },
        ))
        .await
        .id;
    let statuses = statuses_to_the_end(&harness, id).await;
    assert_eq!(
        statuses,
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Retrying,
            TaskStatus::Running,
            TaskStatus::Retrying,
            TaskStatus::Running,
            TaskStatus::Failed,
        ]
    );
    let runs = recorder.runs_of(id);
    assert_eq!(runs.len(), 3, "max_attempts counts the first run");
    let failed = harness.get(id).await;
    assert_eq!((failed.attempt, failed.error.as_str()), (3, "failure 3"));
    assert_eq!(failed.failed_runs, 3);
    assert!(failed.completed_at.is_some());
    assert_eq!(
        harness.now(),
        runs[2].started_at,
        "failed when its last run failed, with no back-off after it"
    );

    harness.sleep_until(secs(3600)).await;
    assert_eq!(recorder.runs_of(id).len(), 3, "never run again");
    assert_eq!(harness.status(id).await, TaskStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_fails_the_task_at_once_whatever_attempts_remain() {
    let (harness, recorder) = harness_with_recorder(1);
    let id = harness
        .create(recorded(
            "bad input",
            json!({"failures": 1, "permanent": true}),
            retrying_with(fixed(5, secs(1))),
        ))
        .await
        .id;
    let failed = harness.until_status(id, TaskStatus::Failed).await;
    assert_eq!(harness.now(), secs(0));
    assert_eq!((failed.attempt, failed.error.as_str()), (1, "failure 1"));
    assert_eq!(failed.retry_at, None, "no back-off");

    harness.sleep_until(secs(3600)).await;
    assert_eq!(recorder.runs_of(id).len(), 1, "never retried");
}

#[tokio::test(start_paused = true)]
async fn a_run_that_times_out_counts_as_a_failed_run_toward_max_attempts() {
    let (harness, recorder) = harness_with_recorder(1);
    let id = harness
        .create(NewTask {
            timeout_seconds: 2,
            ..recorded(
                "too slow twice",
                json!({"failures": 2, "hang": true}),
                retrying_with(fixed(2, secs(3))),
            )
        })
        .await
        .id;
    let retrying = harness.until_status(id, TaskStatus::Retrying).await;
    assert_eq!(harness.now(), secs(2), "at the timeout");
    assert_eq!(
        (retrying.attempt, retrying.error.as_str()),
        (1, "timed out after 2s")
    );
    let runs = recorder.wait_runs(id, 2).await;
    assert_backoff(runs[1].started_at - secs(2), secs(3), "after the timeout");

    let failed = harness.until_status(id, TaskStatus::Failed).await;
    assert_eq!(
        harness.now(),
        runs[1].started_at + secs(2),
        "the second run times out too, and that was the last allowed"
    );
    assert_eq!(
        (failed.attempt, failed.error.as_str()),
        (2, "timed out after 2s")
    );
    assert_eq!(failed.failed_runs, 2);
    harness.sleep_until(secs(3600)).await;
    assert_eq!(recorder.runs_of(id).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_task_holds_no_slot_and_starts_at_its_run_after_while_a_slot_is_free() {
    let (harness, recorder) = harness_with_recorder(1);
    // Created first and of the highest priority, but not ready before 5 s.
    let delayed = harness
        .create(recorded(
            "later",
            json!({}),
            Scheduling {
                run_after: Some(SystemTime::now() + secs(5)),
                priority: 100,
                ..Scheduling::default()
            },
        ))
        .await
        .id;
    let other = harness.create(task(HELD, "meanwhile")).await.id;
    assert_eq!(
        harness.script.wait_started(other).await,
        secs(0),
        "the only slot is not held for the delayed task"
    );
    harness.sleep_until(secs(1)).await;
    harness.script.finish(other, json!(null));
    harness.until_status(other, TaskStatus::Completed).await;

    harness.sleep_until(ms(4900)).await;
    assert_eq!(harness.status(delayed).await, TaskStatus::Pending);
    assert!(recorder.runs_of(delayed).is_empty(), "not started at 4.9 s");
    assert_eq!(harness.stats().await.running, 0);

    let started_at = recorder.wait_runs(delayed, 1).await[0].started_at;
    assert!(
        started_at >= secs(5) - DRIFT && started_at <= secs(5) + DRIFT,
        "started at {started_at:?}, not at its run_after"
    );
    let completed = harness.until_status(delayed, TaskStatus::Completed).await;
    assert_eq!(completed.attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_task_whose_time_has_come_waits_for_a_slot_and_takes_the_first_that_frees() {
    let (harness, recorder) = harness_with_recorder(1);
    let busy = harness.create_started(HELD, "busy").await;
    let delayed = harness
        .create(recorded(
            "due at 2 s",
            json!({}),
            Scheduling {
                run_after: Some(SystemTime::now() + secs(2)),
                ..Scheduling::default()
            },
        ))
        .await
        .id;
    harness.sleep_until(secs(6)).await;
    assert_eq!(harness.status(delayed).await, TaskStatus::Pending);
    assert!(recorder.runs_of(delayed).is_empty());
    harness.script.finish(busy, json!(null));
    assert_eq!(recorder.wait_runs(delayed, 1).await[0].started_at, secs(6));
}

#[tokio::test(start_paused = true)]
async fn with_one_slot_ready_tasks_start_by_priority_then_in_creation_order() {
    let (harness, recorder) = harness_with_recorder(1);
    let busy = harness.create_started(HELD, "busy").await;
    let priorities = [0, 5, -3, 5, 10, 0, -100, 100];
    let mut created = Vec::new();
    for (n, priority) in priorities.iter().enumerate() {
        let scheduling = Scheduling {
            priority: *priority,
            ..Scheduling::default()
        };
        let id = harness
            .create(recorded(
                &format!("priority {priority}"),
                json!({}),
                scheduling,
            ))
            .await
            .id;
        created.push((*priority, n, id));
    }
    harness.sleep_until(secs(1)).await;
    assert!(recorder.start_order().is_empty(), "all wait for the slot");
    harness.script.finish(busy, json!(null));
    for (_, _, id) in &created {
        harness.until_status(*id, TaskStatus::Completed).await;
    }

    // Highest priority first; among equals, the one created first.
    let mut expected = created.clone();
    expected.sort_by_key(|(priority, n, _)| (-priority, *n));
    let expected: Vec<TaskId> = expected.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(recorder.start_order(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_waits_past_its_queue_timeout_fails_at_exactly_that_time_without_a_run() {
    let (harness, recorder) = harness_with_recorder(1);
    let busy = harness.create_started(HELD, "busy").await;
    let timed_out = harness
        .create(recorded(
            "gives up after 3 s",
            json!({}),
            Scheduling {
                queue_timeout_seconds: 3,
                ..Scheduling::default()
            },
        ))
        .await
        .id;
    let patient = harness
        .create(recorded(
            "gives up after 10 s",
            json!({}),
            Scheduling {
                queue_timeout_seconds: 10,
                ..Scheduling::default()
            },
        ))
        .await
        .id;

    harness.sleep_until(secs(3) - DRIFT - ms(1)).await;
    assert_eq!(harness.status(timed_out).await, TaskStatus::Pending);
    let failed = harness.until_status(timed_out, TaskStatus::Failed).await;
    let at = harness.now();
    assert!(at >= secs(3) - DRIFT && at <= secs(3), "failed at {at:?}");
    assert_eq!(failed.attempt, 0, "it never ran");
    assert_eq!(failed.started_at, None);
    assert_eq!(
        failed.error,
        "never started in time: waited 3s to start (queue_timeout_seconds)"
    );
    assert_eq!(harness.stats().await.pending, 1, "it no longer waits");

    // The other one starts in time, when the slot frees, and is never
    // failed by its queue timeout afterwards.
    harness.sleep_until(secs(5)).await;
    harness.script.finish(busy, json!(null));
    assert_eq!(recorder.wait_runs(patient, 1).await[0].started_at, secs(5));
    harness.until_status(patient, TaskStatus::Completed).await;
    harness.sleep_until(secs(60)).await;
    assert_eq!(harness.status(patient).await, TaskStatus::Completed);
    assert!(recorder.runs_of(timed_out).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_queue_timeout_of_a_delayed_task_counts_from_its_run_after() {
    let (harness, recorder) = harness_with_recorder(1);
    harness.create_started(HELD, "busy").await;
    let delayed = harness
        .create(recorded(
            "due at 5 s, gives up 2 s later",
            json!({}),
            Scheduling {
                run_after: Some(SystemTime::now() + secs(5)),
                queue_timeout_seconds: 2,
                ..Scheduling::default()
            },
        ))
        .await
        .id;
    harness.sleep_until(secs(7) - DRIFT - ms(1)).await;
    assert_eq!(
        harness.status(delayed).await,
        TaskStatus::Pending,
        "not failed 2 s after its creation"
    );
    let failed = harness.until_status(delayed, TaskStatus::Failed).await;
    let at = harness.now();
    assert!(at >= secs(7) - DRIFT && at <= secs(7), "failed at {at:?}");
    assert_eq!(failed.attempt, 0);
    assert!(failed.error.starts_with("never started in time"));
    assert!(recorder.runs_of(delayed).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_queue_timeout_of_a_retrying_task_counts_from_the_end_of_its_backoff() {
    let (harness, recorder) = harness_with_recorder(1);
    let retried = harness
        .create(recorded(
            "fails once, then finds no slot",
            json!({"failures": 1}),
            Scheduling {
                queue_timeout_seconds: 2,
                ..retrying_with(fixed(2, secs(4)))
            },
        ))
        .await
        .id;
    let retrying = harness.until_status(retried, TaskStatus::Retrying).await;
    assert_eq!(harness.now(), secs(0));
    assert_eq!(retrying.attempt, 1);
    // A retrying task holds no slot: the next task takes it, and keeps it.
    let busy = harness.create(task(HELD, "busy")).await.id;
    assert_eq!(harness.script.wait_started(busy).await, secs(0));

    // Its back-off ends between 3.2 s and 4 s; it fails 2 s after that.
    harness.sleep_until(ms(5200) - DRIFT - ms(1)).await;
    assert_eq!(
        harness.status(retried).await,
        TaskStatus::Retrying,
        "not failed 2 s after its creation or its failed run"
    );
    let failed = harness.until_status(retried, TaskStatus::Failed).await;
    let at = harness.now();
    assert!(
        at >= ms(5200) - DRIFT && at <= secs(6),
        "failed at {at:?}, not 2 s after its back-off ended"
    );
    assert_eq!(failed.attempt, 1, "the number of the run that failed");
    assert!(failed.error.starts_with("never started in time"));
    assert_eq!(recorder.runs_of(retried).len(), 1, "never ran again");
}

#[tokio::test(start_paused = true)]
async fn a_retrying_task_is_cancelled_like_a_pending_one_and_never_runs_again() {
    let (harness, recorder) = harness_with_recorder(1);
    let id = harness
        .create(recorded(
            "fails once",
            json!({"failures": 1}),
            retrying_with(fixed(2, secs(10))),
        ))
        .await
        .id;
    let retrying = harness.until_status(id, TaskStatus::Retrying).await;
    let mut watch = harness.manager.watch_task(id).await.expect("watchable");

    harness.sleep_until(secs(3)).await;
    let cancelled = harness.manager.cancel_task(id).await.expect("cancelled");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.error, "cancelled by client request");
    assert_eq!(cancelled.attempt, retrying.attempt);
    assert!(cancelled.revision > retrying.revision);
    let seen = within("the watch delivering the cancel", async {
        let mut last = None;
        while let Some(task) = watch.next().await {
            last = Some(task.status);
        }
        last
    })
    .await;
    assert_eq!(seen, Some(TaskStatus::Cancelled), "the watch ends with it");

    // Past the end of its back-off: no second run, and the slot is free.
    harness.sleep_until(secs(60)).await;
    assert_eq!(recorder.runs_of(id).len(), 1);
    let later = harness.get(id).await;
    assert_eq!(
        (later.status, later.revision),
        (TaskStatus::Cancelled, cancelled.revision)
    );
    let stats = harness.stats().await;
    assert_eq!((stats.running, stats.pending), (0, 0));
    let next = harness.create(task(HELD, "next")).await.id;
    assert_eq!(harness.script.wait_started(next).await, secs(60));
}
