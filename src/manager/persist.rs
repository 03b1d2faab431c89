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
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{ManagerError, Reply, STORE_CALL_TIMEOUT, StoreHealth};
use crate::{
    metrics::Metrics,
    store::{PostgresStore, SqliteStore, StoreError, Write, postgres, within},
    task::{Task, TaskId},
};

/// The longest wait before a failed commit (or a probe) is tried again:
/// how soon, at worst, the service notices that the store is back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// PostgreSQL: how long a replica that commits nothing goes without
/// checking that the database answers (for health).
const IDLE_PROBE_PERIOD: Duration = Duration::from_secs(2);

/// Where the manager's tasks are persisted.
#[derive(Clone, Debug)]
pub(super) enum Backend {
    /// Nothing is persisted; replies go out at once.
    Memory,
    /// This process owns the file; memory holds every retained task.
    Sqlite(Arc<SqliteStore>),
    /// The database is the truth, shared with other replicas.
    Postgres(PostgresStore),
}

/// A reply that may only be sent once the batch holding its change is
/// durable.
#[derive(Debug)]
pub(super) enum Deferred {
    /// SQLite: a create; the reply is the task as it stands at commit.
    Created {
        id: TaskId,
        respond_to: Reply<Arc<Task>>,
    },
    /// PostgreSQL: the create of `inserts[index]` in this batch.
    Inserted {
        index: usize,
        respond_to: Reply<Arc<Task>>,
    },
    /// An answer already decided (a cancel, a repeated create).
    Answer {
        answer: Result<Arc<Task>, ManagerError>,
        respond_to: Reply<Arc<Task>>,
    },
    /// Someone waits for everything before it to be durable.
    Flushed(Reply<()>),
}

/// What one commit carries.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// SQLite: each task once, with its latest write.
    pub writes: BTreeMap<TaskId, Write>,
    /// SQLite: tasks created in this batch, in creation order; they may run
    /// once it is durable.
    pub created: Vec<TaskId>,
    /// PostgreSQL: new tasks, in creation order.
    pub inserts: Vec<Arc<Task>>,
    /// PostgreSQL: the latest state of each task this replica runs.
    pub updates: BTreeMap<TaskId, Arc<Task>>,
    /// PostgreSQL: every state change, in order, to notify; a progress
    /// update replaces the task's previous one of the same status, as a
    /// watcher may merge them anyway.
    pub changes: Vec<Arc<Task>>,
    /// Where each task's latest entry in `changes` is.
    last_change: HashMap<TaskId, usize>,
    pub replies: Vec<Deferred>,
    /// Nothing to write: check that the store takes writes (or, on
    /// PostgreSQL, answers).
    pub probe: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.inserts.is_empty()
            && self.updates.is_empty()
            && self.changes.is_empty()
            && self.replies.is_empty()
    }

    /// Takes the creates out of the batch: their ids (SQLite) and the
    /// replies that wait for them. What else the batch holds stays.
    fn take_creates(&mut self) -> (Vec<TaskId>, Vec<Deferred>) {
        let created = std::mem::take(&mut self.created);
        for id in &created {
            self.writes.remove(id);
        }
        let created_ids: HashSet<TaskId> = created.iter().copied().collect();
        let inserted: Vec<TaskId> = std::mem::take(&mut self.inserts)
            .iter()
            .map(|task| task.id)
            .collect();
        if !inserted.is_empty() {
            let inserted: HashSet<TaskId> = inserted.into_iter().collect();
            self.changes.retain(|task| !inserted.contains(&task.id));
            self.reindex_changes();
        }
        let (taken, kept) = std::mem::take(&mut self.replies)
            .into_iter()
            .partition(|reply| match reply {
                Deferred::Created { id, .. } => created_ids.contains(id),
                Deferred::Inserted { .. } => true,
                Deferred::Answer { .. } | Deferred::Flushed(_) => false,
            });
        self.replies = kept;
        (created, taken)
    }

    fn reindex_changes(&mut self) {
        self.last_change = self
            .changes
            .iter()
            .enumerate()
            .map(|(position, task)| (task.id, position))
            .collect();
    }

    /// How many task writes the batch carries.
    fn write_count(&self) -> usize {
        self.writes.len() + self.inserts.len() + self.updates.len()
    }

    /// Records a change to notify, merging progress-only ones.
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

    /// Folds a write into the batch so each task is written once.
    fn write(&mut self, write: Write) {
        let id = write.task_id();
        let folded = match (self.writes.remove(&id), write) {
            // Not stored yet: store the latest state whole.
            (Some(Write::Insert(_)), Write::Update(task)) => Write::Insert(task),
            // Created and forgotten before it was ever stored.
            (Some(Write::Insert(_)), Write::Delete(_)) => return,
            (_, write) => write,
        };
        self.writes.insert(id, folded);
    }
}

/// A finished commit, handed back to the actor with what it carried.
#[derive(Debug)]
pub(super) struct Committed {
    pub outcome: Result<Option<postgres::BatchOutcome>, StoreError>,
    pub batch: Pending,
}

