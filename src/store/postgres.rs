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
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use sqlx::{
    PgPool, Postgres, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use uuid::Uuid;

use super::{
    LIST_PAGE_BYTES, ListPage, ListQuery, StoreError, StoreUrl, refuse_newer_schema,
    row::{TaskRow, labels_json, micros, status_name, task_columns},
};
use crate::task::{Progress, Task, TaskId, TaskStatus};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per replica: a batch commit, claims, renewals, cancels and
/// reads run at once, but each is short.
const MAX_CONNECTIONS: u32 = 10;

/// How long a statement waits for a free connection (or for the database to
/// answer a new one) before the caller hears an error and may retry. Short:
/// while the database is down, a create must hear `UNAVAILABLE` within 2 s,
/// and reads as soon; a healthy pool hands out a connection in microseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

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

/// A new state of a task, as `LISTEN` delivers it to every replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
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

/// One group commit of a replica.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// New tasks, in creation order.
    pub inserts: Vec<Arc<Task>>,
    /// The latest state of each task this replica runs; written only where
    /// the row still belongs to this run.
    pub updates: Vec<Arc<Task>>,
    /// Every state published since the last batch, in order (a task may
    /// appear several times): each one that was written is notified.
    pub changes: Vec<Arc<Task>>,
}

/// What a batch did, in the order of its parts.
#[derive(Clone, Debug, Default)]
pub struct BatchOutcome {
    /// One per task of `Batch::inserts`, in order.
    pub inserted: Vec<Inserted>,
    /// `false` where the run lost the row (cancelled elsewhere or taken
    /// over after its lease ran out).
    pub updated: Vec<bool>,
}

/// The shared store: a connection pool plus the channel on which this
/// schema's changes are announced. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// The URL without its password, for logs and errors.
    name: Arc<str>,
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

/// Follows the changes of every replica.
///
/// It holds a connection of its own (not one of the store's pool), since a
/// listening connection is never given back.
#[derive(Debug)]
pub struct ChangeFeed {
    /// A pool of one connection, used by `PgListener` to reconnect.
    pool: PgPool,
    channel: Arc<str>,
    /// `None` after an error: the next call listens anew and reports a gap,
    /// because changes made meanwhile were not heard.
    listener: Option<PgListener>,
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
            pool,
            channel: channel.into(),
        })
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
        if batch.inserts.is_empty() && batch.updates.is_empty() && batch.changes.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let mut transaction = self.pool.begin().await?;
        let inserted = insert_tasks(&mut transaction, &batch.inserts).await?;
        let updated = update_tasks(&mut transaction, origin, &batch.updates).await?;

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
        let payloads: Vec<String> = batch
            .changes
            .iter()
            .filter(|task| !not_written.contains(&task.id))
            .filter_map(|task| change_payload(origin, task))
            .collect();
        notify(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(BatchOutcome { inserted, updated })
    }

    /// Takes up to `limit` tasks for `node` in FIFO order: pending ones, and
    /// running ones whose lease ran out (their replica died) or that never
    /// had one (stored running by an insert, so no replica renews it). Each becomes
    /// running with the next attempt and a lease of `lease`, and is announced.
    ///
    /// `SKIP LOCKED` lets replicas claim at once without waiting on each
    /// other or taking the same task twice. With `kinds`, only tasks of
    /// those kinds are taken: a replica leaves alone what it cannot run (a
    /// kind that only newer replicas know, during a rolling update).
    pub async fn claim(
        &self,
        node: &str,
        limit: usize,
        lease: Duration,
        kinds: Option<&[String]>,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Pending and expired tasks are looked up apart, each through its
        // partial index: one filter over both would walk the primary key
        // past every finished task. Rows locked but not among the first
        // `limit` are let go at commit, untouched. One start time for the
        // whole claim, so start times never contradict the FIFO order.
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "WITH expired AS MATERIALIZED ( \
                 SELECT id FROM tasks \
                 WHERE status = 'running' \
                     AND (lease_until IS NULL OR lease_until < clock_timestamp()) \
                     AND ($4::text[] IS NULL OR kind = ANY($4)) \
                 ORDER BY id LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ), \
             pending AS MATERIALIZED ( \
                 SELECT id FROM tasks WHERE status = 'pending' \
                     AND ($4::text[] IS NULL OR kind = ANY($4)) \
                 ORDER BY id LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ), \
             candidates AS ( \
                 SELECT id FROM expired UNION ALL SELECT id FROM pending \
                 ORDER BY id LIMIT $2 \
             ), \
             started AS MATERIALIZED (SELECT ",
            database_micros!(),
            " AS at) \
             UPDATE tasks SET status = 'running', attempt = attempt + 1, node = $1, \
                 started_at = (SELECT at FROM started), \
                 progress_percent = NULL, progress_message = NULL, \
                 revision = revision + 1, \
                 lease_until = clock_timestamp() + $3 * interval '1 microsecond' \
             WHERE id IN (SELECT id FROM candidates) \
             RETURNING ",
            task_columns!()
        ))
        .bind(node)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(duration_micros(lease))
        .bind(kinds)
        .fetch_all(&mut *transaction)
        .await?;
        let mut tasks = rows
            .into_iter()
            .map(TaskRow::into_task)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING does not keep the order of the candidates.
        tasks.sort_by_key(|task| task.id);
        let payloads: Vec<String> = tasks
            .iter()
            .filter_map(|task| change_payload(node, task))
            .collect();
        notify(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(tasks)
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
                     AND tasks.node = $1 \
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
                ", revision = revision + 1, lease_until = NULL \
                 WHERE id = $1 AND status IN ('pending', 'running') \
                 RETURNING ",
                task_columns!()
            ))
            .bind(id.as_uuid())
            .bind(&reason)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = row {
                let task = row.into_task()?;
                let payloads: Vec<String> = change_payload(origin, &task).into_iter().collect();
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
                TaskStatus::Pending | TaskStatus::Running => continue,
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

    /// One page of tasks in creation (id) order, after `query.after`.
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
        let sizes: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, (coalesce(octet_length(data), 0) + coalesce(octet_length(result), 0))::bigint \
             FROM tasks \
             WHERE id > $1 \
               AND (cardinality($2::text[]) = 0 OR status = ANY($2::text[])) \
               AND ($3::text IS NULL OR labels::jsonb @> $3::jsonb) \
             ORDER BY id \
             LIMIT $4",
        )
        .bind(after)
        .bind(statuses)
        .bind(labels)
        .bind(fetch)
        .fetch_all(&self.pool)
        .await?;
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

    /// How many tasks wait to be claimed, by any replica.
    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes the finished tasks that finished more than `retention` ago
    /// (by the database clock), and those beyond the newest `max_finished`;
    /// returns how many it deleted. Never touches an unfinished task.
    ///
    /// Every replica may call this at once: rows another call is deleting
    /// are skipped, not waited for, and the work goes in bounded chunks.
    pub async fn enforce_retention(
        &self,
        retention: Duration,
        max_finished: usize,
    ) -> Result<u64, StoreError> {
        let retention = duration_micros(retention);
        let keep = i64::try_from(max_finished).unwrap_or(i64::MAX);
        let mut deleted = 0;
        loop {
            let result = sqlx::query(concat!(
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
                 DELETE FROM tasks WHERE id IN (SELECT id FROM doomed)"
            ))
            .bind(retention)
            .bind(keep)
            .bind(RETENTION_CHUNK)
            .execute(&self.pool)
            .await?;
            deleted += result.rows_affected();
            if result.rows_affected() < u64::try_from(RETENTION_CHUNK).unwrap_or(u64::MAX) {
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
        let pool = listener_pool(&self.pool);
        let listener = start_listener(&pool, &self.channel).await?;
        Ok(ChangeFeed {
            pool,
            channel: Arc::clone(&self.channel),
            listener: Some(listener),
        })
    }
}

impl ChangeFeed {
    /// The next change, in commit order; or a gap when the connection was
    /// lost (the listener connects again by itself, but what was announced
    /// meanwhile is gone).
    ///
    /// An error (the database is unreachable) leaves the feed usable: the
    /// next call connects again and yields a gap first. Payloads that cannot
    /// be read are logged and skipped.
    pub async fn next(&mut self) -> Result<FeedEvent, StoreError> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                let listener = start_listener(&self.pool, &self.channel).await?;
                self.listener = Some(listener);
                return Ok(FeedEvent::Gap);
            };
            match listener.try_recv().await {
                Ok(Some(notification)) if notification.payload() == WORK_WAITING => {
                    return Ok(FeedEvent::WorkWaiting);
                }
                Ok(Some(notification)) => match decode_change(notification.payload()) {
                    Ok(change) => return Ok(FeedEvent::Change(change)),
                    Err(reason) => {
                        tracing::warn!(
                            channel = %self.channel,
                            %reason,
                            "skipped a change notification that cannot be read"
                        );
                    }
                },
                Ok(None) => return Ok(FeedEvent::Gap),
                Err(error) => {
                    self.listener = None;
                    return Err(error.into());
                }
            }
        }
    }
}

