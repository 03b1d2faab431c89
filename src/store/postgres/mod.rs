//! PostgreSQL: one database shared by every replica behind a Service.
//!
//! The table is the source of truth. A replica claims pending work in FIFO
//! order with `FOR UPDATE SKIP LOCKED` and holds a lease it renews while the
//! task runs; `LISTEN/NOTIFY` tells every replica about every change, so a
//! watcher on one replica sees a task that runs on another, and a cancel
//! sent to one stops the run on another. Each replica's manager actor is
//! the only writer of that replica: it calls these methods from tasks it
//! spawns, never from its loop.
//!
//! Statements that lock several rows lock them in id order (`ORDER BY id
//! FOR UPDATE`), and inserts take `request_id`s in sorted order, so batches,
//! renewals and cancels of several replicas never deadlock one another.
//! Nothing here knows about the actor or about gRPC.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sqlx::{
    PgPool, Postgres, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

pub use super::{Batch, BatchOutcome, Inserted};
use super::{
    LIST_PAGE_BYTES, ListPage, ListQuery, StoreError, StoreUrl, refuse_newer_schema,
    row::{
        TaskRow, duration_micros, labels_json, status_name, task_columns, task_columns_without_data,
    },
};
use crate::task::{Task, TaskId, TaskStatus};

mod change_log;
mod feed;
mod fresh_starts;
mod schedules;
mod writes;

pub use claims::{ClaimRequest, Claimed, KindRoom};
use claims::{DUE_CHUNK, NextDue, made_ready_sql};

pub use change_log::{ChangeLogStart, ChangesAfter, Watching};
pub use feed::ChangeFeed;
use feed::{
    Announcement, WORK_WAITING, change_payload, deleted_payload, gated_begin, notify,
    notify_through_gate,
};
use fresh_starts::fresh_starts;
pub use schedules::{FIRE_CHUNK, Fired, FiringRound};
pub use workers::WorkerRow;
pub use writes::BatchInserted;
use writes::{delete_finished, insert_tasks, update_tasks};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per replica: a batch commit, claims, renewals, cancels and
/// reads run at once, but each is short.
const MAX_CONNECTIONS: u32 = 10;

/// How long a statement waits for a free connection (or for the database to
/// answer a new one) before the caller hears an error and may retry. Short:
/// while the database is down, a create must hear `UNAVAILABLE` within 2 s,
/// and reads as soon; a healthy pool hands out a connection in microseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A pooled connection idle this long is pinged before it is used again.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long a commit, a probe, a claim, a renewal or a cancel may take
/// before it counts as failed. Creates must hear `UNAVAILABLE` within 2 s
/// when the database is unreachable (a silent network never answers at
/// all); a healthy database answers in milliseconds.
pub const CALL_DEADLINE: Duration = Duration::from_millis(1500);

/// How long a replica that commits nothing goes without checking that the
/// database answers (for health).
const IDLE_PROBE_PERIOD: Duration = Duration::from_secs(2);

/// Every channel name starts with this; the schema name follows, so
/// deployments (and tests) in different schemas of one database do not hear
/// each other.
const CHANNEL_PREFIX: &str = "task_processor_changes_";

/// The largest notification payload we send. PostgreSQL refuses 8000 bytes
/// and more; the margin covers its own framing.
const MAX_PAYLOAD_BYTES: usize = 7000;

/// Rows one retention statement deletes at most, so a large backlog is
/// removed in several short transactions instead of one long one.
const RETENTION_CHUNK: i64 = 10_000;

/// How often an insert is retried when the row that took its `request_id`
/// vanished (retention) between the insert and the lookup.
const INSERT_ROUNDS: usize = 5;

/// The database clock in microseconds since the Unix epoch, as the columns
/// hold it. The database clock, not the replica's, so replicas with skewed
/// clocks agree on leases and retention.
macro_rules! database_micros {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
    };
}

