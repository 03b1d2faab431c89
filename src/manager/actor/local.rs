//! The local shape (memory and SQLite): this process holds every retained
//! task, and memory is the truth; a SQLite file is its durable copy. The
//! shape adds the queue of what waits (`wait_queue.rs`: priority, FIFO,
//! `run_after`, back-offs and queue timeouts), `request_id`s, retention, and
//! the memory budget to the shared core.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ops::Bound,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::{debug, info};

use super::{
    Manager, Shape,
    held::Held,
    local_schedules::LocalSchedules,
    now,
    tenant_waiting::WaitingByTenant,
    wait_queue::{WaitEnded, WaitQueue},
};
use crate::{
    manager::{
        ManagerError, ManagerStats, Reply, ScheduleCommand,
        journal::Before,
        persist::{Deferred, Pending},
        watch::{TaskWatch, WatchState},
        watch_tasks::TaskFilter,
    },
    processor::remote::StopReason,
    schedule::{Schedule, ScheduleId},
    store::BatchOutcome,
    task::{NewTask, RequestKey, Task, TaskEvent, TaskId, TaskStatus},
};

#[derive(Debug)]
pub(in crate::manager) struct Local {
    /// The task that holds each `request_id`, within its tenant.
    pub(super) request_ids: HashMap<RequestKey, TaskId>,
    /// Waiting tasks (pending or retrying, once durable): ready ones by
    /// priority then FIFO, and delayed ones on a timer.
    pub(super) waiting: WaitQueue,
    /// Tasks that were running when the last process stopped: they run
    /// again first, in creation order.
    pub(super) recovered: VecDeque<TaskId>,
    /// Tasks in `Pending`: what counts against `queue_capacity`.
    pub(super) pending: usize,
    /// Tasks in `Retrying`, for the metrics.
    pub(super) retrying: usize,
    /// Finished tasks in the order they finished, for retention.
    pub(super) finished: VecDeque<(Instant, TaskId)>,
    /// The bytes of payloads held in `tasks`, against `max_held_bytes`.
    pub(super) held: Held,
    /// Created tasks whose insert is not durable yet (SQLite).
    pub(super) uncommitted: HashSet<TaskId>,
    /// Every schedule, and the timer of the next firing.
    pub(super) schedules: LocalSchedules,
    /// Waiting tasks per tenant, for the tenants' quotas.
    pub(super) waiting_by_tenant: WaitingByTenant,
}

/// What the local shape's own timers report to the loop.
#[derive(Debug)]
pub(in crate::manager) enum LocalEvent {
    /// A waiting task became ready, or waited too long.
    Wait(WaitEnded),
    /// A schedule is due to fire.
    SchedulesDue,
}

impl Local {
    /// `schedules`: what a SQLite file held at start.
    pub(in crate::manager) fn new(max_held_bytes: u64, schedules: Vec<Schedule>) -> Self {
        Self {
            request_ids: HashMap::new(),
            waiting: WaitQueue::default(),
            recovered: VecDeque::new(),
            pending: 0,
            retrying: 0,
            finished: VecDeque::new(),
            held: Held::new(max_held_bytes),
            uncommitted: HashSet::new(),
            schedules: LocalSchedules::new(schedules),
            waiting_by_tenant: WaitingByTenant::default(),
        }
    }
}

impl Shape for Local {
    type Event = LocalEvent;

    /// Accepts a task. With a durable store it is queued, and the client
    /// answered, only once its insert is committed.
    fn create(
        manager: &mut Manager<Self>,
        new_task: NewTask,
        data_bytes: u64,
        respond_to: Reply<Arc<Task>>,
    ) {
        if let Some(refused) = manager.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        if let Some(key) = new_task.request_key()
            && let Some(existing) = manager
                .shape
                .request_ids
                .get(&key)
                .and_then(|id| manager.tasks.get(id))
        {
            let answer = if existing.was_created_from(&new_task) {
                Ok(Arc::clone(existing))
            } else {
                Err(ManagerError::RequestIdConflict { request_id: key.1 })
            };
            let id = existing.id;
            if answer.is_ok() && manager.shape.uncommitted.contains(&id) {
                // Answered when the first create's insert is durable.
                manager
                    .persister
                    .defer(Deferred::Created { id, respond_to });
            } else {
                let _ = respond_to.send(answer);
            }
            return;
        }
        match manager.accept_new_task(TaskId::generate(), new_task, data_bytes) {
            Ok(task) => manager.admit(task, Some(respond_to)),
            Err(refused) => {
                let _ = respond_to.send(Err(refused));
            }
        }
    }