/// A pool of one connection for a listener, with the store's settings
/// (schema included). A listening connection lives as long as it may.
fn listener_pool(store_pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*store_pool.connect_options()).clone())
}

async fn start_listener(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
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

/// Inserts the batch's new tasks; the outcome of each, in order.
async fn insert_tasks(
    transaction: &mut Transaction<'static, Postgres>,
    tasks: &[Arc<Task>],
) -> Result<Vec<Inserted>, StoreError> {
    // The first task of the batch with a request_id (or an id) is the one
    // that may be stored; the later ones are answered with what holds it.
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    let mut first_with_id: HashMap<TaskId, usize> = HashMap::new();
    let mut candidates: Vec<usize> = Vec::new();
    // Where each task's outcome comes from: the task at this index.
    let mut source: Vec<usize> = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let earlier = task
            .request_id
            .as_deref()
            .and_then(|key| first_with_key.get(key))
            .or_else(|| first_with_id.get(&task.id))
            .copied();
        match earlier {
            Some(first) => source.push(first),
            None => {
                if let Some(key) = task.request_id.as_deref() {
                    first_with_key.insert(key, index);
                }
                first_with_id.insert(task.id, index);
                candidates.push(index);
                source.push(index);
            }
        }
    }
    // Concurrent batches take unique-index entries in the same (sorted)
    // order, so two replicas inserting the same keys wait, never deadlock.
    candidates.sort_by(|left, right| tasks[*left].request_id.cmp(&tasks[*right].request_id));

    let mut stored: HashMap<usize, Inserted> = HashMap::new();
    let mut remaining = candidates;
    for _ in 0..INSERT_ROUNDS {
        if remaining.is_empty() {
            break;
        }
        let rows: Vec<TaskRow> = remaining
            .iter()
            .map(|index| TaskRow::from_task(&tasks[*index]))
            .collect();
        let new_ids: HashSet<Uuid> = insert_rows(transaction, rows).await?;
        let refused: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|index| !new_ids.contains(tasks[*index].id.as_uuid()))
            .collect();
        for index in &remaining {
            if new_ids.contains(tasks[*index].id.as_uuid()) {
                stored.insert(*index, Inserted::New);
            }
        }
        let holders = holders_of(transaction, tasks, &refused).await?;
        remaining = Vec::new();
        for index in refused {
            let task = &tasks[index];
            let holder = task
                .request_id
                .as_deref()
                .and_then(|key| holders.by_request_id.get(key))
                .or_else(|| holders.by_id.get(&task.id));
            match holder {
                Some(holder) => {
                    stored.insert(index, Inserted::Existing(holder.clone()));
                }
                // The row in the way was deleted meanwhile: try again.
                None => remaining.push(index),
            }
        }
    }
    if let Some(index) = remaining.first() {
        return Err(StoreError::Corrupt {
            id: tasks[*index].id.to_string(),
            reason: "its request_id is taken by a row that keeps vanishing".to_owned(),
        });
    }

    // A later task of the batch with a taken key gets the task that holds
    // it: the earlier one as stored, or the one that held the key already.
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut stored_tasks: HashMap<usize, Task> = HashMap::new();
    for (index, first) in source.into_iter().enumerate() {
        if index == first {
            outcomes.push(stored.get(&index).cloned().unwrap_or(Inserted::New));
            continue;
        }
        let holder = match stored.get(&first) {
            Some(Inserted::Existing(holder)) => holder.clone(),
            _ => match stored_tasks.get(&first) {
                Some(task) => task.clone(),
                None => {
                    let task = stored_task(transaction, tasks[first].id).await?;
                    stored_tasks.insert(first, task.clone());
                    task
                }
            },
        };
        outcomes.push(Inserted::Existing(holder));
    }
    Ok(outcomes)
}

/// One multi-row insert (arrays, so one statement whatever the count);
/// returns the ids it stored. Rows that would break a unique key are left out.
async fn insert_rows(
    transaction: &mut Transaction<'static, Postgres>,
    rows: Vec<TaskRow>,
) -> Result<HashSet<Uuid>, StoreError> {
    let mut columns = InsertColumns::default();
    for row in rows {
        columns.push(row);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(concat!(
        "INSERT INTO tasks (",
        task_columns!(),
        ") SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], \
             $12::text[], $13::bigint[], $14::text[], $15::bigint[], $16::text[], \
             $17::bigint[], $18::bigint[], $19::bigint[]) \
         ON CONFLICT DO NOTHING \
         RETURNING id"
    ))
    .bind(columns.id)
    .bind(columns.name)
    .bind(columns.description)
    .bind(columns.kind)
    .bind(columns.status)
    .bind(columns.data)
    .bind(columns.result)
    .bind(columns.error)
    .bind(columns.timeout_seconds)
    .bind(columns.labels)
    .bind(columns.progress_percent)
    .bind(columns.progress_message)
    .bind(columns.attempt)
    .bind(columns.node)
    .bind(columns.revision)
    .bind(columns.request_id)
    .bind(columns.created_at)
    .bind(columns.started_at)
    .bind(columns.completed_at)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(ids.into_iter().collect())
}

/// The rows, one array per column, in `task_columns!()` order.
#[derive(Default)]
struct InsertColumns {
    id: Vec<Uuid>,
    name: Vec<String>,
    description: Vec<String>,
    kind: Vec<String>,
    status: Vec<String>,
    data: Vec<Option<String>>,
    result: Vec<Option<String>>,
    error: Vec<String>,
    timeout_seconds: Vec<i64>,
    labels: Vec<String>,
    progress_percent: Vec<Option<i64>>,
    progress_message: Vec<Option<String>>,
    attempt: Vec<i64>,
    node: Vec<String>,
    revision: Vec<i64>,
    request_id: Vec<Option<String>>,
    created_at: Vec<i64>,
    started_at: Vec<Option<i64>>,
    completed_at: Vec<Option<i64>>,
}

impl InsertColumns {
    fn push(&mut self, row: TaskRow) {
        self.id.push(row.id);
        self.name.push(row.name);
        self.description.push(row.description);
        self.kind.push(row.kind);
        self.status.push(row.status);
        self.data.push(row.data);
        self.result.push(row.result);
        self.error.push(row.error);
        self.timeout_seconds.push(row.timeout_seconds);
        self.labels.push(row.labels);
        self.progress_percent.push(row.progress_percent);
        self.progress_message.push(row.progress_message);
        self.attempt.push(row.attempt);
        self.node.push(row.node);
        self.revision.push(row.revision);
        self.request_id.push(row.request_id);
        self.created_at.push(row.created_at);
        self.started_at.push(row.started_at);
        self.completed_at.push(row.completed_at);
    }
}

/// The stored tasks in the way of refused inserts.
#[derive(Default)]
struct Holders {
    by_request_id: HashMap<String, Task>,
    by_id: HashMap<TaskId, Task>,
}

async fn holders_of(
    transaction: &mut Transaction<'static, Postgres>,
    tasks: &[Arc<Task>],
    refused: &[usize],
) -> Result<Holders, StoreError> {
    let mut holders = Holders::default();
    if refused.is_empty() {
        return Ok(holders);
    }
    let request_ids: Vec<&str> = refused
        .iter()
        .filter_map(|index| tasks[*index].request_id.as_deref())
        .collect();
    let ids: Vec<Uuid> = refused
        .iter()
        .map(|index| *tasks[*index].id.as_uuid())
        .collect();
    // A new statement, so a new snapshot: it sees the rows that other
    // replicas committed while the insert waited for them.
    let rows: Vec<TaskRow> = sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE request_id = ANY($1::text[]) OR id = ANY($2::uuid[])"
    ))
    .bind(request_ids)
    .bind(ids)
    .fetch_all(&mut **transaction)
    .await?;
    for row in rows {
        let task = row.into_task()?;
        if let Some(key) = &task.request_id {
            holders.by_request_id.insert(key.clone(), task.clone());
        }
        holders.by_id.insert(task.id, task);
    }
    Ok(holders)
}

