//! The actor's side of group commit: what happens when a batch is durable
//! (replies go out, new tasks join the queue) or failed (creates are taken
//! back and refused, the rest is tried again), and creates refused while
//! the store fails.

use std::sync::Arc;

use tracing::{debug, error};

use super::{Manager, cluster};
use crate::{
    errors::error_chain,
    manager::{
        ManagerError, Reply,
        persist::{Committed, Deferred, Pending},
    },
    store::postgres,
    task::{Task, TaskId, TaskStatus},
};

impl Manager {
    /// While the store fails, a create is refused at once: waiting for a
    /// store known not to write would keep the client past its 2 s answer.
    pub(super) fn store_refusal(&self) -> Option<ManagerError> {
        // Clients hear that the store fails, not its internals (the
        // operator sees those in the log and on `/readyz`).
        self.persister
            .failure()
            .map(|_| ManagerError::Storage("the store cannot be written".into()))
    }

    /// Sends `answer` at once, or once what it reports is durable.
    pub(super) fn answer_when_durable(
        &mut self,
        answer: Result<Arc<Task>, ManagerError>,
        respond_to: Reply<Arc<Task>>,
    ) {
        if answer.is_ok() && self.persister.has_work() {
            self.persister
                .defer(Deferred::Answer { answer, respond_to });
        } else {
            let _ = respond_to.send(answer);
        }
    }

    /// A batch is durable, or failed: the replies that waited on it go out.
    pub(super) fn handle_committed(&mut self, committed: Committed) {
        let Committed { outcome, mut batch } = committed;
        match outcome {
            Ok(cluster_outcome) => {
                for id in std::mem::take(&mut batch.created) {
                    self.uncommitted.remove(&id);
                    if self.status_of(id) == Some(TaskStatus::Pending) {
                        self.queue.push_back(id);
                    }
                }
                if let Some(cluster_outcome) = &cluster_outcome {
                    self.cluster_committed(&batch, cluster_outcome);
                }
                for reply in std::mem::take(&mut batch.replies) {
                    self.send_deferred(reply, &batch, cluster_outcome.as_ref());
                }
                self.let_go_of_stored_payloads(&batch);
            }
            Err(failure) => {
                if batch.probe {
                    debug!(error = %error_chain(&failure), "the task store still fails");
                } else {
                    error!(error = %error_chain(&failure), "storing a batch of task changes failed; retrying");
                }
                // Clients hear what failed, not the database's internals.
                let reason = failure.to_string();
                // Creates in the batch were never stored: take them back and
                // tell their clients; everything else is tried again. So are
                // the creates gathered meanwhile for the next commit: the
                // store is failing, and they must not wait for it.
                let (gathered, gathered_replies) = self.persister.take_creates();
                for id in std::mem::take(&mut batch.created)
                    .into_iter()
                    .chain(gathered)
                {
                    self.uncommitted.remove(&id);
                    self.roll_back_create(id);
                }
                let mut kept = Vec::new();
                for reply in std::mem::take(&mut batch.replies)
                    .into_iter()
                    .chain(gathered_replies)
                {
                    match reply {
                        // A cancel is not durable either: its client hears
                        // so rather than waiting for the store (the change
                        // stays decided and is written once the store takes
                        // writes; a retried cancel finds it cancelled).
                        Deferred::Created { respond_to, .. }
                        | Deferred::Inserted { respond_to, .. }
                        | Deferred::Answer { respond_to, .. } => {
                            let _ = respond_to.send(Err(ManagerError::Storage(reason.clone())));
                        }
                        Deferred::Flushed(_) => kept.push(reply),
                    }
                }
                batch.replies = kept;
                self.persister.retry(batch);
            }
        }
    }

    pub(super) fn send_deferred(
        &mut self,
        reply: Deferred,
        batch: &Pending,
        cluster_outcome: Option<&postgres::BatchOutcome>,
    ) {
        match reply {
            Deferred::Created { id, respond_to } => {
                // A repeated create that waited on a first one whose insert
                // failed: that task was never stored.
                let answer = self
                    .get(id)
                    .map_err(|_| ManagerError::Storage("the task could not be stored".into()));
                let _ = respond_to.send(answer);
            }
            Deferred::Inserted { index, respond_to } => {
                let _ = respond_to.send(cluster::insert_answer(batch, cluster_outcome, index));
            }
            Deferred::Answer { answer, respond_to } => {
                let _ = respond_to.send(answer);
            }
            Deferred::Flushed(respond_to) => {
                let _ = respond_to.send(Ok(()));
            }
        }
    }

    /// A create whose insert failed: as if it never happened.
    pub(super) fn roll_back_create(&mut self, id: TaskId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        self.held.release(id);
        if task.status == TaskStatus::Pending {
            self.pending -= 1;
        }
        if let Some(request_id) = &task.request_id
            && self.request_ids.get(request_id) == Some(&id)
        {
            self.request_ids.remove(request_id);
        }
        self.watchers.remove(&id);
    }
}