#[derive(Debug)]
pub(super) struct Persister {
    backend: Backend,
    metrics: Metrics,
    /// PostgreSQL: the node name written with every change.
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
        backend: Backend,
        node: String,
        metrics: Metrics,
        health: watch::Sender<StoreHealth>,
    ) -> Self {
        Self {
            backend,
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
        !matches!(self.backend, Backend::Memory)
    }

    pub fn write(&mut self, write: Write) {
        if matches!(self.backend, Backend::Sqlite(_)) {
            self.next.write(write);
        }
    }

    pub fn created(&mut self, id: TaskId) {
        self.next.created.push(id);
    }

    /// PostgreSQL: a new task; returns its index in the batch.
    pub fn insert(&mut self, task: Arc<Task>) -> usize {
        self.next.change(Arc::clone(&task));
        self.next.inserts.push(task);
        self.next.inserts.len() - 1
    }

    /// PostgreSQL: a new state of a task this replica runs.
    pub fn update(&mut self, task: Arc<Task>) {
        self.next.change(Arc::clone(&task));
        self.next.updates.insert(task.id, task);
    }

    pub fn defer(&mut self, reply: Deferred) {
        self.next.replies.push(reply);
    }

    pub fn is_committing(&self) -> bool {
        self.in_flight.is_some()
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
        let backend = self.backend.clone();
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        self.in_flight = Some(tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = Instant::now();
            let outcome = commit(&backend, &node, &batch).await;
            if !matches!(backend, Backend::Memory) && !batch.probe {
                metrics.store_committed(batch.write_count(), started.elapsed(), outcome.is_ok());
            }
            Committed { outcome, batch }
        }));
    }

    /// A failing store is probed until it takes writes again; an idle
    /// PostgreSQL replica checks on the database every few seconds.
    fn probe_is_due(&self) -> bool {
        match self.backend {
            Backend::Memory => false,
            Backend::Sqlite(_) => self.failing.is_some(),
            Backend::Postgres(_) => {
                self.failing.is_some() || self.last_success.elapsed() >= IDLE_PROBE_PERIOD
            }
        }
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
        for (id, write) in failed.writes {
            if matches!(write, Write::Insert(_)) {
                continue;
            }
            self.next.writes.entry(id).or_insert(write);
        }
        for (id, task) in failed.updates {
            self.next.updates.entry(id).or_insert(task);
        }
        let mut changes = failed.changes;
        changes.retain(|task| !failed.inserts.iter().any(|insert| insert.id == task.id));
        changes.append(&mut self.next.changes);
        self.next.changes = changes;
        self.next.reindex_changes();
        let mut replies = failed.replies;
        replies.append(&mut self.next.replies);
        self.next.replies = replies;
    }
}

async fn commit(
    backend: &Backend,
    node: &str,
    batch: &Pending,
) -> Result<Option<postgres::BatchOutcome>, StoreError> {
    match backend {
        Backend::Memory => Ok(None),
        Backend::Sqlite(store) if batch.probe => store.probe().await.map(|()| None),
        Backend::Sqlite(store) => {
            let writes: Vec<Write> = batch.writes.values().cloned().collect();
            store.commit(&writes).await.map(|()| None)
        }
        Backend::Postgres(store) if batch.probe => within(STORE_CALL_TIMEOUT, store.probe())
            .await
            .map(|()| Some(postgres::BatchOutcome::default())),
        Backend::Postgres(store) => {
            let pg_batch = postgres::Batch {
                inserts: batch.inserts.clone(),
                updates: batch.updates.values().cloned().collect(),
                changes: batch.changes.clone(),
            };
            within(STORE_CALL_TIMEOUT, store.commit(node, &pg_batch))
                .await
                .map(Some)
        }
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
            name: "t".into(),
            description: String::new(),
            kind: "echo".into(),
            data: None,
            timeout_seconds: 0,
            labels: BTreeMap::new(),
            request_id: None,
        };
        Arc::new(Task::new(TaskId::generate(), new_task, SystemTime::now()))
    }

    #[test]
    fn a_batch_writes_each_task_once_with_its_latest_state() {
        let mut pending = Pending::default();
        let created = task();
        let mut later = (*created).clone();
        later.revision = 2;
        pending.write(Write::Insert(Arc::clone(&created)));
        pending.write(Write::Update(Arc::new(later)));
        match pending.writes.get(&created.id) {
            Some(Write::Insert(task)) => assert_eq!(task.revision, 2),
            other => panic!("expected the insert of the latest state, got {other:?}"),
        }
        pending.write(Write::Delete(created.id));
        assert!(
            pending.writes.is_empty(),
            "created and forgotten: nothing to write"
        );

        let stored = task();
        pending.write(Write::Update(Arc::clone(&stored)));
        pending.write(Write::Delete(stored.id));
        assert!(matches!(
            pending.writes.get(&stored.id),
            Some(Write::Delete(_))
        ));
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
