//! `BatchCreateTasks` on the local shape (memory, SQLite): every rule is
//! checked for the whole batch before any task goes in, so a batch is
//! created whole or not at all; its tasks then go in like single creates,
//! in order, and land in one group commit.

use std::{collections::HashMap, sync::Arc};

use super::{Local, Manager};
use crate::{
    manager::{ManagerError, Reply, persist::Deferred},
    task::{NewTask, RequestKey, Task, TaskId},
};

/// What one request of a batch becomes.
enum Planned {
    /// A new task (boxed: it is far larger than the other variants).
    New(Box<NewTask>, u64),
    /// The task that holds its `request_id` already, created alike.
    Existing(TaskId),
    /// The same as an earlier request of this batch (same `request_id`).
    SameAs(usize),
}

impl Manager<Local> {
    pub(super) fn create_local_batch(
        &mut self,
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    ) {
        if let Some(refused) = self.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        let planned = match self.plan_batch(new_tasks) {
            Ok(planned) => planned,
            Err(refused) => {
                let _ = respond_to.send(Err(refused));
                return;
            }
        };
        let (count, bytes) = planned
            .iter()
            .fold((0, 0), |(count, bytes), plan| match plan {
                Planned::New(_, data_bytes) => (count + 1, bytes + data_bytes),
                Planned::Existing(_) | Planned::SameAs(_) => (count, bytes),
            });
        if self.shape.pending + count > self.config.queue_capacity {
            let _ = respond_to.send(Err(self.queue_full()));
            return;
        }
        if !self.make_room(bytes) {
            let _ = respond_to.send(Err(self.memory_full()));
            return;
        }
        let mut ids: Vec<TaskId> = Vec::with_capacity(planned.len());
        for plan in planned {
            let id = match plan {
                Planned::New(new_task, data_bytes) => {
                    let task = self.insert_new_task(TaskId::generate(), *new_task, data_bytes);
                    let id = task.id;
                    self.admit(task, None);
                    id
                }
                Planned::Existing(id) => id,
                Planned::SameAs(index) => ids[index],
            };
            ids.push(id);
        }
        if self.persister.is_durable() {
            // Answered once every task of it is durable: those it created
            // are in the next commit, a repeated request_id's task in it or
            // an earlier one.
            self.persister
                .defer(Deferred::BatchCreated { ids, respond_to });
        } else {
            let tasks: Option<Vec<Arc<Task>>> =
                ids.iter().map(|id| self.tasks.get(id).cloned()).collect();
            let _ = respond_to.send(tasks.ok_or_else(|| {
                ManagerError::Storage("a task of the batch was forgotten meanwhile".into())
            }));
        }
    }

    /// Decides what each request becomes, refusing the batch for a
    /// `request_id` used with other parameters (before, or earlier in it).
    fn plan_batch(&self, new_tasks: Vec<(NewTask, u64)>) -> Result<Vec<Planned>, ManagerError> {
        let mut planned: Vec<Planned> = Vec::with_capacity(new_tasks.len());
        let mut first_with_key: HashMap<RequestKey, usize> = HashMap::new();
        for (new_task, data_bytes) in new_tasks {
            let Some(key) = new_task.request_key() else {
                planned.push(Planned::New(Box::new(new_task), data_bytes));
                continue;
            };
            let conflict = || ManagerError::RequestIdConflict {
                request_id: key.1.clone(),
            };
            if let Some(existing) = self
                .shape
                .request_ids
                .get(&key)
                .and_then(|id| self.tasks.get(id))
            {
                if !existing.was_created_from(&new_task) {
                    return Err(conflict());
                }
                planned.push(Planned::Existing(existing.id));
                continue;
            }
            if let Some(&first) = first_with_key.get(&key) {
                let same = match &planned[first] {
                    Planned::New(earlier, _) => **earlier == new_task,
                    Planned::Existing(_) | Planned::SameAs(_) => false,
                };
                if !same {
                    return Err(conflict());
                }
                planned.push(Planned::SameAs(first));
                continue;
            }
            first_with_key.insert(key, planned.len());
            planned.push(Planned::New(Box::new(new_task), data_bytes));
        }
        Ok(planned)
    }
}
