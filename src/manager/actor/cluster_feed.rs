//! The cluster shape's side of the change feed: what another replica's
//! (or this one's) committed change means here (a run to stop, a claim to
//! make, the pending count), the `WatchTasks` journal's record of it, and
//! how `WatchTask` watchers on this replica are fed: subscribed before the
//! task is read, then only states newer than the last one published.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    Manager,
    cluster::{Cluster, ClusterEvent},
};
use crate::{
    errors::error_chain,
    manager::{
        ManagerError, Reply, STORE_READ_TIMEOUT,
        journal::Before,
        watch::{TaskWatch, WatchState},
    },
    processor::remote::StopReason,
    store::{StoreError, postgres::Change, within},
    task::{Task, TaskId, TaskStatus},
};

impl Manager<Cluster> {
    pub(super) fn watch_through_feed(&mut self, id: TaskId, respond_to: Reply<TaskWatch>) {
        if let Some(sender) = self.watchers.get(&id) {
            let _ = respond_to.send(Ok(TaskWatch::new(sender.subscribe())));
            return;
        }
        let cluster = &mut self.shape;
        let pending = cluster.pending_watches.entry(id).or_default();
        pending.waiting.push(respond_to);
        if pending.waiting.len() == 1 {
            // Subscribed (changes are kept from now on) before the read.
            spawn_fetch(cluster, id);
        }
    }

    pub(super) fn handle_change(&mut self, change: Change) {
        let id = change.task.id;
        debug!(task_id = %id, origin = %change.origin, status = %change.task.status, revision = change.task.revision, watched = self.watchers.contains_key(&id), "change from the feed");
        if change.deleted {
            // A finished task is gone: only streams care.
            self.record_change(&change);
            return;
        }
        let from_elsewhere = change.origin != self.config.node_name;
        {
            let cluster = &mut self.shape;
            if change.task.status.is_waiting() {
                // A delayed task, or a retry after its back-off: claim
                // when it is due, if no earlier one is.
                let ready_at = change.task.ready_at();
                if ready_at > SystemTime::now() {
                    if cluster.next_due.is_none_or(|due| ready_at < due) {
                        cluster.next_due = Some(ready_at);
                    }
                } else {
                    cluster.claim_wanted = true;
                }
            }
            if change.task.status == TaskStatus::Pending {
                // This replica counted its own creates when it took them.
                if from_elsewhere {
                    cluster.pending_estimate += 1;
                }
            } else if left_pending(&change.task) {
                cluster.pending_estimate = cluster.pending_estimate.saturating_sub(1);
            }
        }
        // A task this replica runs was cancelled or taken over elsewhere.
        if from_elsewhere && let Some(slot) = self.running.get(&id) {
            let still_ours = change.task.status == TaskStatus::Running
                && change.task.attempt == slot.attempt
                && change.task.runs_on(&self.config.node_name);
            if !still_ours {
                info!(task_id = %id, status = %change.task.status, by = %change.origin, "task changed by another replica; stopping its run here");
                let reason = if change.task.status == TaskStatus::Cancelled {
                    StopReason::Cancelled
                } else {
                    StopReason::TakenOver
                };
                self.lose_run(id, reason);
            }
        }
        self.record_change(&change);
        if let Some(pending) = self.shape.pending_watches.get_mut(&id) {
            pending.changes.push(change);
            return;
        }
        if !self.watchers.contains_key(&id) {
            return;
        }
        if !change.complete {
            debug!(task_id = %id, "incomplete change; reading the task");
            spawn_fetch(&mut self.shape, id);
            return;
        }
        self.publish_newer(change.task);
    }

    /// Every committed change, from any replica, goes to the journal at its
    /// position in the change log, in the order the feed brings them. The
    /// feed leaves `data` out (it never changes), so the change is marked
    /// for a stream to read its payload back.
    fn record_change(&mut self, change: &Change) {
        let Some(position) = change.position else {
            // From a replica older than the change log: it has no place in
            // it, so no stream could resume after it.
            return;
        };
        let before = Before::of_logged(change.deleted, change.task.revision);
        self.journal
            .record_at(position, Arc::new(change.task.without_payload()), before);
    }

    pub(super) fn handle_fetched(&mut self, id: TaskId, result: Result<Option<Task>, StoreError>) {
        let pending = self.shape.pending_watches.remove(&id);
        let Some(pending) = pending else {
            // A read to fill in a change: publish it if it is news.
            match result {
                Ok(Some(task)) => self.publish_newer(task),
                Ok(None) => {}
                Err(error) => {
                    warn!(task_id = %id, error = %error_chain(&error), "reading a watched task failed")
                }
            }
            return;
        };
        let task = match result {
            Ok(Some(task)) => Arc::new(task),
            Ok(None) => {
                for waiting in pending.waiting {
                    let _ = waiting.send(Err(ManagerError::NotFound(id)));
                }
                return;
            }
            Err(error) => {
                warn!(task_id = %id, error = %error_chain(&error), "reading a watched task failed");
                let reason = error.to_string();
                for waiting in pending.waiting {
                    let _ = waiting.send(Err(ManagerError::Storage(reason.clone())));
                }
                return;
            }
        };
        let sender = self
            .watchers
            .entry(id)
            .or_insert_with(|| watch::Sender::new(WatchState::new(Arc::clone(&task))));
        let receivers: Vec<_> = pending
            .waiting
            .into_iter()
            .map(|waiting| (waiting, sender.subscribe()))
            .collect();
        for (waiting, receiver) in receivers {
            let _ = waiting.send(Ok(TaskWatch::new(receiver)));
        }
        for change in pending.changes {
            if change.complete {
                self.publish_newer(change.task);
            } else {
                spawn_fetch(&mut self.shape, id);
            }
        }
        if task.status.is_terminal() {
            // Nothing follows; the watchers end after this state.
            self.watchers.remove(&id);
        }
    }

    /// Publishes a state from the store to this replica's watchers, unless
    /// they have seen it (or a later one) already.
    fn publish_newer(&mut self, mut task: Task) {
        let Some(sender) = self.watchers.get(&task.id) else {
            return;
        };
        let current = Arc::clone(sender.borrow().latest());
        if task.revision <= current.revision {
            return;
        }
        if task.data.is_none() {
            // The feed leaves data out: it never changes after create.
            task.data.clone_from(&current.data);
        }
        let status_changed = task.status != current.status;
        debug!(task_id = %task.id, revision = task.revision, receivers = sender.receiver_count(), "publishing a change from the store");
        self.publish(&Arc::new(task), status_changed);
    }
}

/// Whether this change is the one that took the task out of `PENDING`: its
/// first claim (the first change after create), or a cancel or a queue
/// timeout before it ever ran.
fn left_pending(task: &Task) -> bool {
    match task.status {
        TaskStatus::Running => task.attempt == 1 && task.revision == 2,
        TaskStatus::Cancelled | TaskStatus::Failed => task.started_at.is_none(),
        _ => false,
    }
}

pub(super) fn spawn_fetch(cluster: &mut Cluster, id: TaskId) {
    let store = cluster.store.clone();
    cluster.calls.spawn(async move {
        ClusterEvent::Fetched {
            id,
            result: within(STORE_READ_TIMEOUT, store.get(id)).await,
        }
    });
}
