//! `BatchCreateTasks` on PostgreSQL: the batch goes into the table in one
//! transaction of its own (`PostgresStore::insert_batch`), so a
//! `request_id` conflict found there takes the whole batch back; any
//! replica may then claim its tasks.

use std::sync::Arc;

use super::{Cluster, Manager, cluster::ClusterEvent, now};
use crate::{
    manager::{ManagerError, Reply, STORE_CALL_TIMEOUT},
    store::{postgres::BatchInserted, within},
    task::{NewTask, Task, TaskId},
};

impl Manager<Cluster> {
    pub(super) fn create_cluster_batch(
        &mut self,
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    ) {
        if let Some(refused) = self.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        if self.shape.pending_estimate + new_tasks.len() > self.config.queue_capacity {
            let _ = respond_to.send(Err(self.queue_full()));
            return;
        }
        let created_at = now();
        let tasks: Vec<Arc<Task>> = new_tasks
            .into_iter()
            .map(|(new_task, _)| Arc::new(Task::new(TaskId::generate(), new_task, created_at)))
            .collect();
        self.shape.pending_estimate += tasks.len();
        let store = self.shape.store.clone();
        let node = self.config.node_name.clone();
        self.shape.calls.spawn(async move {
            let inserted = within(STORE_CALL_TIMEOUT, store.insert_batch(&node, &tasks)).await;
            let (answer, created) = match inserted {
                Ok(BatchInserted::Stored(stored)) => {
                    let created: Vec<String> = stored
                        .iter()
                        .zip(&tasks)
                        .filter(|(stored, asked)| stored.id == asked.id)
                        .map(|(stored, _)| stored.kind.clone())
                        .collect();
                    (Ok(stored.into_iter().map(Arc::new).collect()), created)
                }
                Ok(BatchInserted::Conflict { request_id }) => (
                    Err(ManagerError::RequestIdConflict { request_id }),
                    Vec::new(),
                ),
                Err(error) => (Err(ManagerError::Storage(error.to_string())), Vec::new()),
            };
            let _ = respond_to.send(answer);
            ClusterEvent::BatchInserted {
                asked: tasks.len(),
                created,
            }
        });
    }

    /// A batch is in the table (`created`: the kinds of the tasks it
    /// created; the rest held a `request_id` already), or was refused.
    pub(super) fn batch_inserted(&mut self, asked: usize, created: Vec<String>) {
        // Counted as pending when sent; only what was created still is.
        self.shape.pending_estimate = self
            .shape
            .pending_estimate
            .saturating_sub(asked - created.len());
        if !created.is_empty() {
            self.shape.claim_wanted = true;
        }
        for kind in &created {
            self.metrics_of(kind).task_created();
        }
    }
}