/// A task this transaction has just stored.
async fn stored_task(
    transaction: &mut Transaction<'static, Postgres>,
    id: TaskId,
) -> Result<Task, StoreError> {
    let row: TaskRow = sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1"
    ))
    .bind(id.as_uuid())
    .fetch_one(&mut **transaction)
    .await?;
    row.into_task()
}

/// Writes what a run may change, only where the row still belongs to that
/// run; whether each was written, in order.
async fn update_tasks(
    transaction: &mut Transaction<'static, Postgres>,
    origin: &str,
    tasks: &[Arc<Task>],
) -> Result<Vec<bool>, StoreError> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    // One state per task (the last), so no row is matched twice.
    let mut latest: HashMap<TaskId, &Task> = HashMap::new();
    for task in tasks {
        latest.insert(task.id, task);
    }
    let mut ids = Vec::with_capacity(latest.len());
    let mut statuses = Vec::with_capacity(latest.len());
    let mut results = Vec::with_capacity(latest.len());
    let mut errors = Vec::with_capacity(latest.len());
    let mut progress_percents = Vec::with_capacity(latest.len());
    let mut progress_messages = Vec::with_capacity(latest.len());
    let mut attempts = Vec::with_capacity(latest.len());
    let mut revisions = Vec::with_capacity(latest.len());
    let mut completed_ats = Vec::with_capacity(latest.len());
    // Column by column rather than through `TaskRow`, which would encode
    // `data` (possibly large, never written here) at every progress report.
    for task in latest.values() {
        ids.push(*task.id.as_uuid());
        statuses.push(status_name(task.status));
        results.push(task.result.as_deref().map(JsonValue::to_string));
        errors.push(task.error.as_str());
        progress_percents.push(
            task.progress
                .as_ref()
                .map(|progress| i64::from(progress.percent)),
        );
        progress_messages.push(
            task.progress
                .as_ref()
                .map(|progress| progress.message.as_str()),
        );
        attempts.push(i64::from(task.attempt));
        revisions.push(i64::try_from(task.revision).unwrap_or(i64::MAX));
        completed_ats.push(task.completed_at.map(micros));
    }
    let written: Vec<Uuid> = sqlx::query_scalar(
        "WITH input AS ( \
             SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[]) \
                 AS input(id, status, result, error, progress_percent, progress_message, \
                          attempt, revision, completed_at) \
         ), \
         held AS ( \
             SELECT tasks.id FROM tasks JOIN input ON input.id = tasks.id \
             WHERE tasks.status = 'running' AND tasks.attempt = input.attempt \
                 AND tasks.node = $1 \
             ORDER BY tasks.id \
             FOR UPDATE OF tasks \
         ) \
         UPDATE tasks SET status = input.status, result = input.result, error = input.error, \
             progress_percent = input.progress_percent, \
             progress_message = input.progress_message, \
             revision = input.revision, completed_at = input.completed_at, \
             lease_until = CASE WHEN input.status IN ('completed', 'failed', 'cancelled') \
                 THEN NULL ELSE tasks.lease_until END \
         FROM input \
         WHERE tasks.id = input.id AND tasks.id IN (SELECT id FROM held) \
         RETURNING tasks.id",
    )
    .bind(origin)
    .bind(ids)
    .bind(statuses)
    .bind(results)
    .bind(errors)
    .bind(progress_percents)
    .bind(progress_messages)
    .bind(attempts)
    .bind(revisions)
    .bind(completed_ats)
    .fetch_all(&mut **transaction)
    .await?;
    let written: HashSet<Uuid> = written.into_iter().collect();
    Ok(tasks
        .iter()
        .map(|task| written.contains(task.id.as_uuid()))
        .collect())
}

/// Announces the payloads on `channel`, in order, when the transaction
/// commits.
/// The payload that says tasks were given back; never a change's JSON.
const WORK_WAITING: &str = "work-waiting";

async fn notify(
    transaction: &mut Transaction<'static, Postgres>,
    channel: &str,
    payloads: &[String],
) -> Result<(), StoreError> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_notify($1, payload) \
         FROM UNNEST($2::text[]) WITH ORDINALITY AS payloads(payload, position) \
         ORDER BY position",
    )
    .bind(channel)
    .bind(payloads)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// A task as announced: everything but `data`. Times are nanoseconds since
/// the Unix epoch, so the task read back equals the one published.
#[derive(Serialize, Deserialize)]
struct ChangePayload<'a> {
    #[serde(borrow)]
    origin: Cow<'a, str>,
    complete: bool,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    result: Option<Cow<'a, JsonValue>>,
    #[serde(borrow)]
    error: Cow<'a, str>,
    timeout_seconds: u32,
    labels: Cow<'a, BTreeMap<String, String>>,
    #[serde(borrow)]
    progress: Option<ProgressPayload<'a>>,
    attempt: u32,
    #[serde(borrow)]
    node: Cow<'a, str>,
    revision: u64,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    created_at: i128,
    started_at: Option<i128>,
    completed_at: Option<i128>,
}

#[derive(Serialize, Deserialize)]
struct ProgressPayload<'a> {
    percent: u32,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

impl<'a> ChangePayload<'a> {
    fn of(origin: &'a str, task: &'a Task) -> Self {
        Self {
            origin: Cow::Borrowed(origin),
            complete: true,
            id: Cow::Owned(task.id.to_string()),
            name: Cow::Borrowed(&task.name),
            description: Cow::Borrowed(&task.description),
            kind: Cow::Borrowed(&task.kind),
            status: Cow::Borrowed(status_name(task.status)),
            result: task.result.as_deref().map(Cow::Borrowed),
            error: Cow::Borrowed(&task.error),
            timeout_seconds: task.timeout_seconds,
            labels: Cow::Borrowed(&task.labels),
            progress: task.progress.as_ref().map(|progress| ProgressPayload {
                percent: progress.percent,
                message: Cow::Borrowed(&progress.message),
            }),
            attempt: task.attempt,
            node: Cow::Borrowed(&task.node),
            revision: task.revision,
            request_id: task.request_id.as_deref().map(Cow::Borrowed),
            created_at: nanos(task.created_at),
            started_at: task.started_at.map(nanos),
            completed_at: task.completed_at.map(nanos),
        }
    }

