//! Group commit: the actor records what must be persisted and which replies
//! must wait for it; while one batch is being committed, the next one
//! gathers. The actor never awaits a commit in its loop: a commit runs in a
//! spawned task and its completion comes back as an event.
//!
//! The persister also knows whether the store takes writes. A failed commit
//! marks it failing (health and `/readyz` follow, through [`StoreHealth`]);
//! while it fails, creates are refused at once, and the persister keeps
//! trying: the failed writes again, or a probe when none are left, until one
//! succeeds. On PostgreSQL an idle replica probes now and then too, since a
//! database can go away while nothing is written.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{ManagerError, Reply, StoreHealth};
use crate::{
    metrics::Metrics,
    schedule::{Schedule, ScheduleId},
    store::{Batch, BatchOutcome, ClaimAsk, StoreError, TaskStore, within},
    task::{Task, TaskId},
};

/// The longest wait before a failed commit (or a probe) is tried again:
/// how soon, at worst, the service notices that the store is back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A reply that may only be sent once the batch holding its change is
/// durable.
#[derive(Debug)]
pub(super) enum Deferred {
    /// A create; the answer depends on what became of its insert.
    Created {
        id: TaskId,
        respond_to: Reply<Arc<Task>>,
    },
    /// A batch of creates: answered with these tasks, in order, once
    /// durable (an id may name a task an earlier batch stores).
    BatchCreated {
        ids: Vec<TaskId>,
        respond_to: Reply<Vec<Arc<Task>>>,
    },
    /// An answer already decided (a cancel, a repeated create).
    Answer {
        answer: Result<Arc<Task>, ManagerError>,
        respond_to: Reply<Arc<Task>>,
    },
    /// Someone waits for everything before it to be durable.
    Flushed(Reply<()>),
    /// A change that succeeds once durable (a delete), or fails with the
    /// batch.
    Done(Reply<()>),
    /// A new schedule: answered once durable; taken back if its batch
    /// fails.
    ScheduleCreated {
        schedule: Arc<Schedule>,
        respond_to: Reply<Arc<Schedule>>,
    },
    /// A schedule's change (pause, resume), answered once durable.
    ScheduleAnswer {
        schedule: Arc<Schedule>,
        respond_to: Reply<Arc<Schedule>>,
    },
}

