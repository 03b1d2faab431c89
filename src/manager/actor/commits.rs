//! The actor's side of group commit: what happens when a batch is durable
//! (replies go out, new tasks join the queue) or failed (creates are taken
//! back and refused, the rest is tried again), and creates refused while
//! the store fails.

use std::sync::Arc;

use tracing::{debug, error};

use super::{Manager, Shape};
use crate::{
    errors::error_chain,
    manager::{
        ManagerError, Reply,
        persist::{Committed, Deferred, Pending},
    },
    store::{BatchOutcome, Inserted},
    task::{Task, TaskId},
};

impl<S: Shape> Manager<S> {
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
            Ok(outcome) => {
                S::committed(self, &batch, &outcome);
                for reply in std::mem::take(&mut batch.replies) {
                    self.send_deferred(reply, &batch, &outcome);
                }
            }
            Err(failure) => {
                S::commit_failed(self, &batch);
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
                let failed_creates: Vec<TaskId> =
                    batch.inserts.iter().map(|task| task.id).collect();
                // Newest first: a schedule that fired more than once in
                // these batches goes back, firing by firing, to its state
                // before the oldest.
                for id in failed_creates.into_iter().chain(gathered).rev() {
                    S::roll_back_create(self, id);
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
                        | Deferred::Answer { respond_to, .. } => {
                            let _ = respond_to.send(Err(ManagerError::Storage(reason.clone())));
                        }
                        Deferred::Done(respond_to) => {
                            let _ = respond_to.send(Err(ManagerError::Storage(reason.clone())));
                        }
                        Deferred::BatchCreated { respond_to, .. } => {
                            let _ = respond_to.send(Err(ManagerError::Storage(reason.clone())));
                        }
                        Deferred::ScheduleCreated {
                            schedule,
                            respond_to,
                        } => {
                            // Never stored: it is forgotten, not tried again,
                            // so a client that retries gets one schedule.
                            batch.schedule_upserts.remove(&schedule.id);
                            S::schedule_create_not_stored(self, schedule.id);
                            let _ = respond_to.send(Err(ManagerError::Storage(reason.clone())));
                        }
                        Deferred::ScheduleAnswer { respond_to, .. } => {
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
        outcome: &BatchOutcome,
    ) {
        match reply {
            Deferred::Created { id, respond_to } => {
                let _ = respond_to.send(self.created_answer(id, batch, outcome));
            }
            Deferred::Answer { answer, respond_to } => {
                let _ = respond_to.send(answer);
            }
            Deferred::BatchCreated { ids, respond_to } => {
                // A task of the batch is missing only if an earlier batch
                // that held its request_id failed: nothing may be answered.
                let tasks: Option<Vec<Arc<Task>>> =
                    ids.iter().map(|id| self.tasks.get(id).cloned()).collect();
                let _ = respond_to.send(tasks.ok_or_else(|| {
                    ManagerError::Storage("a task of the batch could not be stored".into())
                }));
            }
            Deferred::Flushed(respond_to) | Deferred::Done(respond_to) => {
                let _ = respond_to.send(Ok(()));
            }
            Deferred::ScheduleCreated {
                schedule,
                respond_to,
            }
            | Deferred::ScheduleAnswer {
                schedule,
                respond_to,
            } => {
                let _ = respond_to.send(Ok(schedule));
            }
        }
    }

    /// The answer to the create of `id` once `batch` is durable: the task
    /// as it stands (held here), or as it was inserted (on PostgreSQL, where
    /// a replica holds only what it runs); or, when another task held its
    /// `request_id` already, that task if it was created alike.
    fn created_answer(
        &self,
        id: TaskId,
        batch: &Pending,
        outcome: &BatchOutcome,
    ) -> Result<Arc<Task>, ManagerError> {
        let inserted = batch
            .insert_index(id)
            .and_then(|index| Some((batch.inserts.get(index)?, outcome.inserted.get(index)?)));
        match inserted {
            Some((asked, Inserted::Existing(existing))) => {
                if existing.has_parameters_of(asked) {
                    Ok(Arc::new(existing.clone()))
                } else {
                    Err(ManagerError::RequestIdConflict {
                        request_id: asked.request_id.clone().unwrap_or_default(),
                    })
                }
            }
            Some((asked, Inserted::New)) => Ok(self
                .tasks
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Arc::clone(asked))),
            // A repeated create that waited on a first one: the task as it
            // stands, unless that first insert failed and it is gone.
            None => self
                .get(id)
                .map_err(|_| ManagerError::Storage("the task could not be stored".into())),
        }
    }
}
