//! Taking back what the store held when the process started (SQLite).

use std::{sync::Arc, time::SystemTime};

use tokio::time::Instant;
use tracing::info;

use super::{Local, Manager, held};
use crate::task::{Task, TaskId, TaskStatus};

impl Manager<Local> {
    /// Takes back what the store held when this process started: every
    /// retained task. Those that were running run again first, in creation
    /// order, as a new attempt; waiting ones (pending, retrying) queue again
    /// with their priority, `run_after` and queue timeout.
    pub(in crate::manager) fn recover(&mut self, stored: Vec<Task>) {
        let now = SystemTime::now();
        let mut finished: Vec<(SystemTime, TaskId)> = Vec::new();
        let (mut requeued, mut restarted, mut retrying) = (0usize, 0usize, 0usize);
        for task in stored {
            let id = task.id;
            if let Some(key) = task.request_key() {
                self.shape.request_ids.insert(key, id);
            }
            self.shape
                .waiting_by_tenant
                .changed(&task.tenant, None, Some(task.status));
            match task.status {
                TaskStatus::Pending => {
                    self.shape.pending += 1;
                    requeued += 1;
                    self.shape.waiting.add(&task);
                }
                TaskStatus::Retrying => {
                    retrying += 1;
                    self.shape.retrying += 1;
                    self.shape.waiting.add(&task);
                }
                TaskStatus::Running => {
                    restarted += 1;
                    self.shape.recovered.push_back(id);
                }
                _ => finished.push((task.completed_at.unwrap_or(task.created_at), id)),
            }
            // Finished tasks come without their payload, which stays in the
            // file; only what is still to run is held.
            self.shape.held.add(id, held::payload_bytes(&task));
            self.tasks.insert(id, Arc::new(task));
        }
        // Retention goes on from where it was: the oldest finished first.
        finished.sort();
        let at_start = Instant::now();
        for (completed_at, id) in finished {
            let age = now.duration_since(completed_at).unwrap_or_default();
            let finished_at = at_start.checked_sub(age).unwrap_or(at_start);
            self.shape.finished.push_back((finished_at, id));
        }
        let retained = self.shape.finished.len();
        self.forget_expired_tasks();
        while self.shape.finished.len() > self.config.max_finished_tasks {
            if let Some((_, oldest)) = self.shape.finished.pop_front() {
                self.forget(oldest);
            }
        }
        info!(
            pending = requeued,
            retrying,
            restarted,
            finished = self.shape.finished.len(),
            expired = retained - self.shape.finished.len(),
            "recovered tasks from the store"
        );
    }
}