/// What one commit carries, folded so that each task is written once.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// New tasks, in creation order, each in its latest state.
    pub inserts: Vec<Arc<Task>>,
    /// Where each task of `inserts` is.
    insert_at: HashMap<TaskId, usize>,
    /// The latest state of each stored task that changed.
    pub updates: BTreeMap<TaskId, Arc<Task>>,
    /// Stored tasks that retention lets go.
    pub deletes: BTreeSet<TaskId>,
    /// Every state change, in order, for a store that announces them; a
    /// progress update replaces the task's previous one of the same
    /// status, as a watcher may merge them anyway.
    pub changes: Vec<Arc<Task>>,
    /// Where each task's latest entry in `changes` is.
    last_change: HashMap<TaskId, usize>,
    /// Schedules to store whole, new or changed (SQLite: in the same
    /// transaction as the tasks, so a firing's task and its schedule's next
    /// firing are one commit).
    pub schedule_upserts: BTreeMap<ScheduleId, Arc<Schedule>>,
    /// Schedules to forget.
    pub schedule_deletes: BTreeSet<ScheduleId>,
    pub replies: Vec<Deferred>,
    /// Nothing to write: check that the store takes writes (or answers).
    pub probe: bool,
    /// A claim to make in the same transaction (PostgreSQL), attached just
    /// before the batch is committed; never tried again with a failed one.
    pub claim: Option<ClaimAsk>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.changes.is_empty()
            && self.schedule_upserts.is_empty()
            && self.schedule_deletes.is_empty()
            && self.replies.is_empty()
    }

    /// Where `id` is among the inserts of this batch.
    pub fn insert_index(&self, id: TaskId) -> Option<usize> {
        self.insert_at.get(&id).copied()
    }

    /// The batch as the store takes it.
    fn to_batch(&self) -> Batch {
        Batch {
            inserts: self.inserts.clone(),
            updates: self.updates.values().cloned().collect(),
            deletes: self.deletes.iter().copied().collect(),
            changes: self.changes.clone(),
            schedule_upserts: self.schedule_upserts.values().cloned().collect(),
            schedule_deletes: self.schedule_deletes.iter().copied().collect(),
            claim: self.claim.clone(),
        }
    }

    fn insert(&mut self, task: Arc<Task>) {
        self.change(Arc::clone(&task));
        self.insert_at.insert(task.id, self.inserts.len());
        self.inserts.push(task);
    }

    fn update(&mut self, task: Arc<Task>) {
        self.change(Arc::clone(&task));
        match self.insert_at.get(&task.id) {
            // Not stored yet: store the latest state whole.
            Some(&index) => self.inserts[index] = task,
            None => {
                self.updates.insert(task.id, task);
            }
        }
    }

    fn delete(&mut self, id: TaskId) {
        self.updates.remove(&id);
        if self.insert_at.contains_key(&id) {
            // Created and forgotten before it was ever stored.
            self.inserts.retain(|task| task.id != id);
            self.reindex_inserts();
            return;
        }
        self.deletes.insert(id);
    }

    /// Takes the creates out of the batch: their ids, in order, and the
    /// replies that wait for them. What else the batch holds stays.
    fn take_creates(&mut self) -> (Vec<TaskId>, Vec<Deferred>) {
        let created: Vec<TaskId> = std::mem::take(&mut self.inserts)
            .iter()
            .map(|task| task.id)
            .collect();
        self.insert_at.clear();
        let created_ids: HashSet<TaskId> = created.iter().copied().collect();
        if !created_ids.is_empty() {
            self.changes.retain(|task| !created_ids.contains(&task.id));
            self.reindex_changes();
        }
        let (taken, kept) = std::mem::take(&mut self.replies)
            .into_iter()
            .partition(|reply| match reply {
                Deferred::Created { id, .. } => created_ids.contains(id),
                Deferred::Answer { .. }
                | Deferred::BatchCreated { .. }
                | Deferred::Flushed(_)
                | Deferred::Done(_)
                | Deferred::ScheduleCreated { .. }
                | Deferred::ScheduleAnswer { .. } => false,
            });
        self.replies = kept;
        (created, taken)
    }

    fn reindex_inserts(&mut self) {
        self.insert_at = self
            .inserts
            .iter()
            .enumerate()
            .map(|(position, task)| (task.id, position))
            .collect();
    }

    fn reindex_changes(&mut self) {
        self.last_change = self
            .changes
            .iter()
            .enumerate()
            .map(|(position, task)| (task.id, position))
            .collect();
    }

    /// How many writes the batch carries.
    fn write_count(&self) -> usize {
        self.inserts.len()
            + self.updates.len()
            + self.deletes.len()
            + self.schedule_upserts.len()
            + self.schedule_deletes.len()
    }

    fn upsert_schedule(&mut self, schedule: Arc<Schedule>) {
        self.schedule_deletes.remove(&schedule.id);
        self.schedule_upserts.insert(schedule.id, schedule);
    }

    fn delete_schedule(&mut self, id: ScheduleId) {
        self.schedule_upserts.remove(&id);
        self.schedule_deletes.insert(id);
    }

    /// Records a change to announce, merging progress-only ones.
    fn change(&mut self, task: Arc<Task>) {
        if let Some(&position) = self.last_change.get(&task.id)
            && let Some(previous) = self.changes.get_mut(position)
            && previous.status == task.status
            && !task.status.is_terminal()
        {
            *previous = task;
            return;
        }
        self.last_change.insert(task.id, self.changes.len());
        self.changes.push(task);
    }
}

/// A finished commit, handed back to the actor with what it carried.
#[derive(Debug)]
pub(super) struct Committed {
    pub outcome: Result<BatchOutcome, StoreError>,
    pub batch: Pending,
}

#[derive(Debug)]
pub(super) struct Persister {
    store: Arc<dyn TaskStore>,
    /// `store.is_durable()`, asked once: when false nothing is recorded,
    /// nothing committed, and replies never wait.
    durable: bool,
    metrics: Metrics,
    /// The node name written with every change.
    node: String,
    next: Pending,
    in_flight: Option<JoinHandle<Committed>>,
    /// Commits that failed in a row; the next one waits longer.
    failures: u32,
    /// Why the store does not take writes (the whole cause chain), while
    /// it does not.
    failing: Option<String>,
    /// Told to health and readiness whenever `failing` changes.
    health: watch::Sender<StoreHealth>,
    /// When a commit or probe last succeeded.
    last_success: Instant,
}

