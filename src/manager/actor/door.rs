//! The one door for task changes: every transition of every task, on every
//! store, passes through [`Manager::transition`]. It checks the state
//! machine, stamps the change, bumps the metrics, records the write for the
//! store, and hands the change to the shape (which publishes it to watchers
//! at once, or once the shared store has it).

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{Manager, Shape, now};
use crate::task::{Applied, Task, TaskEvent, TaskId, TaskStatus};

impl<S: Shape> Manager<S> {
    /// Applies `event` to the task. Returns the new state, or `None` when
    /// the task is unknown here or the event is illegal.
    pub(super) fn transition(&mut self, task_id: TaskId, event: TaskEvent) -> Option<Arc<Task>> {
        let entry = self.tasks.get_mut(&task_id)?;
        let before = entry.status;
        match Arc::make_mut(entry).apply(event, now()) {
            Ok(Applied::Changed { status_changed }) => {
                let task = Arc::clone(entry);
                if status_changed {
                    debug!(task_id = %task_id, from = %before, to = %task.status, "task status changed");
                } else if let Some(progress) = &task.progress {
                    debug!(task_id = %task_id, kind = %task.kind, percent = progress.percent, "task progress");
                }
                self.persister.update(Arc::clone(&task));
                if status_changed && task.status.is_terminal() {
                    self.record_finished(&task);
                } else if status_changed && task.status == TaskStatus::Retrying {
                    self.record_retry(&task);
                }
                S::changed(self, &task, before, status_changed);
                Some(task)
            }
            Ok(Applied::Unchanged) => Some(Arc::clone(entry)),
            Err(illegal) => {
                warn!(task_id = %task_id, %illegal, "illegal transition ignored");
                None
            }
        }
    }

    /// Counts and logs a finished task. Every way a task ends passes here:
    /// completion, failure, timeout, cancel by a client (on any replica) or
    /// by shutdown.
    pub(super) fn record_finished(&mut self, task: &Task) {
        let run_time = task
            .started_at
            .zip(task.completed_at)
            .and_then(|(started, completed)| completed.duration_since(started).ok());
        self.metrics_of(&task.kind)
            .task_finished(task.status, run_time);
        macro_rules! log_finished {
            ($level:ident) => {
                $level!(
                    task_id = %task.id,
                    kind = %task.kind,
                    status = %task.status,
                    attempt = task.attempt,
                    run_ms = run_time.map(|run_time| run_time.as_millis() as u64),
                    error = %task.error,
                    "task finished"
                )
            };
        }
        // Completed and cancelled (by a client, or by the shutdown, which
        // logs how many) are the expected ends, counted in the metrics: a
        // line each only at debug. A failure is worth a line by default.
        if task.status == TaskStatus::Failed {
            log_finished!(info);
        } else {
            log_finished!(debug);
        }
    }

    /// Counts and logs a failed run after which the task runs again.
    fn record_retry(&mut self, task: &Task) {
        self.metrics_of(&task.kind).task_retried();
        let backoff_ms = task
            .retry_at
            .and_then(|retry_at| retry_at.duration_since(now()).ok())
            .map(|wait| wait.as_millis() as u64);
        info!(
            task_id = %task.id,
            kind = %task.kind,
            attempt = task.attempt,
            error = %task.error,
            backoff_ms,
            "task run failed; it will run again"
        );
    }

    /// Tells the task's watchers about its new state.
    pub(super) fn publish(&mut self, task: &Arc<Task>, status_changed: bool) {
        let Some(sender) = self.watchers.get(&task.id) else {
            return;
        };
        if sender.receiver_count() > 0 {
            sender.send_modify(|state| state.publish(Arc::clone(task), status_changed));
        }
        if task.status.is_terminal() || sender.receiver_count() == 0 {
            // Dropping the sender ends each watcher right after it has seen
            // the terminal state.
            self.watchers.remove(&task.id);
        }
    }

    pub(super) fn sweep_watchers(&mut self) {
        self.watchers
            .retain(|_, sender| sender.receiver_count() > 0);
    }
}