    fn into_change(self) -> Result<Change, String> {
        let id = Uuid::try_parse(&self.id).map_err(|error| format!("bad id: {error}"))?;
        let status = TaskStatus::ALL
            .into_iter()
            .find(|status| status_name(*status) == self.status)
            .ok_or_else(|| format!("unknown status {:?}", self.status))?;
        Ok(Change {
            origin: self.origin.into_owned(),
            complete: self.complete,
            task: Task {
                id: TaskId::from_uuid(id),
                name: self.name.into_owned(),
                description: self.description.into_owned(),
                kind: self.kind.into_owned(),
                status,
                data: None,
                result: self.result.map(|result| Arc::new(result.into_owned())),
                error: self.error.into_owned(),
                timeout_seconds: self.timeout_seconds,
                labels: self.labels.into_owned(),
                progress: self.progress.map(|progress| Progress {
                    percent: progress.percent,
                    message: progress.message.into_owned(),
                }),
                attempt: self.attempt,
                node: self.node.into_owned(),
                revision: self.revision,
                request_id: self.request_id.map(Cow::into_owned),
                created_at: from_nanos(self.created_at),
                started_at: self.started_at.map(from_nanos),
                completed_at: self.completed_at.map(from_nanos),
                payload: crate::task::PayloadLocation::InTask,
            },
        })
    }
}

/// The notification text for `task` as changed by `origin`, small enough
/// for PostgreSQL. Too large whole, it leaves out `result` and `error`
/// (`complete: false`); still too large (a huge description, labels or
/// progress message), those go too. `None` (logged) only when even that
/// does not fit, which no valid task reaches.
fn change_payload(origin: &str, task: &Task) -> Option<String> {
    let mut payload = ChangePayload::of(origin, task);
    let mut text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    payload.complete = false;
    payload.result = None;
    payload.error = Cow::Borrowed("");
    text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    payload.description = Cow::Borrowed("");
    payload.labels = Cow::Owned(BTreeMap::new());
    if let Some(progress) = payload.progress.as_mut() {
        progress.message = Cow::Borrowed("");
    }
    text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    tracing::warn!(
        task_id = %task.id,
        bytes = text.len(),
        "a change is too large to announce even without its large fields; other replicas \
         will not hear of it"
    );
    None
}

fn encode_payload(payload: &ChangePayload<'_>, id: TaskId) -> Option<String> {
    match serde_json::to_string(payload) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::warn!(task_id = %id, %error, "a change cannot be encoded; not announced");
            None
        }
    }
}

fn decode_change(text: &str) -> Result<Change, String> {
    let payload: ChangePayload<'_> =
        serde_json::from_str(text).map_err(|error| format!("not a change: {error}"))?;
    payload.into_change()
}