    fn create_batch(
        manager: &mut Manager<Self>,
        new_tasks: Vec<(NewTask, u64)>,
        respond_to: Reply<Vec<Arc<Task>>>,
    ) {
        manager.create_local_batch(new_tasks, respond_to);
    }

    fn cancel(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<Arc<Task>>) {
        let answer = manager.cancel(id);
        manager.answer_when_durable(answer, respond_to);
    }

    fn watch(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<TaskWatch>) {
        let _ = respond_to.send(manager.watch(id));
    }

    fn watch_tasks_snapshot(
        manager: &Manager<Self>,
        filter: &TaskFilter,
        after: Option<TaskId>,
    ) -> Option<Vec<Arc<Task>>> {
        // Every task is here: one pass, in the same step as the
        // subscription. Clones of `Arc`s only, so even a large retention
        // holds the loop for a few milliseconds.
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Some(
            manager
                .tasks
                .range((start, Bound::Unbounded))
                .map(|(_, task)| task)
                .filter(|task| filter.matches(task))
                .cloned()
                .collect(),
        )
    }

    fn stop_running(manager: &mut Manager<Self>, reason: String, respond_to: Reply<usize>) {
        let _ = respond_to.send(Ok(manager.cancel_running(&reason)));
    }

    fn changed(
        manager: &mut Manager<Self>,
        task: &Arc<Task>,
        before: TaskStatus,
        status_changed: bool,
    ) {
        if before == TaskStatus::Pending && task.status != TaskStatus::Pending {
            manager.shape.pending -= 1;
        }
        manager
            .shape
            .waiting_by_tenant
            .changed(&task.tenant, Some(before), Some(task.status));
        if before == TaskStatus::Retrying && task.status != TaskStatus::Retrying {
            manager.shape.retrying -= 1;
        } else if before != TaskStatus::Retrying && task.status == TaskStatus::Retrying {
            manager.shape.retrying += 1;
        }
        if before.is_waiting() && !task.status.is_waiting() {
            manager.shape.waiting.remove(task);
        } else if before == TaskStatus::Running && task.status == TaskStatus::Retrying {
            // Runs again once its back-off has passed.
            manager.shape.waiting.add(task);
        }
        manager.publish(task, status_changed);
        manager.announce(task, Before::Status(before));
        if status_changed && task.status.is_terminal() {
            manager.retain_finished(task.id);
        }
    }

    fn result_arrives(manager: &mut Manager<Self>, id: TaskId, bytes: u64) {
        manager.shape.held.add(id, bytes);
    }

    fn start_due(manager: &mut Manager<Self>) {
        manager.start_pending();
    }

    fn run_cut_short(manager: &mut Manager<Self>, id: TaskId, _attempt: u32, _kind: &str) {
        // Still `RUNNING`: it starts again first, as a task recovered from
        // a crash does, once its kind has room.
        manager.shape.recovered.push_back(id);
    }

    fn worker_room_grew(_manager: &mut Manager<Self>) {
        // `start_due` follows every wake of the loop.
    }

    fn housekeeping(manager: &mut Manager<Self>) {
        manager.forget_expired_tasks();
    }

    fn schedule_command(manager: &mut Manager<Self>, command: ScheduleCommand) {
        manager.serve_schedule_command(command);
    }

    fn schedule_create_not_stored(manager: &mut Manager<Self>, id: ScheduleId) {
        manager.schedule_create_not_stored(id);
    }

