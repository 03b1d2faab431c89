//! Unit tests of the manager in paused time.
//!
//! Each test drives a [`ManagerHandle`] on the memory store, in-process, on
//! a current-thread runtime whose clock stands still
//! (`#[tokio::test(start_paused = true)]`): it moves only when the test
//! moves it, or, when nothing is left to do, straight to the next timer.
//! Timeouts, forced stops and retention are thus checked to the
//! millisecond, and a test that spans an hour of the manager's time takes
//! milliseconds of ours. The gRPC tests in `tests/it` stay for the wire.
//!
//! The tests use only what the manager offers everyone — the handle, its
//! config, errors and stats, the processor registry, the task types — and
//! never the actor's internals, so they hold, and guard, across a rewrite
//! of the actor. (`handle_internals.rs`, moved here from `mod.rs`, is the
//! exception it says it is.)
//!
//! Every wait is bounded ([`within`]): with a paused clock, waiting for
//! something that never comes does not hang, it jumps from timer to timer
//! forever; the bound turns a broken manager into a failed test.
//!
//! This file holds what the tests share: [`Harness`] (a manager, its
//! origin of time, and helpers to wait on it) and [`Script`], the
//! processor a test drives run by run. The tests, by subject:
//! - `timeouts.rs`: a run over its timeout, in time and past it;
//! - `cancel.rs`: cancelling pending, running and finished tasks, the
//!   forced stop of a processor that ignores it, late results;
//! - `limits.rs`: FIFO order, `max_concurrent`, `queue_capacity`;
//! - `retention.rs`: finished tasks forgotten by age and by count;
//! - `runs.rs`: results, errors, panics and progress of a run;
//! - `scheduling.rs`: retries and their back-off, `run_after`, priority,
//!   queue timeouts, and cancelling a retrying task;
//! - `shutdown.rs`: stop accepting, stop starting, cancel running, idle;
//! - `watch_tasks.rs`: `WatchTasks` bookmarks, and resuming from one.

mod cancel;
mod handle_internals;
mod limits;
mod retention;
mod runs;
mod scheduling;
mod script;
mod shutdown;
mod timeouts;
mod watch_tasks;

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use serde_json::Value as JsonValue;
use tokio::time::Instant;

use super::{ListQuery, ManagerConfig, ManagerHandle, ManagerStats};
use crate::{
    metrics::Metrics,
    processor::Registry,
    task::{NewTask, Task, TaskId, TaskStatus},
};

pub(super) use script::{End, OnCancel, STOPPED_ON_CANCEL, Script, Step};

/// How long any one wait may take, in paused time, before the test fails.
/// Longer than anything a test waits for; with a paused clock it costs a
/// few hundred housekeeping ticks, not real time.
const WAIT_BOUND: Duration = Duration::from_secs(600);

/// The kind whose runs the test drives and which stops when told to.
pub(super) const HELD: &str = "held";

/// The kind whose runs the test drives and which ignores being told to
/// stop: only an abort ends it before the test does.
pub(super) const STUBBORN: &str = "stubborn";

pub(super) fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

pub(super) fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// A config with `max_concurrent` slots and room for `queue_capacity`
/// waiting tasks, that forgets nothing for an hour and never runs out of
/// memory budget.
pub(super) fn config(max_concurrent: usize, queue_capacity: usize) -> ManagerConfig {
    ManagerConfig {
        tenant_max_waiting: Default::default(),
        max_concurrent,
        queue_capacity,
        node_name: "paused".into(),
        queue_full_retry_after: secs(1),
        retention: secs(3600),
        max_finished_tasks: 10_000,
        lease: secs(30),
        max_held_bytes: 1 << 30,
        max_cut_short_runs: 5,
        kind_limits: Default::default(),
        watch_journal_capacity: crate::manager::DEFAULT_JOURNAL_CAPACITY,
        join_stored_trace: None,
    }
}

/// A task of `kind` named `name`, with no data and no timeout.
pub(super) fn task(kind: &str, name: &str) -> NewTask {
    NewTask {
        tenant: Default::default(),
        name: name.into(),
        description: String::new(),
        kind: kind.into(),
        data: None,
        timeout_seconds: 0,
        labels: BTreeMap::new(),
        request_id: None,
        scheduling: Default::default(),
        trace_context: Default::default(),
    }
}