impl Persister {
    pub fn new(
        store: Arc<dyn TaskStore>,
        node: String,
        metrics: Metrics,
        health: watch::Sender<StoreHealth>,
    ) -> Self {
        Self {
            durable: store.is_durable(),
            store,
            metrics,
            node,
            next: Pending::default(),
            in_flight: None,
            failures: 0,
            failing: None,
            health,
            last_success: Instant::now(),
        }
    }

    /// Why the store does not take writes, while the last commit or probe
    /// failed: creates are refused with it rather than waiting for a store
    /// that is known not to answer.
    pub fn failure(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Takes the creates out of the batch gathering for the next commit,
    /// with the replies that wait for them; see [`Pending::take_creates`].
    pub fn take_creates(&mut self) -> (Vec<TaskId>, Vec<Deferred>) {
        self.next.take_creates()
    }

    /// Whether replies must wait for commits.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// A new task, to insert.
    pub fn insert(&mut self, task: Arc<Task>) {
        if self.durable {
            self.next.insert(task);
        }
    }

    /// A new state of a stored task.
    pub fn update(&mut self, task: Arc<Task>) {
        if self.durable {
            self.next.update(task);
        }
    }

    /// A finished task retention lets go.
    pub fn delete(&mut self, id: TaskId) {
        if self.durable {
            self.next.delete(id);
        }
    }

    /// A schedule to store whole (new or changed).
    pub fn upsert_schedule(&mut self, schedule: Arc<Schedule>) {
        if self.durable {
            self.next.upsert_schedule(schedule);
        }
    }

    /// A schedule to forget.
    pub fn delete_schedule(&mut self, id: ScheduleId) {
        if self.durable {
            self.next.delete_schedule(id);
        }
    }

    pub fn defer(&mut self, reply: Deferred) {
        self.next.replies.push(reply);
    }

    pub fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The batch the next [`Persister::flush`] commits, if it commits one
    /// with task writes now (no commit in flight, no back-off after a
    /// failure): the moment to attach a claim to it.
    pub fn batch_about_to_commit(&mut self) -> Option<&mut Pending> {
        let writes_tasks = !(self.next.inserts.is_empty() && self.next.updates.is_empty());
        (self.in_flight.is_none() && self.failures == 0 && writes_tasks).then_some(&mut self.next)
    }

    /// Writes not yet durable (in flight or gathering).
    pub fn has_work(&self) -> bool {
        self.in_flight.is_some() || !self.next.is_empty()
    }

    /// Starts committing what has gathered, unless a commit is in flight;
    /// with nothing gathered, probes the store when it is due.
    pub fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if self.next.is_empty() {
            if !self.probe_is_due() {
                return;
            }
            self.next.probe = true;
        }
        let batch = std::mem::take(&mut self.next);
        let delay = retry_delay(self.failures);
        let store = Arc::clone(&self.store);
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        let durable = self.durable;
        self.in_flight = Some(tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = Instant::now();
            let outcome = commit(store.as_ref(), &node, &batch).await;
            if durable && !batch.probe {
                metrics.store_committed(batch.write_count(), started.elapsed(), outcome.is_ok());
            }
            Committed { outcome, batch }
        }));
    }

    /// A failing store is probed until it takes writes again; a store that
    /// can go away while nothing is written is checked now and then.
    fn probe_is_due(&self) -> bool {
        if !self.durable {
            return false;
        }
        self.failing.is_some()
            || self
                .store
                .idle_probe_period()
                .is_some_and(|period| self.last_success.elapsed() >= period)
    }

    /// Completes when the commit in flight does; never while none is.
    pub async fn committed(&mut self) -> Committed {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let joined = in_flight.await;
        self.in_flight = None;
        let committed = joined.unwrap_or_else(|error| Committed {
            // The commit task panicked or was cancelled: its batch is lost
            // from here, so report the failure for every reply it held.
            outcome: Err(StoreError::Corrupt {
                id: String::new(),
                reason: format!("the commit task failed: {error}"),
            }),
            batch: Pending::default(),
        });
        match &committed.outcome {
            Ok(_) => {
                self.failures = 0;
                self.last_success = Instant::now();
                if self.failing.take().is_some() {
                    tracing::info!("the task store takes writes again");
                    self.health.send_replace(StoreHealth::Writable);
                }
            }
            Err(failure) => {
                self.failures = self.failures.saturating_add(1);
                // For operators (health logs, `/readyz`): the whole cause.
                let reason = crate::errors::error_chain(failure);
                if self.failing.as_ref() != Some(&reason) {
                    self.health
                        .send_replace(StoreHealth::Failing(reason.clone()));
                }
                self.failing = Some(reason);
            }
        }
        committed
    }

    /// Puts the writes of a failed batch back under the ones gathered since
    /// (which are newer), so they are tried again. Inserts are not retried:
    /// their creates were answered with the failure.
    pub fn retry(&mut self, failed: Pending) {
        for (id, task) in failed.updates {
            self.next.updates.entry(id).or_insert(task);
        }
        for id in failed.deletes {
            self.next.deletes.insert(id);
        }
        for (id, schedule) in failed.schedule_upserts {
            if !self.next.schedule_deletes.contains(&id) {
                self.next.schedule_upserts.entry(id).or_insert(schedule);
            }
        }
        for id in failed.schedule_deletes {
            if !self.next.schedule_upserts.contains_key(&id) {
                self.next.schedule_deletes.insert(id);
            }
        }
        let mut changes = failed.changes;
        changes.retain(|task| !failed.insert_at.contains_key(&task.id));
        changes.append(&mut self.next.changes);
        self.next.changes = changes;
        self.next.reindex_changes();
        let mut replies = failed.replies;
        replies.append(&mut self.next.replies);
        self.next.replies = replies;
    }
}