    fn commit_failed(_manager: &mut Manager<Self>, _batch: &Pending) {
        // Nothing rides on a local commit: its failure is handled in full
        // by the shared core.
    }

    fn committed(manager: &mut Manager<Self>, batch: &Pending, _outcome: &BatchOutcome) {
        // What gathered while this batch was committed starts committing
        // now, before its replies and the start of its tasks (a few
        // hundred of each, a millisecond or more of the loop), so the
        // file's thread writes while the loop works. Nothing in that work
        // must ride on the next commit (a local commit carries no claim),
        // and what it changes goes in the one after, as it would have if
        // a commit were in flight already.
        manager.persister.flush();
        // Durable now, so they may run.
        for task in &batch.inserts {
            manager.shape.uncommitted.remove(&task.id);
            manager.firing_stored(task.id);
            if let Some(task) = manager.tasks.get(&task.id)
                && task.status == TaskStatus::Pending
            {
                manager.shape.waiting.add(task);
            }
        }
        manager.let_go_of_stored_payloads(batch);
    }

    fn roll_back_create(manager: &mut Manager<Self>, id: TaskId) {
        manager.shape.uncommitted.remove(&id);
        manager.firing_not_stored(id);
        let Some(task) = manager.tasks.remove(&id) else {
            return;
        };
        let shape = &mut manager.shape;
        shape.held.release(id);
        if task.status == TaskStatus::Pending {
            shape.pending -= 1;
        }
        shape
            .waiting_by_tenant
            .changed(&task.tenant, Some(task.status), None);
        if let Some(key) = task.request_key()
            && shape.request_ids.get(&key) == Some(&id)
        {
            shape.request_ids.remove(&key);
        }
        manager.watchers.remove(&id);
        // Streams saw it created: they learn it is gone.
        manager.announce(&task, Before::Deleted);
    }

    fn known_request_ids(manager: &Manager<Self>, tenant: &str, request_ids: &[String]) -> usize {
        request_ids
            .iter()
            .filter(|request_id| {
                let key = (tenant.to_owned(), (*request_id).clone());
                manager.shape.request_ids.contains_key(&key)
            })
            .count()
    }

    fn ready_of_kind(manager: &Manager<Self>, kind: &str) -> usize {
        manager.shape.waiting.ready_of(kind)
    }

    fn pending_count(manager: &Manager<Self>) -> usize {
        manager.shape.pending
    }

    fn tenant_waiting(manager: &Manager<Self>, tenant: &str) -> u64 {
        manager.shape.waiting_by_tenant.of(tenant)
    }

    fn shape_stats(manager: &Manager<Self>, stats: &mut ManagerStats) {
        stats.request_ids = manager.shape.request_ids.len();
        stats.retrying = manager.shape.retrying;
        stats.finished = manager.shape.finished.len();
        stats.held_bytes = manager.shape.held.total();
        stats.schedules = manager.shape.schedules.len();
    }

    async fn next_event(&mut self) -> Option<LocalEvent> {
        let schedules_due = self.schedules.wake_at().map(|due| {
            let ahead = due
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + ahead
        });
        tokio::select! {
            ended = self.waiting.next_ended() => Some(LocalEvent::Wait(ended)),
            () = tokio::time::sleep_until(schedules_due.unwrap_or_else(Instant::now)),
                if schedules_due.is_some() => Some(LocalEvent::SchedulesDue),
        }
    }

    fn handle_event(manager: &mut Manager<Self>, event: LocalEvent) {
        let ended = match event {
            LocalEvent::Wait(ended) => ended,
            LocalEvent::SchedulesDue => {
                manager.fire_due_schedules();
                return;
            }
        };
        let Some(task) = manager.tasks.get(&ended.task_id()) else {
            return;
        };
        if !task.status.is_waiting() {
            return;
        }
        match ended {
            WaitEnded::Due(_) => {
                let task = Arc::clone(task);
                manager.shape.waiting.make_ready(&task);
            }
            WaitEnded::QueueTimeout(id) => {
                info!(task_id = %id, "task never started in time");
                manager.transition(id, TaskEvent::QueueTimeout);
            }
        }
    }