/// A task of `kind` with `data`.
pub(super) fn task_with_data(kind: &str, name: &str, data: JsonValue) -> NewTask {
    NewTask {
        data: Some(Arc::new(data)),
        ..task(kind, name)
    }
}

/// A task of `kind` that times out after `seconds`.
pub(super) fn task_with_timeout(kind: &str, name: &str, seconds: u32) -> NewTask {
    NewTask {
        timeout_seconds: seconds,
        ..task(kind, name)
    }
}

/// `future`, or a failure naming `what` if it is not done within
/// [`WAIT_BOUND`] of paused time.
pub(super) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT_BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {WAIT_BOUND:?} of paused time"),
    }
}

/// A manager on the memory store, the script its `held` and `stubborn`
/// runs follow, and the instant it was spawned, from which every time a
/// test asserts is counted.
pub(super) struct Harness {
    pub(super) manager: ManagerHandle,
    pub(super) script: Script,
    t0: Instant,
}

impl Harness {
    /// Spawns a manager with the built-in kinds (`echo`, `sleep`, `fail`,
    /// ...) and the scripted `held` and `stubborn`.
    pub(super) fn new(config: ManagerConfig) -> Self {
        Self::with_registry(config, |_, _| {})
    }

    /// Like [`Harness::new`], with the kinds `extend` registers too; it
    /// gets the harness's origin of time, from which a test processor
    /// counts the times it records.
    pub(super) fn with_registry(
        config: ManagerConfig,
        extend: impl FnOnce(&mut Registry, Instant),
    ) -> Self {
        let t0 = Instant::now();
        let script = Script::new(t0);
        let mut registry = Registry::with_builtins(Duration::ZERO);
        registry.register(HELD, script.processor(OnCancel::Stop));
        registry.register(STUBBORN, script.processor(OnCancel::Ignore));
        extend(&mut registry, t0);
        let manager = ManagerHandle::spawn(config, registry, Metrics::new());
        Self {
            manager,
            script,
            t0,
        }
    }

    /// Paused time since the manager was spawned.
    pub(super) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Sleeps until `at` after the manager was spawned, which must not
    /// have passed yet.
    pub(super) async fn sleep_until(&self, at: Duration) {
        assert!(
            self.now() <= at,
            "the test meant to wait until {at:?} but it is already {:?}",
            self.now()
        );
        tokio::time::sleep_until(self.t0 + at).await;
    }

    pub(super) async fn create(&self, new_task: NewTask) -> Arc<Task> {
        self.manager
            .create_task(new_task)
            .await
            .expect("the create is accepted")
    }

    /// Creates a `kind` task and waits until its run has started.
    pub(super) async fn create_started(&self, kind: &str, name: &str) -> TaskId {
        let id = self.create(task(kind, name)).await.id;
        self.script.wait_started(id).await;
        id
    }

    pub(super) async fn get(&self, id: TaskId) -> Arc<Task> {
        self.manager.get_task(id).await.expect("the task is known")
    }

    pub(super) async fn status(&self, id: TaskId) -> TaskStatus {
        self.get(id).await.status
    }

    pub(super) async fn stats(&self) -> ManagerStats {
        self.manager.stats().await.expect("the manager is alive")
    }

    /// The ids of the tasks the manager lists as `status`, oldest first.
    pub(super) async fn listed(&self, status: TaskStatus) -> Vec<TaskId> {
        let page = self
            .manager
            .list_tasks(ListQuery {
                tenant: Default::default(),
                statuses: vec![status],
                labels: BTreeMap::new(),
                after: None,
                limit: 1000,
            })
            .await
            .expect("the manager lists");
        assert!(page.next_after.is_none(), "the test lists one page only");
        page.tasks.iter().map(|task| task.id).collect()
    }

    /// Watches task `id` until it is in `wanted`, and returns that state.
    /// Fails if the task ends in another status first.
    pub(super) async fn until_status(&self, id: TaskId, wanted: TaskStatus) -> Arc<Task> {
        let mut watch = self.manager.watch_task(id).await.expect("watchable");
        within(&format!("task {id} becoming {wanted}"), async {
            loop {
                match watch.next().await {
                    Some(task) if task.status == wanted => return task,
                    Some(_) => {}
                    None => panic!("the watch of {id} ended before it was {wanted}"),
                }
            }
        })
        .await
    }
}