/// The start of a list page's first statement: ids and payload sizes of
/// the rows after `$1` with a status of `$2` (any when empty) and the
/// labels `$3` (any when NULL). Static text, so `concat!` can add the
/// tenant's condition.
macro_rules! list_sizes_select {
    () => {
        "SELECT id, (coalesce(octet_length(data), 0) + coalesce(octet_length(result), 0))::bigint \
         FROM tasks \
         WHERE id > $1 \
           AND (cardinality($2::text[]) = 0 OR status = ANY($2::text[])) \
           AND ($3::text IS NULL OR labels::jsonb @> $3::jsonb)"
    };
}

// After `database_micros!`, which it uses (macros are in scope from where
// they are defined).
mod claims;
mod workers;

/// A new state of a task, as `LISTEN` delivers it to every replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Where the change is in the change log (`task_changes`), which numbers
    /// every replica's changes in commit order; `None` from a replica older
    /// than the log.
    pub position: Option<u64>,
    /// The change deleted the task; `task` is its last state.
    pub deleted: bool,
    /// The node (replica) whose write this was.
    pub origin: String,
    /// The task's new state. `data` is always `None` (it never changes
    /// after create, and may be too large for a notification).
    pub task: Task,
    /// `false` when the task was too large for a notification: `result`
    /// and `error` were left out (`None`, empty), and, if it was still too
    /// large, `description`, `labels` and the progress message too. Status,
    /// attempt, node and revision are always there; read the row for the rest.
    pub complete: bool,
}

/// What the change feed yields.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every event is a change, moved once from the feed to the actor"
)]
pub enum FeedEvent {
    /// A task changed, on any replica.
    Change(Change),
    /// A replica gave tasks back (at shutdown): there is work to claim.
    WorkWaiting,
    /// The connection was lost and made again: changes in between may be
    /// missing, so whatever the listener follows must be read again.
    Gap,
}

/// What a delete found.
#[derive(Clone, Debug, PartialEq)]
pub enum Deleted {
    /// It was finished and is gone.
    Now,
    /// No task has this id.
    NotFound,
    /// It has not finished (it is in this status): kept.
    NotFinished(TaskStatus),
}

/// What a cancel found.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelled {
    /// No task has this id (or retention deleted it).
    NotFound,
    /// It was pending or running and is cancelled now.
    Now(Task),
    /// It was cancelled before: unchanged.
    Already(Task),
    /// It is completed or failed: not cancellable.
    Finished(Task),
}

/// The shared store: a connection pool plus the channel on which this
/// schema's changes are announced. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// The URL without its password, for logs and errors.
    name: Arc<str>,
    /// `BEGIN` and the change log's gate in one round trip ([`gated_begin`]).
    gated_begin: Arc<str>,
    pool: PgPool,
    /// `task_processor_changes_<schema>`: per schema, so separate
    /// deployments in one database do not hear each other.
    channel: Arc<str>,
}

/// The ids of one page, from the ids and payload sizes of up to
/// `limit + 1` matching tasks: at most `limit`, and no more than fit in
/// [`LIST_PAGE_BYTES`] (but always the first); and where the next page
/// starts, if there is one.
fn cut_page(sizes: &[(Uuid, i64)], limit: usize) -> (Vec<Uuid>, Option<TaskId>) {
    let mut ids = Vec::new();
    let mut bytes = 0usize;
    for (id, size) in sizes.iter().take(limit) {
        let size = usize::try_from(*size).unwrap_or(0);
        if !ids.is_empty() && bytes.saturating_add(size) > LIST_PAGE_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        ids.push(*id);
    }
    let next_after = (sizes.len() > ids.len())
        .then(|| ids.last().map(|id| TaskId::from_uuid(*id)))
        .flatten();
    (ids, next_after)
}

