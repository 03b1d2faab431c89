//! What waits to start on the local shape (memory, SQLite): tasks that are
//! ready, by priority and then FIFO, and tasks whose `run_after` (or retry
//! back-off) is still ahead. One timer wheel holds when each delayed task
//! becomes ready and when each task with a queue timeout has waited too
//! long, so thousands of delayed tasks cost no polling: the loop wakes only
//! when the earliest of them is due.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, HashMap},
    future::poll_fn,
    time::{Duration, SystemTime},
};

use tokio_util::time::{DelayQueue, delay_queue::Key};

use crate::task::{Task, TaskId};

/// A wait that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::manager) enum WaitEnded {
    /// The task's `run_after` (or back-off) has come: it is ready.
    Due(TaskId),
    /// The task has waited its queue timeout without starting.
    QueueTimeout(TaskId),
}

/// The timers of one waiting task.
#[derive(Debug, Default)]
struct Timers {
    due: Option<Key>,
    queue_timeout: Option<Key>,
}

#[derive(Debug, Default)]
pub(in crate::manager) struct WaitQueue {
    /// Ready tasks of each kind: highest priority first, then oldest (ids
    /// sort by creation). Apart by kind, so a kind at its own limit is
    /// passed over without walking its tasks.
    ready: HashMap<String, BTreeSet<ReadyKey>>,
    /// Delayed tasks and those waiting for their back-off: not ready yet.
    delayed: usize,
    timers: DelayQueue<WaitEnded>,
    keys: HashMap<TaskId, Timers>,
}

impl WaitQueue {
    /// Adds a waiting task: ready now, or when its `run_after` comes; with
    /// a queue timeout, that is armed too (from when it becomes ready).
    pub(super) fn add(&mut self, task: &Task) {
        if task.run_after().is_none() && task.scheduling.queue_timeout_seconds == 0 {
            // The common task: ready now, no timer, no clock read.
            self.make_ready(task);
            return;
        }
        let now = SystemTime::now();
        let mut timers = Timers::default();
        let ready_at = task.ready_at();
        match ready_at.duration_since(now) {
            Ok(ahead) if !ahead.is_zero() => {
                timers.due = Some(self.timers.insert(WaitEnded::Due(task.id), ahead));
                self.delayed += 1;
            }
            _ => self.make_ready(task),
        }
        if let Some(deadline) = task.queue_deadline() {
            let left = deadline.duration_since(now).unwrap_or(Duration::ZERO);
            timers.queue_timeout = Some(self.timers.insert(WaitEnded::QueueTimeout(task.id), left));
        }
        if timers.due.is_some() || timers.queue_timeout.is_some() {
            self.keys.insert(task.id, timers);
        }
    }

    /// A delayed task whose time has come (see [`WaitEnded::Due`]) joins
    /// the ready ones.
    pub(super) fn make_ready(&mut self, task: &Task) {
        // Looked up before inserting, so the kind is copied only the first
        // time one of its tasks waits, not for every task.
        match self.ready.get_mut(&task.kind) {
            Some(ready) => {
                ready.insert(ready_key(task));
            }
            None => {
                self.ready
                    .insert(task.kind.clone(), BTreeSet::from([ready_key(task)]));
            }
        }
    }

    /// Takes a task out (it started, was cancelled or timed out), with its
    /// timers.
    pub(super) fn remove(&mut self, task: &Task) {
        // An emptied kind keeps its (empty) set: kinds are few, and its next
        // task then needs no new key.
        if let Some(ready) = self.ready.get_mut(&task.kind) {
            ready.remove(&ready_key(task));
        }
        if let Some(timers) = self.keys.remove(&task.id) {
            if let Some(key) = timers.due {
                self.timers.remove(&key);
                self.delayed -= 1;
            }
            if let Some(key) = timers.queue_timeout {
                self.timers.remove(&key);
            }
        }
    }

    /// How many tasks of `kind` are ready to start.
    pub(super) fn ready_of(&self, kind: &str) -> usize {
        self.ready.get(kind).map_or(0, BTreeSet::len)
    }

    /// The ready task that starts next among the kinds that `may_start`:
    /// the highest priority, then the oldest. It is taken out of the ready
    /// set (its timers stay until [`WaitQueue::remove`]).
    pub(super) fn pop_ready(&mut self, may_start: impl Fn(&str) -> bool) -> Option<TaskId> {
        let (_, ready) = self
            .ready
            .iter_mut()
            .filter(|(kind, _)| may_start(kind))
            .filter_map(|(_, ready)| Some((*ready.first()?, ready)))
            .min_by_key(|(first, _)| *first)?;
        let (_, id) = ready.pop_first()?;
        Some(id)
    }

    /// The next wait that ends; never completes while nothing waits on a
    /// timer.
    pub(super) async fn next_ended(&mut self) -> WaitEnded {
        loop {
            let expired = poll_fn(|context| self.timers.poll_expired(context)).await;
            match expired {
                Some(expired) => {
                    let ended = expired.into_inner();
                    // The timer is spent: its key must not be used again.
                    let id = ended.task_id();
                    if let Some(timers) = self.keys.get_mut(&id) {
                        match ended {
                            WaitEnded::Due(_) => {
                                timers.due = None;
                                self.delayed -= 1;
                            }
                            WaitEnded::QueueTimeout(_) => timers.queue_timeout = None,
                        }
                        if timers.due.is_none() && timers.queue_timeout.is_none() {
                            self.keys.remove(&id);
                        }
                    }
                    return ended;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

impl WaitEnded {
    pub(super) fn task_id(self) -> TaskId {
        match self {
            WaitEnded::Due(id) | WaitEnded::QueueTimeout(id) => id,
        }
    }
}

/// The order of ready tasks: highest priority, then oldest.
type ReadyKey = (Reverse<i32>, TaskId);

fn ready_key(task: &Task) -> ReadyKey {
    task.start_order()
}
