//! What one watcher of a task sees: a coalescing channel that still never
//! loses a status change.
//!
//! The manager keeps one `tokio::sync::watch` sender per watched task, shared
//! by all its watchers, so publishing never waits, whatever the number or
//! speed of watchers. The value carries the latest state *and* every state
//! in which the status changed, so a slow watcher skips progress updates but
//! never a status.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::watch;

use crate::task::Task;

/// The value shared by all watchers of one task.
#[derive(Debug)]
pub(crate) struct WatchState {
    /// Every state in which the task's status changed, oldest first. A task
    /// changes status at most a handful of times, so this stays tiny.
    status_changes: Vec<Arc<Task>>,
    /// The task as it is now.
    latest: Arc<Task>,
}

impl WatchState {
    pub(crate) fn new(latest: Arc<Task>) -> Self {
        Self {
            status_changes: Vec::new(),
            latest,
        }
    }

    /// The task as it is now.
    pub(crate) fn latest(&self) -> &Arc<Task> {
        &self.latest
    }

    pub(crate) fn publish(&mut self, task: Arc<Task>, status_changed: bool) {
        if status_changed {
            self.status_changes.push(Arc::clone(&task));
        }
        self.latest = task;
    }
}

/// One watcher's view of one task: yields the current state first, then
/// every later state it has not yet seen, and ends after a terminal state.
#[derive(Debug)]
pub struct TaskWatch {
    receiver: watch::Receiver<WatchState>,
    /// States ready to hand out, in revision order.
    backlog: VecDeque<Arc<Task>>,
    /// The revision of the last state handed out.
    last_revision: u64,
    /// A terminal state was handed out: nothing follows.
    finished: bool,
}

impl TaskWatch {
    pub(crate) fn new(mut receiver: watch::Receiver<WatchState>) -> Self {
        let current = Arc::clone(&receiver.borrow_and_update().latest);
        Self {
            receiver,
            backlog: VecDeque::from([current]),
            last_revision: 0,
            finished: false,
        }
    }

    /// The next state to deliver, or `None` when the stream is over: after a
    /// terminal state, or when the manager stopped publishing (shutdown).
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Arc<Task>> {
        loop {
            if let Some(task) = self.backlog.pop_front() {
                self.last_revision = task.revision;
                if task.status.is_terminal() {
                    self.finished = true;
                    self.backlog.clear();
                }
                return Some(task);
            }
            if self.finished {
                return None;
            }
            if self.receiver.changed().await.is_err() {
                // The manager dropped the sender: take what it left, then end.
                self.take_unseen();
                if self.backlog.is_empty() {
                    return None;
                }
                continue;
            }
            self.take_unseen();
        }
    }

    /// The first state, while it has not been handed out: the manager
    /// completes it (with a payload read from the store) before the watch
    /// is returned.
    pub(crate) fn first_state_mut(&mut self) -> Option<&mut Arc<Task>> {
        if self.last_revision != 0 {
            return None;
        }
        self.backlog.front_mut()
    }

    /// Whether the stream delivered a terminal state.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn take_unseen(&mut self) {
        let state = self.receiver.borrow_and_update();
        let mut newest = self.last_revision;
        for task in state.status_changes.iter().chain([&state.latest]) {
            if task.revision > newest {
                newest = task.revision;
                self.backlog.push_back(Arc::clone(task));
            }
        }
    }
}