impl PostgresStore {
    /// Connects to the database at `url`, refuses a schema written by a newer
    /// task-processor, and brings the schema up to date.
    ///
    /// The URL may choose the schema with
    /// `?options=-c%20search_path%3Dmyschema`. Replicas starting at once are
    /// safe: the migrator holds an advisory lock while it works.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let name = StoreUrl::Postgres(url.to_owned()).to_string();
        let open_error = |source| StoreError::Open {
            store: name.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(open_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx pings every connection it hands out by default: a round
            // trip before every transaction. Only a connection that sat
            // idle is checked; one in use a moment ago is most likely fine,
            // and if the database went away meanwhile the transaction fails
            // and is retried like any other failed write.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE_FOR {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let channel = channel_name(&pool).await.map_err(open_error)?;
        refuse_newer_schema(&name, &MIGRATOR, recorded_version(&pool).await?)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                store: name.clone(),
                source,
            })?;
        Ok(Self {
            name: name.into(),
            gated_begin: gated_begin(&channel).into(),
            pool,
            channel: channel.into(),
        })
    }

    /// A transaction that holds the change log's gate from its first
    /// statement, begun in one round trip: it announces with
    /// [`notify_through_gate`].
    pub(super) async fn begin_gated(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin_with(self.gated_begin.to_string()).await?)
    }

    /// The store as the `store` setting names it, without a password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the database answers: a probe for health while nothing is
    /// written, and for a store that failed.
    pub async fn probe(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Writes one group commit of this replica (`origin`) in one transaction,
    /// and announces every change that was written; the announcements are
    /// delivered when (and only if) the transaction commits, in order.
    ///
    /// An insert whose `request_id` is taken already (by any replica, or by
    /// an earlier insert of this batch) is not stored: its outcome is the
    /// task that holds the key. An update is written only while the row still
    /// belongs to this run (running, same attempt, on `origin`).
    pub async fn commit(&self, origin: &str, batch: &Batch) -> Result<BatchOutcome, StoreError> {
        if !batch.has_task_writes() {
            return Ok(BatchOutcome::default());
        }
        let mut transaction = self.begin_gated().await?;
        let now = SystemTime::now();
        // A claim's first step rides in the update's statement.
        let make_due_ready = batch.claim.as_ref().map(|_| now);
        let (updated, next_due) =
            update_tasks(&mut transaction, origin, &batch.updates, make_due_ready).await?;
        delete_finished(&mut transaction, &batch.deletes).await?;
        // The claim comes before the inserts: it takes the older ready tasks
        // first, and the room it leaves goes to this batch's fresh tasks,
        // which the insert stores running (see `fresh_starts`).
        let mut claim = None;
        let mut starts = HashMap::new();
        let mut lease = Duration::ZERO;
        if let Some(ask) = &batch.claim {
            let request = ClaimRequest {
                node: origin,
                limit: ask.limit,
                lease: ask.lease,
                rooms: &ask.rooms,
                now,
                take_over: ask.take_over,
            };
            let (claimed, claim_payloads) =
                claims::claim_within(&mut transaction, request, next_due).await?;
            starts = fresh_starts(origin, ask, &claimed.tasks, &batch.inserts, now);
            lease = ask.lease;
            claim = Some((claimed, claim_payloads));
        }
        let inserted = insert_tasks(&mut transaction, &batch.inserts, &starts, lease).await?;

        // A change of a task that was not stored (its request_id was taken)
        // or whose run lost the row must not be announced: it did not happen.
        let mut not_written: HashSet<TaskId> = HashSet::new();
        for (task, outcome) in batch.inserts.iter().zip(&inserted) {
            if matches!(outcome, Inserted::Existing(_)) {
                not_written.insert(task.id);
            }
        }
        for (task, written) in batch.updates.iter().zip(&updated) {
            if !written {
                not_written.insert(task.id);
            }
        }
        let mut payloads: Vec<Announcement> = batch
            .changes
            .iter()
            .filter(|task| !not_written.contains(&task.id))
            .filter_map(|task| change_payload(origin, task))
            .collect();
        let claimed = match claim {
            Some((mut claimed, claim_payloads)) => {
                // After the batch's own changes: a task inserted here is
                // announced pending, then running.
                payloads.extend(claim_payloads);
                for task in &batch.inserts {
                    if not_written.contains(&task.id) {
                        continue;
                    }
                    if let Some(started) = starts.remove(&task.id) {
                        payloads.extend(change_payload(origin, &started));
                        claimed.tasks.push(started);
                    }
                }
                claimed.tasks.sort_by_key(Task::start_order);
                Some(claimed)
            }
            None => None,
        };
        notify_through_gate(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(BatchOutcome {
            inserted,
            updated,
            claimed,
        })
    }

    /// Deletes a finished task, and announces it (as done by `origin`) with
    /// its last state. `Ok(None)` when no task has this id; the unfinished
    /// task itself when it has not finished (and is kept).
    pub async fn delete_task(&self, id: TaskId, origin: &str) -> Result<Deleted, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "DELETE FROM tasks WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled') \
             RETURNING ",
            task_columns!()
        ))
        .bind(id.as_uuid())
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = row {
            let task = row.into_task()?;
            let announced: Vec<Announcement> = deleted_payload(origin, &task).into_iter().collect();
            notify(&mut transaction, &self.channel, &announced).await?;
            transaction.commit().await?;
            return Ok(Deleted::Now);
        }
        transaction.rollback().await?;
        Ok(match self.get(id).await? {
            None => Deleted::NotFound,
            Some(task) => Deleted::NotFinished(task.status),
        })
    }

    /// Extends by `lease` (from now, by the database clock) the lease of each
    /// `(task, attempt)` that `node` still holds, and returns those. A task
    /// missing from the answer was cancelled elsewhere or taken over: its
    /// run should stop.
    pub async fn renew(
        &self,
        node: &str,
        running: &[(TaskId, u32)],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = running.iter().map(|(id, _)| *id.as_uuid()).collect();
        let attempts: Vec<i64> = running
            .iter()
            .map(|(_, attempt)| i64::from(*attempt))
            .collect();
        let held: Vec<Uuid> = sqlx::query_scalar(
            "WITH held AS ( \
                 SELECT tasks.id FROM tasks \
                 JOIN UNNEST($2::uuid[], $3::bigint[]) AS running(id, attempt) \
                     ON running.id = tasks.id \
                 WHERE tasks.status = 'running' AND tasks.attempt = running.attempt \
                     AND (tasks.node = $1 OR starts_with(tasks.node, $1 || '/')) \
                 ORDER BY tasks.id \
                 FOR UPDATE OF tasks \
             ) \
             UPDATE tasks SET lease_until = clock_timestamp() + $4 * interval '1 microsecond' \
             WHERE id IN (SELECT id FROM held) \
             RETURNING id",
        )
        .bind(node)
        .bind(ids)
        .bind(attempts)
        .bind(duration_micros(lease))
        .fetch_all(&self.pool)
        .await?;
        let mut held: Vec<TaskId> = held.into_iter().map(TaskId::from_uuid).collect();
        held.sort();
        Ok(held)
    }

    /// Ends the leases `node` still holds on these runs at once, so another
    /// replica takes the tasks over without waiting for the leases to run
    /// out (at shutdown).
    pub async fn release(&self, node: &str, running: &[(TaskId, u32)]) -> Result<(), StoreError> {
        let released = self.renew(node, running, Duration::ZERO).await?;
        if !released.is_empty() {
            // Nothing about the tasks changed, so no change is announced:
            // tell the others there is work to claim now rather than at
            // their next claim of their own.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&*self.channel)
                .bind(WORK_WAITING)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Cancels a pending or running task, whichever replica runs it, and
    /// announces the change (as made by `origin`); the replica running it
    /// hears that and stops the run. One statement decides, so a cancel
    /// racing a completion is either applied or reported as `Finished`.
    pub async fn cancel(
        &self,
        id: TaskId,
        reason: &str,
        origin: &str,
    ) -> Result<Cancelled, StoreError> {
        // PostgreSQL text cannot hold NUL; the domain replaces it the same way.
        let reason = reason.replace('\0', "\u{FFFD}");
        // Twice at most: a task inserted by another replica after this
        // statement's snapshot is invisible to it, but not to the next one.
        for _ in 0..2 {
            let mut transaction = self.pool.begin().await?;
            let row: Option<TaskRow> = sqlx::query_as(concat!(
                "UPDATE tasks SET status = 'cancelled', error = $2, completed_at = ",
                database_micros!(),
                ", revision = revision + 1, lease_until = NULL, due_at = NULL, \
                 queue_deadline = NULL \
                 WHERE id = $1 AND status IN ('pending', 'running', 'retrying') \
                 RETURNING ",
                task_columns!()
            ))
            .bind(id.as_uuid())
            .bind(&reason)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = row {
                let task = row.into_task()?;
                let payloads: Vec<Announcement> =
                    change_payload(origin, &task).into_iter().collect();
                notify(&mut transaction, &self.channel, &payloads).await?;
                transaction.commit().await?;
                return Ok(Cancelled::Now(task));
            }
            transaction.rollback().await?;
            let Some(task) = self.get(id).await? else {
                return Ok(Cancelled::NotFound);
            };
            match task.status {
                TaskStatus::Cancelled => return Ok(Cancelled::Already(task)),
                TaskStatus::Completed | TaskStatus::Failed => return Ok(Cancelled::Finished(task)),
                TaskStatus::Pending | TaskStatus::Running | TaskStatus::Retrying => continue,
            }
        }
        // The row was cancellable twice but the update never saw it: only a
        // broken database does that.
        Err(StoreError::Corrupt {
            id: id.to_string(),
            reason: "a cancellable task could not be cancelled".to_owned(),
        })
    }

    /// The task with this id, whole (with `data`).
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(TaskRow::into_task).transpose()
    }

    /// The tenant of the task with this id ('' for none), without reading
    /// the rest of its row: the manager's ownership check.
    pub async fn tenant_of(&self, id: TaskId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT tenant FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// How many of `tenant`'s tasks wait (pending or retrying), through
    /// the partial index `tasks_tenant_waiting`: for its quota.
    /// How many of `request_ids` name a task of `tenant` (through the
    /// unique index on `(tenant, request_id)`).
    pub async fn count_request_ids_of(
        &self,
        tenant: &str,
        request_ids: &[String],
    ) -> Result<usize, StoreError> {
        if request_ids.is_empty() {
            return Ok(0);
        }
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant = $1 AND request_id = ANY($2)",
        )
        .bind(tenant)
        .bind(request_ids)
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    pub async fn count_waiting_of(&self, tenant: &str) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant = $1 AND status IN ('pending', 'retrying')",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// One page of tasks in creation (id) order, after `query.after`, of
    /// `query.tenant` when it names one.
    ///
    /// Keyset paging on the primary key: tasks created or deleted meanwhile
    /// never shift a page. A `limit` of 0 yields an empty last page.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        if query.limit == 0 {
            return Ok(ListPage {
                tasks: Vec::new(),
                next_after: None,
            });
        }
        let statuses: Vec<&str> = query
            .statuses
            .iter()
            .map(|status| status_name(*status))
            .collect();
        // Label values never hold NUL (validation refuses it), so every
        // row's labels cast to jsonb, whose containment is "has every pair".
        let labels = (!query.labels.is_empty()).then(|| labels_json(&query.labels));
        // The nil UUID sorts first and is never a task id, so "after
        // nothing" is "after nil", and the bound stays an index range even
        // in a generic plan.
        let after = query.after.map_or(Uuid::nil(), |id| *id.as_uuid());
        let fetch = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        // Ids and payload sizes first, without reading a payload (a TOASTed
        // value's length is in its pointer): the page is cut to
        // LIST_PAGE_BYTES before any data is read, so a page of 1000 large
        // tasks never passes through this process whole.
        // Two statements rather than `($5 IS NULL OR tenant = $5)`: a
        // generic plan of that could not use the index on (tenant, id), so
        // a tenant's list reads its own rows only, in id order.
        let sizes: Vec<(Uuid, i64)> = match &query.tenant {
            None => {
                sqlx::query_as(concat!(list_sizes_select!(), " ORDER BY id LIMIT $4"))
                    .bind(after)
                    .bind(statuses)
                    .bind(labels)
                    .bind(fetch)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(tenant) => {
                sqlx::query_as(concat!(
                    list_sizes_select!(),
                    " AND tenant = $5 ORDER BY id LIMIT $4"
                ))
                .bind(after)
                .bind(statuses)
                .bind(labels)
                .bind(fetch)
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let (ids, next_after) = cut_page(&sizes, query.limit);
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        // A task deleted (by retention) between the two reads is left out.
        let tasks = rows
            .into_iter()
            .map(|row| row.into_task().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListPage { tasks, next_after })
    }

    /// How many tasks wait for a retry's back-off (then to be claimed).
    pub async fn count_retrying(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'retrying'")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// How many tasks wait to be claimed, by any replica: the ready ones
    /// and the delayed ones, each counted through its own partial index.
    /// How many tasks of each of `kinds` are ready to start (through the
    /// partial index `tasks_ready`), for the kinds that no worker runs.
    pub async fn count_ready_of_kinds(
        &self,
        kinds: &[String],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM tasks \
             WHERE status IN ('pending', 'retrying') AND due_at IS NULL AND kind = ANY($1) \
             GROUP BY kind",
        )
        .bind(kinds)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, count)| (kind, u64::try_from(count).unwrap_or(0)))
            .collect())
    }

    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM tasks WHERE status = 'pending' AND due_at IS NULL) \
                 + (SELECT count(*) FROM tasks WHERE status = 'pending' AND due_at IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes the finished tasks that finished more than `retention` ago
    /// (by the database clock), and those beyond the newest `max_finished`,
    /// announcing each delete (as done by `origin`); returns how many it
    /// deleted. Never touches an unfinished task.
    ///
    /// Every replica may call this at once: rows another call is deleting
    /// are skipped, not waited for, and the work goes in bounded chunks.
    pub async fn enforce_retention(
        &self,
        origin: &str,
        retention: Duration,
        max_finished: usize,
    ) -> Result<u64, StoreError> {
        let retention = duration_micros(retention);
        let keep = i64::try_from(max_finished).unwrap_or(i64::MAX);
        let mut deleted = 0;
        loop {
            let mut transaction = self.pool.begin().await?;
            // The last state of each, announced with the delete; not its
            // data, which no announcement carries.
            let rows: Vec<TaskRow> = sqlx::query_as(concat!(
                "WITH doomed AS ( \
                     SELECT id FROM tasks \
                     WHERE completed_at IS NOT NULL \
                       AND (completed_at < ",
                database_micros!(),
                " - $1 \
                            OR id IN (SELECT id FROM tasks WHERE completed_at IS NOT NULL \
                                      ORDER BY completed_at DESC, id DESC OFFSET $2)) \
                     LIMIT $3 \
                     FOR UPDATE SKIP LOCKED \
                 ) \
                 DELETE FROM tasks WHERE id IN (SELECT id FROM doomed) \
                 RETURNING ",
                task_columns_without_data!()
            ))
            .bind(retention)
            .bind(keep)
            .bind(RETENTION_CHUNK)
            .fetch_all(&mut *transaction)
            .await?;
            let count = rows.len();
            let mut announced = Vec::with_capacity(count);
            for row in rows {
                announced.extend(deleted_payload(origin, &row.into_task()?));
            }
            notify(&mut transaction, &self.channel, &announced).await?;
            transaction.commit().await?;
            deleted += u64::try_from(count).unwrap_or(u64::MAX);
            if count < usize::try_from(RETENTION_CHUNK).unwrap_or(usize::MAX) {
                return Ok(deleted);
            }
        }
    }

    /// Starts following every replica's changes (this one's too: a caller
    /// that wants only the others' compares `Change::origin`).
    ///
    /// Changes committed before this returns are not delivered: read the
    /// tasks you follow after listening, not before.
    pub async fn listen(&self) -> Result<ChangeFeed, StoreError> {
        ChangeFeed::open(&self.pool, Arc::clone(&self.channel)).await
    }
}