    fn delete(manager: &mut Manager<Self>, id: TaskId, respond_to: Reply<()>) {
        match manager.delete(id) {
            Err(refused) => {
                let _ = respond_to.send(Err(refused));
            }
            Ok(()) if manager.persister.has_work() => {
                manager.persister.defer(Deferred::Done(respond_to));
            }
            Ok(()) => {
                let _ = respond_to.send(Ok(()));
            }
        }
    }
}

impl Manager<Local> {
    /// Takes a new task in under `id`, unless the queue or the memory
    /// budget is full: held, counted, and queued (at once, or on a durable
    /// store once its insert is committed). The caller then admits it.
    pub(super) fn accept_new_task(
        &mut self,
        id: TaskId,
        new_task: NewTask,
        data_bytes: u64,
    ) -> Result<Arc<Task>, ManagerError> {
        if self.queue_is_full() {
            return Err(self.queue_full());
        }
        if !self.make_room(data_bytes) {
            return Err(self.memory_full());
        }
        Ok(self.insert_new_task(id, new_task, data_bytes))
    }

    /// Takes a new task in, the queue and the memory budget already
    /// checked.
    pub(super) fn insert_new_task(
        &mut self,
        id: TaskId,
        new_task: NewTask,
        data_bytes: u64,
    ) -> Arc<Task> {
        let task = Arc::new(Task::new(id, new_task, now()));
        let shape = &mut self.shape;
        shape.held.add(id, data_bytes);
        if let Some(key) = task.request_key() {
            shape.request_ids.insert(key, id);
        }
        shape.pending += 1;
        shape
            .waiting_by_tenant
            .changed(&task.tenant, None, Some(task.status));
        if self.persister.is_durable() {
            // Queued once durable (see `committed`).
            shape.uncommitted.insert(id);
        } else {
            shape.waiting.add(&task);
        }
        self.tasks.insert(id, Arc::clone(&task));
        self.announce(&task, Before::Created);
        task
    }

    fn cancel(&mut self, id: TaskId) -> Result<Arc<Task>, ManagerError> {
        let task = self.get(id)?;
        match task.status {
            TaskStatus::Cancelled => Ok(task),
            TaskStatus::Completed | TaskStatus::Failed => Err(ManagerError::NotCancellable {
                id,
                status: task.status,
            }),
            TaskStatus::Pending | TaskStatus::Running | TaskStatus::Retrying => {
                let cancelled = self
                    .transition(id, TaskEvent::Cancel("cancelled by client request".into()))
                    .unwrap_or(task);
                self.stop_run(id, StopReason::Cancelled);
                Ok(cancelled)
            }
        }
    }

    /// Forgets a finished task at once, as retention would.
    fn delete(&mut self, id: TaskId) -> Result<(), ManagerError> {
        let task = self.get(id)?;
        if !task.status.is_terminal() {
            return Err(ManagerError::NotFinished {
                id,
                status: task.status,
            });
        }
        // Its entry in `finished` stays until retention reaches it, where
        // forgetting it again is a no-op.
        self.announce(&task, Before::Deleted);
        self.forget(id);
        Ok(())
    }

    fn watch(&mut self, id: TaskId) -> Result<TaskWatch, ManagerError> {
        let task = self.get(id)?;
        if task.status.is_terminal() {
            // Nothing will change: a channel whose sender is already gone
            // yields this one state and ends.
            let (_, receiver) = watch::channel(WatchState::new(task));
            return Ok(TaskWatch::new(receiver));
        }
        let sender = self
            .watchers
            .entry(id)
            .or_insert_with(|| watch::Sender::new(WatchState::new(Arc::clone(&task))));
        Ok(TaskWatch::new(sender.subscribe()))
    }