/// Nanoseconds since the Unix epoch (negative before it).
fn nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn from_nanos(value: i128) -> SystemTime {
    let magnitude = value.unsigned_abs();
    let seconds = u64::try_from(magnitude / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let subsec = u32::try_from(magnitude % 1_000_000_000).unwrap_or(0);
    let duration = Duration::new(seconds, subsec);
    if value >= 0 {
        UNIX_EPOCH.checked_add(duration).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(duration).unwrap_or(UNIX_EPOCH)
    }
}

/// A lease or retention as whole microseconds, for `interval` arithmetic.
fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;
    use sqlx::{Connection, PgConnection};

    use super::*;
    use crate::task::{NewTask, TaskEvent};

    const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// How long a test waits for something that should happen at once.
    const PATIENCE: Duration = Duration::from_secs(10);

    const HOUR: Duration = Duration::from_secs(3600);

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

    /// A schema of one test's own, dropped when the test ends, even by a
    /// panic.
    struct TestSchema {
        base_url: String,
        schema: String,
        /// The base URL with the schema as its search_path.
        url: String,
    }

    impl TestSchema {
        /// `None` (after saying so on stderr) when there is no PostgreSQL to
        /// test against, unless `CI=true`, where that is a failure.
        async fn create(test: &str) -> Option<Self> {
            let base_url = std::env::var("TASK_PROCESSOR_TEST_POSTGRES")
                .unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
            let shown = StoreUrl::Postgres(base_url.clone()).to_string();
            let reason = match tokio::time::timeout(PATIENCE, PgConnection::connect(&base_url))
                .await
            {
                Ok(Ok(mut connection)) => {
                    let schema = format!("tp_lib_{}", Uuid::now_v7().simple());
                    sqlx::query(&format!("CREATE SCHEMA {schema}"))
                        .execute(&mut connection)
                        .await
                        .expect("create the test schema");
                    let _ = connection.close().await;
                    let separator = if base_url.contains('?') { '&' } else { '?' };
                    let url = format!("{base_url}{separator}options=-c%20search_path%3D{schema}");
                    return Some(Self {
                        base_url,
                        schema,
                        url,
                    });
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {PATIENCE:?}"),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {shown} is unreachable ({reason}), and CI=true");
            }
            // Straight to stderr: libtest captures print macros.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED store::postgres::tests::{test}: PostgreSQL at {shown} is unreachable \
                 ({reason}); set TASK_PROCESSOR_TEST_POSTGRES to test against one"
            );
            None
        }

        async fn store(&self) -> PostgresStore {
            PostgresStore::connect(&self.url).await.expect("connect")
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            // Best effort, on a thread of its own: Drop cannot await, and the
            // test's runtime may be unwinding.
            let base_url = self.base_url.clone();
            let statement = format!(
                "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema
            );
            let dropper = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    if let Ok(mut connection) = PgConnection::connect(&base_url).await {
                        let _ = sqlx::raw_sql(statement.as_str())
                            .execute(&mut connection)
                            .await;
                        let _ = connection.close().await;
                    }
                });
            });
            let _ = dropper.join();
        }
    }

    /// Opens a test schema and its store, or skips the test.
    macro_rules! store_or_skip {
        ($test:literal) => {{
            let Some(schema) = TestSchema::create($test).await else {
                return;
            };
            let store = schema.store().await;
            (schema, store)
        }};
    }

    /// Now, to the microsecond the columns keep, so a task read back
    /// equals the one written.
    fn now() -> SystemTime {
        let micros = micros(SystemTime::now());
        UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).expect("after 1970"))
    }

    fn task(name: &str) -> Task {
        Task::new(
            TaskId::generate(),
            NewTask {
                name: name.to_owned(),
                description: format!("the {name} task"),
                kind: "echo".to_owned(),
                data: Some(Arc::new(json!({"name": name, "n": 1}))),
                timeout_seconds: 60,
                labels: BTreeMap::new(),
                request_id: None,
            },
            now(),
        )
    }

    fn with_request_id(mut task: Task, request_id: &str) -> Task {
        task.request_id = Some(request_id.to_owned());
        task
    }

    fn with_labels(mut task: Task, labels: &[(&str, &str)]) -> Task {
        task.labels = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        task
    }

    /// A task that finished `ago` before now, as if it ran and completed.
    fn finished(name: &str, ago: Duration) -> Task {
        let mut task = task(name);
        let completed_at = now() - ago;
        task.status = TaskStatus::Completed;
        task.result = Some(Arc::new(json!("done")));
        task.attempt = 1;
        task.node = "n0".to_owned();
        task.revision = 3;
        task.started_at = Some(completed_at);
        task.completed_at = Some(completed_at);
        task
    }

    fn applied(task: &Task, event: TaskEvent) -> Task {
        let mut next = task.clone();
        next.apply(event, SystemTime::now()).expect("legal event");
        next
    }

    fn without_data(task: &Task) -> Task {
        let mut task = task.clone();
        task.data = None;
        task
    }

    async fn insert(store: &PostgresStore, tasks: &[Task]) -> Vec<Inserted> {
        let tasks: Vec<Arc<Task>> = tasks.iter().cloned().map(Arc::new).collect();
        let batch = Batch {
            inserts: tasks.clone(),
            updates: Vec::new(),
            changes: tasks,
        };
        store.commit("api", &batch).await.expect("commit").inserted
    }

    async fn update(store: &PostgresStore, origin: &str, task: &Task) -> bool {
        let task = Arc::new(task.clone());
        let batch = Batch {
            inserts: Vec::new(),
            updates: vec![Arc::clone(&task)],
            changes: vec![task],
        };
        let outcome = store.commit(origin, &batch).await.expect("commit");
        outcome.updated == [true]
    }

    async fn next_change(feed: &mut ChangeFeed) -> Change {
        match tokio::time::timeout(PATIENCE, feed.next()).await {
            Ok(Ok(FeedEvent::Change(change))) => change,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    async fn expire_lease(store: &PostgresStore, id: TaskId) {
        sqlx::query("UPDATE tasks SET lease_until = now() - interval '1 hour' WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&store.pool)
            .await
            .expect("expire the lease");
    }

    async fn lease_until_is_null(store: &PostgresStore, id: TaskId) -> bool {
        sqlx::query_scalar("SELECT lease_until IS NULL FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_one(&store.pool)
            .await
            .expect("read the lease")
    }

    fn ids(tasks: &[Task]) -> Vec<TaskId> {
        tasks.iter().map(|task| task.id).collect()
    }

    #[tokio::test]
    async fn tasks_round_trip_and_list_in_keyset_pages_with_filters() {
        let (_schema, store) =
            store_or_skip!("tasks_round_trip_and_list_in_keyset_pages_with_filters");
        let mut first = with_labels(task("first"), &[("team", "a"), ("env", "prod")]);
        first.data = Some(Arc::new(json!({"text": "a\u{0}b", "deep": [[1.5, null]]})));
        first.request_id = Some("request-1".to_owned());
        let second = with_labels(task("second"), &[("team", "a")]);
        let third = with_labels(task("third"), &[("team", "b"), ("env", "prod")]);
        let fourth = finished("fourth", Duration::from_secs(1));
        let fifth = with_labels(task("fifth"), &[("team", "a"), ("env", "prod"), ("x", "y")]);
        let all = [first, second, third, fourth, fifth];
        let outcomes = insert(&store, &all).await;
        assert_eq!(outcomes, vec![Inserted::New; 5]);

        for task in &all {
            assert_eq!(store.get(task.id).await.expect("get").as_ref(), Some(task));
        }
        assert_eq!(store.get(TaskId::generate()).await.expect("get"), None);
        assert_eq!(store.count_pending().await.expect("count"), 4);

        let list = |statuses: Vec<TaskStatus>, labels: &[(&str, &str)], after, limit| ListQuery {
            statuses,
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            after,
            limit,
        };
        let names = |page: &ListPage| -> Vec<String> {
            page.tasks.iter().map(|task| task.name.clone()).collect()
        };

        // Everything, in pages of two.
        let page = store.list(&list(vec![], &[], None, 2)).await.expect("list");
        assert_eq!(names(&page), ["first", "second"]);
        assert_eq!(*page.tasks[0], all[0]);
        assert_eq!(page.next_after, Some(all[1].id));
        let page = store
            .list(&list(vec![], &[], page.next_after, 2))
            .await
            .expect("list");
        assert_eq!(names(&page), ["third", "fourth"]);
        assert_eq!(page.next_after, Some(all[3].id));
        let page = store
            .list(&list(vec![], &[], page.next_after, 2))
            .await
            .expect("list");
        assert_eq!(names(&page), ["fifth"]);
        assert_eq!(page.next_after, None);
        // A page that ends exactly at the last match is the last page.
        let page = store.list(&list(vec![], &[], None, 5)).await.expect("list");
        assert_eq!(page.tasks.len(), 5);
        assert_eq!(page.next_after, None);

        // Labels: every pair must match.
        let page = store
            .list(&list(vec![], &[("team", "a"), ("env", "prod")], None, 10))
            .await
            .expect("list");
        assert_eq!(names(&page), ["first", "fifth"]);
        let page = store
            .list(&list(vec![], &[("team", "a"), ("env", "prod")], None, 1))
            .await
            .expect("list");
        assert_eq!(names(&page), ["first"]);
        assert_eq!(page.next_after, Some(all[0].id));
        let page = store
            .list(&list(
                vec![],
                &[("team", "a"), ("env", "prod")],
                page.next_after,
                1,
            ))
            .await
            .expect("list");
        assert_eq!(names(&page), ["fifth"]);
        assert_eq!(page.next_after, None);
        let page = store
            .list(&list(vec![], &[("team", "c")], None, 10))
            .await
            .expect("list");
        assert!(page.tasks.is_empty());

        // Statuses, alone and with labels.
        let page = store
            .list(&list(vec![TaskStatus::Completed], &[], None, 10))
            .await
            .expect("list");
        assert_eq!(names(&page), ["fourth"]);
        let page = store
            .list(&list(
                vec![TaskStatus::Completed, TaskStatus::Pending],
                &[("env", "prod")],
                None,
                10,
            ))
            .await
            .expect("list");
        assert_eq!(names(&page), ["first", "third", "fifth"]);
        let page = store
            .list(&list(vec![TaskStatus::Running], &[], None, 10))
            .await
            .expect("list");
        assert!(page.tasks.is_empty());
    }

    #[tokio::test]
    async fn a_taken_request_id_returns_the_task_that_holds_it() {
        let (_schema, store) = store_or_skip!("a_taken_request_id_returns_the_task_that_holds_it");
        let original = with_request_id(task("original"), "key-1");
        assert_eq!(
            insert(&store, std::slice::from_ref(&original)).await,
            [Inserted::New]
        );

        // Across batches.
        let again = with_request_id(task("again"), "key-1");
        let other = with_request_id(task("other"), "key-2");
        let outcomes = insert(&store, &[again.clone(), other.clone()]).await;
        assert_eq!(
            outcomes,
            [Inserted::Existing(original.clone()), Inserted::New]
        );
        assert_eq!(store.get(again.id).await.expect("get"), None);

        // Inside one batch: the first wins, the later ones get it.
        let one = with_request_id(task("one"), "key-3");
        let two = with_request_id(task("two"), "key-3");
        let plain = task("plain");
        let three = with_request_id(task("three"), "key-3");
        let also_original = with_request_id(task("also original"), "key-1");
        let outcomes = insert(
            &store,
            &[
                one.clone(),
                two.clone(),
                plain.clone(),
                three.clone(),
                also_original,
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            [
                Inserted::New,
                Inserted::Existing(one.clone()),
                Inserted::New,
                Inserted::Existing(one.clone()),
                Inserted::Existing(original),
            ]
        );
        assert_eq!(store.get(two.id).await.expect("get"), None);
        assert_eq!(store.get(three.id).await.expect("get"), None);
        assert_eq!(store.get(plain.id).await.expect("get"), Some(plain));

        // A batch that repeats a stored task (a retried commit) is told so.
        assert_eq!(
            insert(&store, std::slice::from_ref(&other)).await,
            [Inserted::Existing(other)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_inserts_of_one_request_id_store_one_task() {
        let (_schema, store) =
            store_or_skip!("concurrent_inserts_of_one_request_id_store_one_task");
        let mut inserts = tokio::task::JoinSet::new();
        for index in 0..20 {
            let store = store.clone();
            inserts.spawn(async move {
                let task = with_request_id(task(&format!("racer {index}")), "the-key");
                let outcome = insert(&store, std::slice::from_ref(&task)).await;
                (task, outcome)
            });
        }
        let mut winners = Vec::new();
        let mut holders = Vec::new();
        while let Some(joined) = inserts.join_next().await {
            let (task, outcome) = joined.expect("insert task");
            match outcome.as_slice() {
                [Inserted::New] => winners.push(task),
                [Inserted::Existing(holder)] => holders.push(holder.clone()),
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one insert stores the task");
        assert_eq!(holders.len(), 19);
        assert!(holders.iter().all(|holder| *holder == winners[0]));
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(rows, 1);
    }

    #[tokio::test]
    async fn a_claim_for_some_kinds_leaves_the_others_waiting() {
        let (_schema, store) = store_or_skip!("a_claim_for_some_kinds_leaves_the_others_waiting");
        let mut unknown = task("new kind");
        unknown.kind = "added-later".to_owned();
        let known = task("known");
        insert(&store, &[unknown.clone(), known.clone()]).await;
        let kinds = ["echo".to_owned(), "sleep".to_owned()];
        let claimed = store
            .claim("old", 10, HOUR, Some(&kinds))
            .await
            .expect("claim");
        assert_eq!(ids(&claimed), [known.id]);
        let later = store.claim("new", 10, HOUR, None).await.expect("claim");
        assert_eq!(ids(&later), [unknown.id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn claims_are_fifo_and_concurrent_claims_never_share_a_task() {
        let (_schema, store) =
            store_or_skip!("claims_are_fifo_and_concurrent_claims_never_share_a_task");
        assert!(
            store
                .claim("n1", 0, HOUR, None)
                .await
                .expect("claim")
                .is_empty()
        );
        let tasks: Vec<Task> = (0..5).map(|index| task(&format!("t{index}"))).collect();
        insert(&store, &tasks).await;

        let claimed = store.claim("n1", 3, HOUR, None).await.expect("claim");
        assert_eq!(ids(&claimed), ids(&tasks[..3]));
        for (claimed, original) in claimed.iter().zip(&tasks) {
            assert_eq!(claimed.status, TaskStatus::Running);
            assert_eq!(claimed.attempt, 1);
            assert_eq!(claimed.node, "n1");
            assert_eq!(claimed.revision, 2);
            assert_eq!(claimed.progress, None);
            assert!(
                claimed
                    .started_at
                    .is_some_and(|started| started >= original.created_at)
            );
            assert_eq!(claimed.data, original.data);
            assert_eq!(
                store.get(claimed.id).await.expect("get").as_ref(),
                Some(claimed)
            );
        }
        assert_eq!(store.count_pending().await.expect("count"), 2);
        let rest = store.claim("n2", 10, HOUR, None).await.expect("claim");
        assert_eq!(ids(&rest), ids(&tasks[3..]));
        assert!(
            store
                .claim("n2", 10, HOUR, None)
                .await
                .expect("claim")
                .is_empty()
        );

        // Two replicas claiming at once split the work without overlap.
        let many: Vec<Task> = (0..60).map(|index| task(&format!("m{index}"))).collect();
        insert(&store, &many).await;
        let (left, right) = tokio::join!(
            store.claim("left", 40, HOUR, None),
            store.claim("right", 40, HOUR, None)
        );
        let (left, right) = (left.expect("claim"), right.expect("claim"));
        let mut all: Vec<TaskId> = ids(&left).into_iter().chain(ids(&right)).collect();
        assert_eq!(all.len(), 60, "{} + {}", left.len(), right.len());
        all.sort();
        all.dedup();
        assert_eq!(all, ids(&many), "no task was claimed twice");
        for claimed in [&left, &right] {
            assert!(claimed.windows(2).all(|pair| pair[0].id < pair[1].id));
        }
    }

    #[tokio::test]
    async fn claims_take_over_expired_leases_only() {
        let (_schema, store) = store_or_skip!("claims_take_over_expired_leases_only");
        let (dead, alive) = (task("dead"), task("alive"));
        insert(&store, &[dead.clone(), alive.clone()]).await;
        let claimed = store.claim("n1", 2, HOUR, None).await.expect("claim");
        assert_eq!(ids(&claimed), [dead.id, alive.id]);

        // A live lease keeps the task where it is.
        assert!(
            store
                .claim("n2", 10, HOUR, None)
                .await
                .expect("claim")
                .is_empty()
        );

        expire_lease(&store, dead.id).await;
        let taken = store.claim("n2", 10, HOUR, None).await.expect("claim");
        assert_eq!(ids(&taken), [dead.id]);
        assert_eq!(taken[0].attempt, 2);
        assert_eq!(taken[0].node, "n2");
        assert_eq!(taken[0].revision, 3);

        // A lease of zero runs out at once.
        let quick = task("quick");
        insert(&store, std::slice::from_ref(&quick)).await;
        let first = store
            .claim("n1", 1, Duration::ZERO, None)
            .await
            .expect("claim");
        assert_eq!(ids(&first), [quick.id]);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let second = loop {
            let second = store.claim("n2", 1, HOUR, None).await.expect("claim");
            if !second.is_empty() || tokio::time::Instant::now() > deadline {
                break second;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(ids(&second), [quick.id]);
        assert_eq!(second[0].attempt, 2);
    }

    #[tokio::test]
    async fn updates_are_written_only_while_the_run_holds_the_task() {
        let (_schema, store) =
            store_or_skip!("updates_are_written_only_while_the_run_holds_the_task");
        let (taken, cancelled, kept) = (task("taken"), task("cancelled"), task("kept"));
        insert(&store, &[taken.clone(), cancelled.clone(), kept.clone()]).await;
        let claimed = store.claim("n1", 3, HOUR, None).await.expect("claim");
        let [run_taken, run_cancelled, run_kept] = <[Task; 3]>::try_from(claimed).expect("three");

        // Progress is written while held; a terminal state clears the lease.
        let progressed = applied(
            &run_kept,
            TaskEvent::Progress(Progress {
                percent: 50,
                message: "half".to_owned(),
            }),
        );
        assert!(update(&store, "n1", &progressed).await);
        assert_eq!(
            store
                .get(kept.id)
                .await
                .expect("get")
                .expect("row")
                .progress,
            progressed.progress
        );
        assert!(!lease_until_is_null(&store, kept.id).await);
        // Another node cannot write it.
        assert!(!update(&store, "n2", &progressed).await);
        let completed = applied(
            &progressed,
            TaskEvent::Complete(Arc::new(json!({"ok": true}))),
        );
        assert!(update(&store, "n1", &completed).await);
        let stored = store.get(kept.id).await.expect("get").expect("row");
        assert_eq!(stored.status, TaskStatus::Completed);
        assert_eq!(stored.result, completed.result);
        assert_eq!(stored.revision, completed.revision);
        assert!(lease_until_is_null(&store, kept.id).await);
        // Finished: nothing more is written.
        assert!(!update(&store, "n1", &completed).await);

        // Taken over after the lease ran out: the old run's update is refused.
        expire_lease(&store, taken.id).await;
        let retaken = store.claim("n2", 1, HOUR, None).await.expect("claim");
        assert_eq!(ids(&retaken), [taken.id]);
        let late = applied(&run_taken, TaskEvent::Complete(Arc::new(json!("late"))));
        assert!(!update(&store, "n1", &late).await);
        let current = applied(&retaken[0], TaskEvent::Fail("boom".to_owned()));
        assert!(update(&store, "n2", &current).await);
        assert_eq!(
            store.get(taken.id).await.expect("get").expect("row").error,
            "boom"
        );

        // Cancelled elsewhere: refused too, and the batch goes on.
        let outcome = store
            .cancel(cancelled.id, "stop", "api")
            .await
            .expect("cancel");
        assert!(matches!(outcome, Cancelled::Now(_)));
        let late = applied(&run_cancelled, TaskEvent::Complete(Arc::new(json!("late"))));
        let fresh = task("fresh");
        let batch = Batch {
            inserts: vec![Arc::new(fresh.clone())],
            updates: vec![Arc::new(late)],
            changes: Vec::new(),
        };
        let outcome = store.commit("n1", &batch).await.expect("commit");
        assert_eq!(outcome.inserted, [Inserted::New]);
        assert_eq!(outcome.updated, [false]);
        let stored = store.get(cancelled.id).await.expect("get").expect("row");
        assert_eq!(stored.status, TaskStatus::Cancelled);
        assert_eq!(stored.result, None);
        assert_eq!(store.get(fresh.id).await.expect("get"), Some(fresh));
    }

    #[tokio::test]
    async fn renew_keeps_only_the_runs_still_held_and_release_lets_them_go() {
        let (_schema, store) =
            store_or_skip!("renew_keeps_only_the_runs_still_held_and_release_lets_them_go");
        let tasks: Vec<Task> = (0..4).map(|index| task(&format!("r{index}"))).collect();
        insert(&store, &tasks).await;
        let claimed = store.claim("n1", 4, HOUR, None).await.expect("claim");
        let running: Vec<(TaskId, u32)> =
            claimed.iter().map(|task| (task.id, task.attempt)).collect();

        store
            .cancel(tasks[1].id, "stop", "api")
            .await
            .expect("cancel");
        expire_lease(&store, tasks[2].id).await;
        assert_eq!(
            ids(&store.claim("n2", 1, HOUR, None).await.expect("claim")),
            [tasks[2].id]
        );

        let mut asked = running.clone();
        // A stale attempt of a held task is not held.
        asked.push((tasks[3].id, 7));
        let held = store.renew("n1", &running, HOUR).await.expect("renew");
        assert_eq!(held, [tasks[0].id, tasks[3].id]);
        let held = store.renew("n2", &asked, HOUR).await.expect("renew");
        assert!(held.is_empty());
        assert!(
            store
                .renew("n1", &[], HOUR)
                .await
                .expect("renew")
                .is_empty()
        );

        // Released: another replica takes them over at once.
        assert!(
            store
                .claim("n3", 10, HOUR, None)
                .await
                .expect("claim")
                .is_empty()
        );
        store.release("n1", &running).await.expect("release");
        let taken = store.claim("n3", 10, HOUR, None).await.expect("claim");
        assert_eq!(ids(&taken), [tasks[0].id, tasks[3].id]);
        assert!(
            taken
                .iter()
                .all(|task| task.attempt == 2 && task.node == "n3")
        );
    }

    #[tokio::test]
    async fn cancel_reports_what_it_found() {
        let (_schema, store) = store_or_skip!("cancel_reports_what_it_found");
        let (pending, running, done) = (task("pending"), task("running"), finished("done", HOUR));
        insert(&store, &[pending.clone(), running.clone(), done.clone()]).await;
        let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
        assert_eq!(ids(&claimed), [pending.id]);
        let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
        assert_eq!(ids(&claimed), [running.id]);

        let Cancelled::Now(cancelled) = store
            .cancel(running.id, "no longer\u{0} needed", "api")
            .await
            .expect("cancel")
        else {
            panic!("a running task is cancellable");
        };
        assert_eq!(cancelled.status, TaskStatus::Cancelled);
        assert_eq!(cancelled.error, "no longer\u{FFFD} needed");
        assert_eq!(cancelled.revision, claimed[0].revision + 1);
        assert_eq!(cancelled.data, running.data);
        assert!(cancelled.completed_at.is_some());
        assert!(lease_until_is_null(&store, running.id).await);
        assert_eq!(
            store.get(running.id).await.expect("get"),
            Some(cancelled.clone())
        );

        assert_eq!(
            store
                .cancel(running.id, "again", "api")
                .await
                .expect("cancel"),
            Cancelled::Already(cancelled)
        );
        assert_eq!(
            store.cancel(done.id, "late", "api").await.expect("cancel"),
            Cancelled::Finished(done)
        );
        assert_eq!(
            store
                .cancel(TaskId::generate(), "who?", "api")
                .await
                .expect("cancel"),
            Cancelled::NotFound
        );
        // Pending (here: claimed, then freshly inserted) works too.
        let waiting = task("waiting");
        insert(&store, std::slice::from_ref(&waiting)).await;
        assert!(matches!(
            store.cancel(waiting.id, "stop", "api").await.expect("cancel"),
            Cancelled::Now(task) if task.status == TaskStatus::Cancelled && task.attempt == 0
        ));
    }

    #[tokio::test]
    async fn the_feed_delivers_every_written_change_in_order() {
        let (schema, store) = store_or_skip!("the_feed_delivers_every_written_change_in_order");
        let mut feed = store.listen().await.expect("listen");

        // Another schema in the same database is not heard here.
        let other_schema = TestSchema::create("the_feed_delivers_every_written_change_in_order")
            .await
            .expect("the database answered a moment ago");
        let other_store = other_schema.store().await;
        assert_ne!(other_store.channel, store.channel);
        insert(&other_store, &[task("elsewhere")]).await;

        let first = task("first");
        let second = with_request_id(task("second"), "key");
        insert(&store, &[first.clone(), second.clone()]).await;
        let change = next_change(&mut feed).await;
        assert_eq!(change.origin, "api");
        assert!(change.complete);
        assert_eq!(change.task, without_data(&first));
        assert_eq!(next_change(&mut feed).await.task, without_data(&second));

        // Not stored, so not announced.
        assert_eq!(
            insert(&store, &[with_request_id(task("dup"), "key")]).await,
            [Inserted::Existing(second.clone())]
        );

        let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
        let change = next_change(&mut feed).await;
        assert_eq!(change.origin, "n1");
        assert_eq!(change.task, without_data(&claimed[0]));

        // Progress and completion as the run publishes them, several
        // states of one task in one batch, times to the nanosecond.
        let halfway = applied(
            &claimed[0],
            TaskEvent::Progress(Progress {
                percent: 50,
                message: "half\u{0}way".to_owned(),
            }),
        );
        let done = applied(
            &halfway,
            TaskEvent::Complete(Arc::new(json!({"text": "a\u{0}b"}))),
        );
        let batch = Batch {
            inserts: Vec::new(),
            updates: vec![Arc::new(done.clone())],
            changes: vec![Arc::new(halfway.clone()), Arc::new(done.clone())],
        };
        assert_eq!(
            store.commit("n1", &batch).await.expect("commit").updated,
            [true]
        );
        assert_eq!(next_change(&mut feed).await.task, without_data(&halfway));
        let change = next_change(&mut feed).await;
        assert!(change.complete);
        assert_eq!(change.task, without_data(&done));

        // A large result stays out of the notification.
        let claimed = store.claim("n1", 1, HOUR, None).await.expect("claim");
        assert_eq!(next_change(&mut feed).await.task, without_data(&claimed[0]));
        let large = applied(
            &claimed[0],
            TaskEvent::Complete(Arc::new(json!({"text": "x".repeat(10_000)}))),
        );
        assert!(update(&store, "n1", &large).await);
        let change = next_change(&mut feed).await;
        assert!(!change.complete);
        let mut expected = without_data(&large);
        expected.result = None;
        assert_eq!(change.task, expected);
        assert_eq!(
            store.get(large.id).await.expect("get").expect("row").result,
            large.result
        );

        // A refused update is not announced; the cancel after it is.
        assert!(!update(&store, "n9", &large).await);
        let third = task("third");
        insert(&store, std::slice::from_ref(&third)).await;
        assert_eq!(next_change(&mut feed).await.task, without_data(&third));
        let Cancelled::Now(cancelled) = store
            .cancel(third.id, "stop", "api-2")
            .await
            .expect("cancel")
        else {
            panic!("a pending task is cancellable");
        };
        let change = next_change(&mut feed).await;
        assert_eq!(change.origin, "api-2");
        assert_eq!(change.task, without_data(&cancelled));

        drop(other_store);
        drop(other_schema);
        drop(schema);
    }

    #[tokio::test]
    async fn a_release_tells_the_other_replicas_there_is_work() {
        let (_schema, store) = store_or_skip!("a_release_tells_the_other_replicas_there_is_work");
        let running = task("handed over");
        insert(&store, std::slice::from_ref(&running)).await;
        let claimed = store.claim("leaving", 1, HOUR, None).await.expect("claim");
        let mut feed = store.listen().await.expect("listen");
        store
            .release("leaving", &[(running.id, claimed[0].attempt)])
            .await
            .expect("release");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, feed.next()).await {
                Ok(Ok(FeedEvent::WorkWaiting)) => break,
                // The feed starts with a gap: it was not listening before.
                Ok(Ok(FeedEvent::Gap)) => continue,
                other => panic!("expected work waiting, got {other:?}"),
            }
        }
        let taken = store.claim("staying", 1, HOUR, None).await.expect("claim");
        assert_eq!(ids(&taken), [running.id]);
    }

    #[tokio::test]
    async fn the_feed_reports_a_gap_when_its_connection_is_lost() {
        let (_schema, store) = store_or_skip!("the_feed_reports_a_gap_when_its_connection_is_lost");
        let mut feed = store.listen().await.expect("listen");
        let listening = format!("LISTEN \"{}\"", store.channel);
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
        )
        .bind(listening)
        .fetch_all(&store.pool)
        .await
        .expect("terminate the listener's connection");
        assert_eq!(terminated, [true]);

        // The loss shows as a gap, possibly after an error; never silently.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, feed.next()).await {
                Ok(Ok(FeedEvent::Gap)) => break,
                Ok(Err(_)) => continue,
                other => panic!("expected a gap, got {other:?}"),
            }
        }
        // Listening again: changes arrive as before.
        let after = task("after");
        insert(&store, std::slice::from_ref(&after)).await;
        assert_eq!(next_change(&mut feed).await.task, without_data(&after));
    }

    #[tokio::test]
    async fn retention_deletes_old_and_excess_finished_tasks_only() {
        let (_schema, store) =
            store_or_skip!("retention_deletes_old_and_excess_finished_tasks_only");
        let minutes = |count: u64| Duration::from_secs(60 * count);
        let old: Vec<Task> = (0..3)
            .map(|index| finished(&format!("old{index}"), minutes(120 + index)))
            .collect();
        let recent: Vec<Task> = [50, 40, 30, 20, 10]
            .into_iter()
            .map(|ago| finished(&format!("recent{ago}"), minutes(ago)))
            .collect();
        let (pending, running) = (task("pending"), task("running"));
        let mut all = old.clone();
        all.extend(recent.iter().cloned());
        all.push(pending.clone());
        all.push(running.clone());
        insert(&store, &all).await;
        // Long pending and running tasks are never deleted.
        sqlx::query("UPDATE tasks SET created_at = 0 WHERE id = ANY($1)")
            .bind(vec![*pending.id.as_uuid(), *running.id.as_uuid()])
            .execute(&store.pool)
            .await
            .expect("age them");
        store.claim("n1", 1, HOUR, None).await.expect("claim");

        // Three are too old, and of the five others the two oldest are
        // beyond the newest three.
        assert_eq!(
            store.enforce_retention(HOUR, 3).await.expect("retention"),
            5
        );
        let remaining = store
            .list(&ListQuery {
                limit: 100,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        let mut expected: Vec<TaskId> = ids(&recent[2..]);
        expected.push(pending.id);
        expected.push(running.id);
        expected.sort();
        assert_eq!(
            remaining
                .tasks
                .iter()
                .map(|task| task.id)
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            store.enforce_retention(HOUR, 3).await.expect("retention"),
            0
        );

        // Replicas enforcing at once delete each task once.
        let newer: Vec<Task> = (0..4)
            .map(|index| finished(&format!("newer{index}"), minutes(5 - index)))
            .collect();
        insert(&store, &newer).await;
        let (left, right) = tokio::join!(
            store.enforce_retention(HOUR, 3),
            store.enforce_retention(HOUR, 3)
        );
        assert_eq!(left.expect("retention") + right.expect("retention"), 4);
        let finished_left: Vec<i64> = sqlx::query_scalar(
            "SELECT completed_at FROM tasks WHERE completed_at IS NOT NULL ORDER BY completed_at",
        )
        .fetch_all(&store.pool)
        .await
        .expect("finished");
        let newest: Vec<i64> = newer[1..]
            .iter()
            .map(|task| micros(task.completed_at.expect("finished")))
            .collect();
        assert_eq!(finished_left, newest);
        assert_eq!(store.count_pending().await.expect("count"), 1);
    }

    #[tokio::test]
    async fn connect_refuses_a_schema_newer_than_this_binary() {
        let (schema, store) = store_or_skip!("connect_refuses_a_schema_newer_than_this_binary");
        // Connecting again to an up-to-date schema is fine.
        let again = schema.store().await;
        assert_eq!(again.name(), store.name());
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999, 'from the future', true, '\\x00'::bytea, 0)",
        )
        .execute(&store.pool)
        .await
        .expect("fake a newer migration");
        match PostgresStore::connect(&schema.url).await {
            Err(StoreError::NewerSchema {
                found, supported, ..
            }) => {
                assert_eq!(found, 99999);
                assert_eq!(supported, crate::store::latest_version(&MIGRATOR));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn errors_name_the_store_without_its_password() {
        // Nothing listens on port 1: the connection is refused at once.
        let url = "postgres://app:hunter2@127.0.0.1:1/tasks";
        match PostgresStore::connect(url).await {
            Err(StoreError::Open { store, .. }) => {
                assert_eq!(store, "postgres://app:***@127.0.0.1:1/tasks");
            }
            other => panic!("expected Open, got {other:?}"),
        }
    }

    #[test]
    fn payloads_fit_a_notification_and_read_back_as_published() {
        let mut task = task("payload");
        task.created_at = SystemTime::now();
        task.error = "a\u{0}b \"quoted\"".to_owned();
        task.progress = Some(Progress {
            percent: 5,
            message: "π".to_owned(),
        });
        task.labels = BTreeMap::from([("team".to_owned(), "ä".to_owned())]);
        task.request_id = Some("key".to_owned());
        task.result = Some(Arc::new(json!({"text": "c\u{0}d"})));
        let text = change_payload("n1", &task).expect("fits");
        let change = decode_change(&text).expect("decodes");
        assert_eq!(change.origin, "n1");
        assert!(change.complete);
        assert_eq!(change.task, without_data(&task));

        // Too large with its result: result and error are left out.
        task.result = Some(Arc::new(json!("x".repeat(8_000))));
        let text = change_payload("n1", &task).expect("fits");
        assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let change = decode_change(&text).expect("decodes");
        assert!(!change.complete);
        let mut expected = without_data(&task);
        expected.result = None;
        expected.error = String::new();
        assert_eq!(change.task, expected);

        // Too large without them too: the large free texts go as well.
        task.description = "\u{1F600}".repeat(4096);
        task.labels = (0..64)
            .map(|index| (format!("key{index}"), "v".repeat(256)))
            .collect();
        let text = change_payload("n1", &task).expect("fits");
        assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let change = decode_change(&text).expect("decodes");
        assert!(!change.complete);
        assert_eq!(change.task.status, task.status);
        assert_eq!(change.task.revision, task.revision);
        assert_eq!(change.task.description, "");

        assert!(decode_change("{\"origin\": 1}").is_err());
        assert!(decode_change("not json").is_err());
    }

    #[test]
    fn times_survive_as_nanoseconds() {
        for time in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 1),
        ] {
            assert_eq!(from_nanos(nanos(time)), time);
        }
    }
}
