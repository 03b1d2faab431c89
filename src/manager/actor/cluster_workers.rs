//! The cluster shape's side of remote workers: a run whose worker went away
//! is given back to the table, where any replica with a worker for its kind
//! takes it over, as it would the run of a replica that died.

use tracing::{debug, warn};

use super::{
    Manager,
    cluster::{Cluster, ClusterEvent},
};
use crate::{
    errors::error_chain,
    manager::{STORE_CALL_TIMEOUT, STORE_READ_TIMEOUT, worker_row},
    processor::remote::StopReason,
    store::{StoreError, postgres::WorkerRow, within},
    task::{Task, TaskId, TaskStatus},
};

impl Manager<Cluster> {
    /// Gives a run cut short back to the table: its lease ends now, so the
    /// next claim that takes over expired leases (on any replica, within a
    /// housekeeping tick) runs it again. Until the table has it back, its
    /// slot here stays taken, as for any run whose end is not committed.
    pub(super) fn give_back_run(&mut self, id: TaskId, attempt: u32, kind: &str) {
        self.tasks.remove(&id);
        self.shape.ending.insert(id, kind.to_owned());
        let node = self.config.node_name.clone();
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
            let result = within(STORE_CALL_TIMEOUT, store.release(&node, &[(id, attempt)])).await;
            ClusterEvent::GivenBack { id, result }
        });
    }

    /// Counts the ready tasks of the worker kinds no worker here runs, so
    /// the gauge and the warning know them. Nothing is asked while every
    /// worker kind has a worker.
    pub(super) fn count_kinds_without_workers(&mut self) {
        let Some(workers) = self.registry.workers() else {
            return;
        };
        let kinds: Vec<String> = workers
            .kinds()
            .iter()
            .filter(|kind| workers.streams_serving(kind) == 0)
            .cloned()
            .collect();
        if kinds.is_empty() {
            self.shape.ready_without_worker.clear();
            return;
        }
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
            let result = within(STORE_CALL_TIMEOUT, store.count_ready_of_kinds(&kinds)).await;
            ClusterEvent::WorkerKindsCounted(result)
        });
    }

    pub(super) fn handle_worker_kinds_counted(
        &mut self,
        result: Result<Vec<(String, u64)>, StoreError>,
    ) {
        match result {
            Ok(counts) => {
                self.shape.ready_without_worker = counts
                    .into_iter()
                    .map(|(kind, count)| (kind, usize::try_from(count).unwrap_or(usize::MAX)))
                    .collect();
            }
            Err(error) => {
                debug!(error = %error_chain(&error), "counting tasks waiting for workers failed");
            }
        }
    }

    /// Writes this replica's worker streams to the `workers` table, so
    /// `ListWorkers` on any replica shows them: every housekeeping tick
    /// while there are any, and once more when the last one left.
    pub(super) fn publish_workers(&mut self) {
        let Some(workers) = self.registry.workers() else {
            return;
        };
        if self.shape.publishing_workers {
            return;
        }
        let rows: Vec<WorkerRow> = workers
            .list()
            .into_iter()
            .map(|info| worker_row(info, &self.config.node_name))
            .collect();
        if rows.is_empty() && !self.shape.workers_published {
            return;
        }
        self.shape.workers_published = !rows.is_empty();
        self.shape.publishing_workers = true;
        let node = self.config.node_name.clone();
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
            let result = within(STORE_CALL_TIMEOUT, store.publish_workers(&node, &rows)).await;
            ClusterEvent::WorkersPublished(result)
        });
    }

    pub(super) fn handle_workers_published(&mut self, result: Result<(), StoreError>) {
        self.shape.publishing_workers = false;
        if let Err(error) = result {
            // Tried again at the next tick.
            self.shape.workers_published = true;
            debug!(error = %error_chain(&error), "writing the worker list failed");
        }
    }

    /// A worker's run whose update the table refused (the row is not this
    /// run's any more) stops once the row says why: cancelled, or taken
    /// over. Until then it goes on, its updates refused; a read that
    /// fails says taken over.
    pub(super) fn lose_remote_run_after_reading(&mut self, id: TaskId, attempt: u32) {
        if !self.shape.lost_rows_reading.insert(id) {
            return;
        }
        let store = self.shape.store.clone();
        self.shape.calls.spawn(async move {
            let result = within(STORE_READ_TIMEOUT, store.get(id)).await;
            ClusterEvent::LostRowRead {
                id,
                attempt,
                result,
            }
        });
    }

    pub(super) fn handle_lost_row_read(
        &mut self,
        id: TaskId,
        attempt: u32,
        result: Result<Option<Task>, StoreError>,
    ) {
        self.shape.lost_rows_reading.remove(&id);
        let still_running = self
            .running
            .get(&id)
            .is_some_and(|slot| slot.attempt == attempt);
        if !still_running {
            return;
        }
        let reason = match result {
            Ok(Some(task)) if task.status == TaskStatus::Cancelled => StopReason::Cancelled,
            _ => StopReason::TakenOver,
        };
        self.lose_run(id, reason);
    }

    pub(super) fn handle_given_back(&mut self, id: TaskId, result: Result<(), StoreError>) {
        self.shape.ending.remove(&id);
        self.shape.claim_wanted = true;
        match result {
            Ok(()) => debug!(task_id = %id, "run given back to the table"),
            Err(error) => warn!(
                task_id = %id,
                error = %error_chain(&error),
                "could not give a run back; it runs again once its lease ends"
            ),
        }
    }
}