/// Commits (or probes) within the store's deadline, if it has one.
async fn commit(
    store: &dyn TaskStore,
    node: &str,
    batch: &Pending,
) -> Result<BatchOutcome, StoreError> {
    let call = async {
        if batch.probe {
            store.probe().await.map(|()| BatchOutcome::default())
        } else {
            store.commit(node, &batch.to_batch()).await
        }
    };
    match store.call_deadline() {
        Some(deadline) => within(deadline, call).await,
        None => call.await,
    }
}

/// 0 after a success, then 100 ms doubling up to [`MAX_RETRY_DELAY`].
fn retry_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let millis = 100u64.saturating_mul(1 << failures.min(16).saturating_sub(1));
    Duration::from_millis(millis).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{NewTask, TaskStatus};
    use std::time::SystemTime;

    fn task() -> Arc<Task> {
        let new_task = NewTask {
            tenant: Default::default(),
            name: "t".into(),
            description: String::new(),
            kind: "echo".into(),
            data: None,
            timeout_seconds: 0,
            labels: BTreeMap::new(),
            request_id: None,
            scheduling: Default::default(),
            trace_context: Default::default(),
        };
        Arc::new(Task::new(TaskId::generate(), new_task, SystemTime::now()))
    }

    #[test]
    fn a_batch_writes_each_task_once_with_its_latest_state() {
        let mut pending = Pending::default();
        let created = task();
        let mut later = (*created).clone();
        later.revision = 2;
        pending.insert(Arc::clone(&created));
        pending.update(Arc::new(later));
        assert_eq!(pending.inserts.len(), 1);
        assert_eq!(
            pending.inserts[0].revision, 2,
            "the insert of the latest state"
        );
        assert!(pending.updates.is_empty());
        pending.delete(created.id);
        assert_eq!(
            pending.write_count(),
            0,
            "created and forgotten: nothing to write"
        );

        let stored = task();
        pending.update(Arc::clone(&stored));
        pending.delete(stored.id);
        assert!(pending.updates.is_empty());
        assert!(pending.deletes.contains(&stored.id));
    }

    #[test]
    fn progress_changes_of_one_status_merge_but_status_changes_all_stay() {
        let mut pending = Pending::default();
        let created = task();
        let mut states = vec![Arc::clone(&created)];
        for (revision, status) in [
            (2, TaskStatus::Running),
            (3, TaskStatus::Running),
            (4, TaskStatus::Running),
            (5, TaskStatus::Completed),
        ] {
            let mut next = (*created).clone();
            next.revision = revision;
            next.status = status;
            states.push(Arc::new(next));
        }
        for state in &states {
            pending.change(Arc::clone(state));
        }
        let kept: Vec<(u64, TaskStatus)> = pending
            .changes
            .iter()
            .map(|task| (task.revision, task.status))
            .collect();
        assert_eq!(
            kept,
            [
                (1, TaskStatus::Pending),
                (4, TaskStatus::Running),
                (5, TaskStatus::Completed)
            ]
        );
    }

    #[test]
    fn retries_back_off_up_to_a_ceiling() {
        assert_eq!(retry_delay(0), Duration::ZERO);
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(30), MAX_RETRY_DELAY);
    }
}
