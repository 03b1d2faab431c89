//! What one group commit carries, what it did, and the one trait every
//! store's commit sits behind.
//!
//! The manager gathers changes into a [`Batch`] without knowing which store
//! takes it; each store does with the batch what it is for. Memory keeps
//! nothing, SQLite writes a durable copy of what the process holds, and
//! PostgreSQL, the shared truth, writes guarded updates and announces every
//! change to the other replicas.

use std::{fmt, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use super::{
    StoreError,
    postgres::{Claimed, KindRoom},
};
use crate::{
    schedule::{Schedule, ScheduleId},
    task::{Task, TaskId},
};

/// One group commit of a process (on PostgreSQL: of a replica).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// New tasks, in creation order.
    pub inserts: Vec<Arc<Task>>,
    /// The latest state of each stored task that changed. On PostgreSQL
    /// written only where the row still belongs to this replica's run.
    pub updates: Vec<Arc<Task>>,
    /// Finished tasks that retention lets go.
    pub deletes: Vec<TaskId>,
    /// Every state published since the last batch, in order (a task may
    /// appear several times), for a store that announces changes.
    pub changes: Vec<Arc<Task>>,
    /// Schedules to store whole, new or changed (the local shape's: on
    /// SQLite written in the same transaction as the tasks, so a firing's
    /// task and its schedule's next firing are one commit). Memory keeps
    /// nothing; PostgreSQL ignores them, since there the table is the truth
    /// and schedules change through `PostgresStore`'s own calls.
    pub schedule_upserts: Vec<Arc<Schedule>>,
    /// Schedules to forget, after the upserts (a schedule in both is gone).
    pub schedule_deletes: Vec<ScheduleId>,
    /// A claim to make in the same transaction, after the writes: the
    /// slots this batch frees (runs it ends) are filled at once, and tasks
    /// it inserts can be taken straight away, one transaction instead of
    /// two. Only PostgreSQL claims; the other stores never get one.
    pub claim: Option<ClaimAsk>,
}

/// What a claim that rides on a commit asks for (see
/// [`crate::store::postgres::ClaimRequest`]; the claiming replica is the
/// commit's origin, and the time the commit's).
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimAsk {
    pub limit: usize,
    pub lease: Duration,
    pub rooms: Vec<KindRoom>,
    pub take_over: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.changes.is_empty()
            && self.schedule_upserts.is_empty()
            && self.schedule_deletes.is_empty()
    }

    /// Whether the batch has any part besides schedules.
    pub fn has_task_writes(&self) -> bool {
        !(self.inserts.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.changes.is_empty())
    }
}

/// What became of one task of a batch of inserts.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per insert of a batch, read once by the actor; a box would buy nothing"
)]
pub enum Inserted {
    /// Stored now.
    New,
    /// Its `request_id` was taken already (by any replica), or its id (a
    /// commit retried after an unknown outcome): this is the task that holds
    /// it, for the caller to compare with what it asked for.
    Existing(Task),
}

/// What a batch did, in the order of its parts.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    /// One per task of `Batch::inserts`, in order.
    pub inserted: Vec<Inserted>,
    /// One per task of `Batch::updates`: `false` where the run lost the row
    /// (PostgreSQL: cancelled elsewhere, or taken over after its lease ran
    /// out).
    pub updated: Vec<bool>,
    /// What the batch's claim took, when it had one.
    pub claimed: Option<Claimed>,
}

impl BatchOutcome {
    /// Everything in `batch` was written as asked.
    pub fn all_written(batch: &Batch) -> Self {
        Self {
            inserted: vec![Inserted::New; batch.inserts.len()],
            updated: vec![true; batch.updates.len()],
            claimed: None,
        }
    }
}

/// Where a manager commits its batches.
///
/// Implementations never block the caller's thread and are cheap to share;
/// the manager calls them from spawned tasks, never from its loop.
pub trait TaskStore: Send + Sync + fmt::Debug {
    /// Writes `batch` as one transaction, made by this process (`origin`
    /// names it to other replicas); `Ok` means all of it is durable.
    fn commit<'a>(
        &'a self,
        origin: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>>;

    /// Checks that the store takes writes (or answers): cheaper than a
    /// batch, for a store that failed and an idle shared one.
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether a commit makes anything durable, so replies wait for it.
    /// When not, the manager records nothing and never commits.
    fn is_durable(&self) -> bool;

    /// How long a commit or probe may take before it counts as failed;
    /// `None` for a local file, which always answers in the end.
    fn call_deadline(&self) -> Option<Duration>;

    /// How often a store that takes no writes is probed anyway, because
    /// it can go away while nothing is written; `None`: only after a
    /// failure.
    fn idle_probe_period(&self) -> Option<Duration>;
}

/// The store of `--store memory`: nothing is kept beyond the process.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl TaskStore for MemoryStore {
    fn commit<'a>(
        &'a self,
        _origin: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>> {
        Box::pin(std::future::ready(Ok(BatchOutcome::all_written(batch))))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn call_deadline(&self) -> Option<Duration> {
        None
    }

    fn idle_probe_period(&self) -> Option<Duration> {
        None
    }
}