/// `task_processor_changes_<current schema>`. A channel name is an
/// identifier of at most 63 bytes (a longer LISTEN name is cut short while
/// `pg_notify` refuses it), so a long schema name is replaced by its MD5.
async fn channel_name(pool: &PgPool) -> Result<String, sqlx::Error> {
    let channel: Option<String> = sqlx::query_scalar(
        "SELECT CASE \
             WHEN octet_length($1 || current_schema()) <= 63 THEN $1 || current_schema() \
             ELSE $1 || md5(current_schema()) \
         END",
    )
    .bind(CHANNEL_PREFIX)
    .fetch_one(pool)
    .await?;
    channel.ok_or_else(|| {
        sqlx::Error::Configuration(
            "no schema of the search_path exists, so there is nowhere to keep tasks".into(),
        )
    })
}

/// The highest migration version recorded in the schema, if it has any.
async fn recorded_version(pool: &PgPool) -> Result<Option<i64>, StoreError> {
    let has_history: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !has_history {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await?,
    )
}

// The store against a real database is tested in `tests/it/store_postgres`.
impl super::TaskStore for PostgresStore {
    fn commit<'a>(
        &'a self,
        origin: &'a str,
        batch: &'a Batch,
    ) -> futures_util::future::BoxFuture<'a, Result<BatchOutcome, StoreError>> {
        Box::pin(PostgresStore::commit(self, origin, batch))
    }

    fn probe(&self) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(PostgresStore::probe(self))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn call_deadline(&self) -> Option<Duration> {
        Some(CALL_DEADLINE)
    }

    fn idle_probe_period(&self) -> Option<Duration> {
        Some(IDLE_PROBE_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_limit_or_its_bytes_but_always_holds_one_task() {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let sized = |sizes: &[usize]| -> Vec<(Uuid, i64)> {
            ids.iter()
                .zip(sizes)
                .map(|(id, size)| (*id, i64::try_from(*size).expect("small")))
                .collect()
        };
        let mib = 1024 * 1024;
        // All fit, none beyond: the last page.
        assert_eq!(cut_page(&sized(&[1, 2, 3]), 3), (ids[..3].to_vec(), None));
        // One more than the limit matched: the next page starts after it.
        let (page, next) = cut_page(&sized(&[1, 2, 3, 4]), 3);
        assert_eq!(
            (page, next),
            (ids[..3].to_vec(), Some(TaskId::from_uuid(ids[2])))
        );
        // The bytes run out before the limit does.
        let (page, next) = cut_page(&sized(&[2 * mib, 2 * mib, mib, 1]), 10);
        assert_eq!(
            (page, next),
            (ids[..2].to_vec(), Some(TaskId::from_uuid(ids[1])))
        );
        // A task larger than a page goes alone.
        let (page, next) = cut_page(&sized(&[5 * mib, 1]), 10);
        assert_eq!(
            (page, next),
            (ids[..1].to_vec(), Some(TaskId::from_uuid(ids[0])))
        );
    }
}