    fn cancel_running(&mut self, reason: &str) -> usize {
        let running: Vec<TaskId> = self
            .running
            .keys()
            .copied()
            .filter(|id| self.status_of(*id) == Some(TaskStatus::Running))
            .collect();
        if self.persister.is_durable() {
            // A durable store keeps the task: stop the run, leave the task
            // RUNNING, and the next start runs it again (a new attempt), as
            // after a crash. A deploy does not cancel anybody's work.
            for id in &running {
                if let Some(slot) = self.running.get_mut(id) {
                    slot.interrupted = true;
                }
                self.stop_run(*id, StopReason::ShuttingDown);
            }
            if !running.is_empty() {
                info!(
                    count = running.len(),
                    "running tasks interrupted; they run again when the server starts"
                );
            }
            return running.len();
        }
        for id in &running {
            self.transition(*id, TaskEvent::Cancel(reason.to_owned()));
            self.stop_run(*id, StopReason::ShuttingDown);
        }
        running.len()
    }

    /// Starts waiting tasks while there are free slots: first those that
    /// were running when the last process stopped, then the ready ones,
    /// highest priority first, then oldest first.
    fn start_pending(&mut self) {
        // A task waiting to run again that was cancelled (or forgotten)
        // meanwhile has nothing left to run.
        if !self.shape.recovered.is_empty() {
            let tasks = &self.tasks;
            self.shape.recovered.retain(|id| {
                tasks
                    .get(id)
                    .is_some_and(|task| task.status == TaskStatus::Running)
            });
        }
        while self.free_slots(0) > 0 {
            let node = self.config.node_name.clone();
            // Kinds at their own limit wait, whatever their priority.
            let full: Vec<String> = self
                .kinds_with_room_of_their_own()
                .filter(|kind| self.kind_room(kind, 0, 1) == 0)
                .map(str::to_owned)
                .collect();
            let may_start = |kind: &str| !full.iter().any(|full| full == kind);
            let recovered = self
                .shape
                .recovered
                .iter()
                .position(|id| self.tasks.get(id).is_none_or(|task| may_start(&task.kind)));
            let (task_id, again) = if let Some(task_id) =
                recovered.and_then(|index| self.shape.recovered.remove(index))
            {
                // It was running when the last process died: run it again.
                (task_id, true)
            } else if let Some(task_id) = self.shape.waiting.pop_ready(may_start) {
                (task_id, false)
            } else {
                break;
            };
            // A worker kind's slot is taken first, so the start names the
            // worker in one change.
            let reserved = self.reserve_worker_slot(task_id);
            let node = match &reserved {
                Some(reservation) => format!("{node}/{}", reservation.worker_name()),
                None => node,
            };
            let start = if again {
                TaskEvent::Restart { node }
            } else {
                TaskEvent::Start { node }
            };
            if let Some(task) = self.transition(task_id, start) {
                self.start_run_on(task, reserved);
            }
        }
    }

    /// Keeps a finished task only as long as retention allows.
    fn retain_finished(&mut self, id: TaskId) {
        self.shape.finished.push_back((Instant::now(), id));
        while self.shape.finished.len() > self.config.max_finished_tasks {
            if let Some((_, oldest)) = self.shape.finished.pop_front() {
                self.forget(oldest);
            }
        }
        self.keep_within_budget();
    }

    /// Forgets finished tasks older than the retention period.
    pub(super) fn forget_expired_tasks(&mut self) {
        while let Some((finished_at, id)) = self.shape.finished.front().copied() {
            if finished_at.elapsed() < self.config.retention {
                break;
            }
            self.shape.finished.pop_front();
            self.forget(id);
        }
    }

    /// Removes a finished task and its idempotency key.
    pub(super) fn forget(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.remove(&id) {
            self.shape.held.release(id);
            self.persister.delete(id);
            if let Some(key) = task.request_key()
                && self.shape.request_ids.get(&key) == Some(&id)
            {
                self.shape.request_ids.remove(&key);
            }
            debug!(task_id = %id, "finished task forgotten");
        }
        self.watchers.remove(&id);
    }
}
