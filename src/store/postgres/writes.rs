//! Writing a replica's batch: the multi-row insert (with `request_id`s
//! that another task holds), and the guarded updates that apply only while
//! the row still belongs to the run.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value as JsonValue;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::{
    StoreError,
    row::{TaskRow, duration_micros, from_micros, micros, status_name, task_columns},
};
use crate::task::{RequestKey, Task, TaskId};

use super::*;

/// Inserts the batch's new tasks; the outcome of each, in order. A task in
/// `starting` is stored as it is there (running here, with a lease of
/// `lease`) instead of as it was created.
pub(super) async fn insert_tasks(
    transaction: &mut Transaction<'static, Postgres>,
    tasks: &[Arc<Task>],
    starting: &HashMap<TaskId, Task>,
    lease: Duration,
) -> Result<Vec<Inserted>, StoreError> {
    // The first task of the batch with a request_id (or an id) is the one
    // that may be stored; the later ones are answered with what holds it.
    let mut first_with_key: HashMap<RequestKey, usize> = HashMap::new();
    let mut first_with_id: HashMap<TaskId, usize> = HashMap::new();
    let mut candidates: Vec<usize> = Vec::new();
    // Where each task's outcome comes from: the task at this index.
    let mut source: Vec<usize> = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let earlier = task
            .request_key()
            .and_then(|key| first_with_key.get(&key))
            .or_else(|| first_with_id.get(&task.id))
            .copied();
        match earlier {
            Some(first) => source.push(first),
            None => {
                if let Some(key) = task.request_key() {
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
    candidates.sort_by(|left, right| {
        (&tasks[*left].tenant, &tasks[*left].request_id)
            .cmp(&(&tasks[*right].tenant, &tasks[*right].request_id))
    });

    let mut stored: HashMap<usize, Inserted> = HashMap::new();
    let mut remaining = candidates;
    for _ in 0..INSERT_ROUNDS {
        if remaining.is_empty() {
            break;
        }
        let now = SystemTime::now();
        let rows: Vec<_> = remaining
            .iter()
            .map(|index| {
                let task = &tasks[*index];
                match starting.get(&task.id) {
                    Some(started) => (
                        TaskRow::from_task(started),
                        waiting_columns(started, now),
                        Some(duration_micros(lease)),
                    ),
                    None => (TaskRow::from_task(task), waiting_columns(task, now), None),
                }
            })
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
                .request_key()
                .and_then(|key| holders.by_request_id.get(&key))
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
pub(super) async fn insert_rows(
    transaction: &mut Transaction<'static, Postgres>,
    rows: Vec<(TaskRow, WaitingColumns, Option<i64>)>,
) -> Result<HashSet<Uuid>, StoreError> {
    let mut columns = InsertColumns::default();
    for (row, (due_at, queue_deadline), lease) in rows {
        columns.push(row);
        columns.due_at.push(due_at);
        columns.queue_deadline.push(queue_deadline);
        columns.lease_micros.push(lease);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(concat!(
        "INSERT INTO tasks (",
        task_columns!(),
        ", due_at, queue_deadline, lease_until) \
         SELECT ",
        task_columns!(),
        ", due_at, queue_deadline, \
             clock_timestamp() + lease_micros * interval '1 microsecond' \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], \
             $12::text[], $13::bigint[], $14::text[], $15::bigint[], $16::text[], \
             $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], \
             $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], \
             $26::double precision[], $27::bigint[], $28::bigint[], $29::bigint[], \
             $30::text[], $31::text[], $32::text[], $33::bigint[], $34::bigint[], \
             $35::bigint[]) AS input(",
        task_columns!(),
        ", due_at, queue_deadline, lease_micros) \
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
    .bind(columns.priority)
    .bind(columns.run_after)
    .bind(columns.queue_timeout_seconds)
    .bind(columns.max_attempts)
    .bind(columns.initial_backoff_us)
    .bind(columns.max_backoff_us)
    .bind(columns.backoff_multiplier)
    .bind(columns.retry_at)
    .bind(columns.failed_runs)
    .bind(columns.cut_short_runs)
    .bind(columns.traceparent)
    .bind(columns.tracestate)
    .bind(columns.tenant)
    .bind(columns.due_at)
    .bind(columns.queue_deadline)
    .bind(columns.lease_micros)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(ids.into_iter().collect())
}

/// The rows, one array per column, in `task_columns!()` order.
#[derive(Default)]
pub(super) struct InsertColumns {
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
    priority: Vec<i64>,
    run_after: Vec<Option<i64>>,
    queue_timeout_seconds: Vec<i64>,
    max_attempts: Vec<i64>,
    initial_backoff_us: Vec<i64>,
    max_backoff_us: Vec<i64>,
    backoff_multiplier: Vec<f64>,
    retry_at: Vec<Option<i64>>,
    failed_runs: Vec<i64>,
    cut_short_runs: Vec<i64>,
    traceparent: Vec<String>,
    tracestate: Vec<String>,
    tenant: Vec<String>,
    due_at: Vec<Option<i64>>,
    queue_deadline: Vec<Option<i64>>,
    /// For a task stored running: how long its lease lasts, from the
    /// database's clock (as a claim's does).
    lease_micros: Vec<Option<i64>>,
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
        self.priority.push(row.priority);
        self.run_after.push(row.run_after);
        self.queue_timeout_seconds.push(row.queue_timeout_seconds);
        self.max_attempts.push(row.max_attempts);
        self.initial_backoff_us.push(row.initial_backoff_us);
        self.max_backoff_us.push(row.max_backoff_us);
        self.backoff_multiplier.push(row.backoff_multiplier);
        self.retry_at.push(row.retry_at);
        self.failed_runs.push(row.failed_runs);
        self.cut_short_runs.push(row.cut_short_runs);
        self.traceparent.push(row.traceparent);
        self.tracestate.push(row.tracestate);
        self.tenant.push(row.tenant);
    }
}

/// The stored tasks in the way of refused inserts.
#[derive(Default)]
pub(super) struct Holders {
    /// By `(tenant, request_id)`: the key is unique within a tenant.
    by_request_id: HashMap<RequestKey, Task>,
    by_id: HashMap<TaskId, Task>,
}

pub(super) async fn holders_of(
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
    // replicas committed while the insert waited for them. Rows of other
    // tenants with the same request_id come too, and are left out below.
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
        if let Some(key) = task.request_key() {
            holders.by_request_id.insert(key, task.clone());
        }
        holders.by_id.insert(task.id, task);
    }
    Ok(holders)
}

/// A task this transaction has just stored.
pub(super) async fn stored_task(
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

/// The guarded update of [`update_tasks`] as a data-modifying CTE
/// `updated` returning the ids it wrote: `$1` the origin, `$2`… `$16` the
/// columns.
macro_rules! update_sql {
    () => {
        "WITH input AS ( \
             SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
                 $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], \
                 $16::text[]) \
                 AS input(id, status, result, error, progress_percent, progress_message, \
                          attempt, revision, completed_at, retry_at, failed_runs, \
                          cut_short_runs, due_at, queue_deadline, node) \
         ), \
         held AS ( \
             SELECT tasks.id FROM tasks JOIN input ON input.id = tasks.id \
             WHERE tasks.status = 'running' AND tasks.attempt = input.attempt \
                 AND (tasks.node = $1 OR starts_with(tasks.node, $1 || '/')) \
             ORDER BY tasks.id \
             FOR UPDATE OF tasks \
         ), \
         updated AS ( \
             UPDATE tasks SET status = input.status, result = input.result, \
                 error = input.error, progress_percent = input.progress_percent, \
                 progress_message = input.progress_message, \
                 revision = input.revision, completed_at = input.completed_at, \
                 retry_at = input.retry_at, failed_runs = input.failed_runs, \
                 cut_short_runs = input.cut_short_runs, due_at = input.due_at, \
                 queue_deadline = input.queue_deadline, node = input.node, \
                 lease_until = CASE WHEN input.status = 'running' \
                     THEN tasks.lease_until ELSE NULL END \
             FROM input \
             WHERE tasks.id = input.id AND tasks.id IN (SELECT id FROM held) \
             RETURNING tasks.id \
         )"
    };
}

/// Writes what a run may change, only where the row still belongs to that
/// run; whether each was written, in order.
///
/// With `make_due_ready` (the claim's time), the same statement also does
/// the first step of a claim ([`super::claims::make_due_ready`]), and its
/// answer comes back: one round trip less for a commit that ends runs and
/// claims. `None` when the statement did not run (no tasks).
pub(super) async fn update_tasks(
    transaction: &mut Transaction<'static, Postgres>,
    origin: &str,
    tasks: &[Arc<Task>],
    make_due_ready: Option<SystemTime>,
) -> Result<(Vec<bool>, Option<NextDue>), StoreError> {
    if tasks.is_empty() {
        return Ok((Vec::new(), None));
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
    let mut retry_ats = Vec::with_capacity(latest.len());
    let mut failed_runs = Vec::with_capacity(latest.len());
    let mut cut_short_runs = Vec::with_capacity(latest.len());
    let mut due_ats = Vec::with_capacity(latest.len());
    let mut queue_deadlines = Vec::with_capacity(latest.len());
    let mut nodes = Vec::with_capacity(latest.len());
    let now = SystemTime::now();
    // Column by column rather than through `TaskRow`, which would encode
    // `data` (possibly large, never written here) at every progress report.
    for task in latest.values() {
        let (due_at, queue_deadline) = waiting_columns(task, now);
        retry_ats.push(task.retry_at.map(micros));
        failed_runs.push(i64::from(task.failed_runs));
        cut_short_runs.push(i64::from(task.cut_short_runs));
        due_ats.push(due_at);
        queue_deadlines.push(queue_deadline);
        ids.push(*task.id.as_uuid());
        statuses.push(status_name(task.status));
        results.push(task.result.as_deref().map(JsonValue::to_string));
        errors.push(task.error.as_str());
        // Changes only when a run goes to a remote worker
        // (`<node>/<worker>`); the guard below keeps the replica part.
        nodes.push(task.node.as_str());
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
    let query = match make_due_ready {
        None => sqlx::query_as::<_, (Option<Uuid>, Option<i64>)>(concat!(
            update_sql!(),
            " SELECT id, NULL::bigint FROM updated"
        )),
        // The claim's first step, in the same round trip: delayed tasks
        // whose time has come become ready, and the next due time is read
        // (the snapshot still shows both the rows made ready as delayed and
        // the retries written here as running, hence the two sources).
        Some(_) => sqlx::query_as::<_, (Option<Uuid>, Option<i64>)>(concat!(
            update_sql!(),
            ", made_ready AS (",
            made_ready_sql!("$17", "$18"),
            ") SELECT id, NULL::bigint FROM updated \
             UNION ALL \
             SELECT NULL, CASE WHEN (SELECT count(*) FROM made_ready) >= $18 THEN $17 \
                 ELSE LEAST( \
                     (SELECT min(due_at) FROM tasks \
                      WHERE status IN ('pending', 'retrying') AND due_at > $17), \
                     (SELECT min(due_at) FROM input \
                      WHERE status IN ('pending', 'retrying') AND due_at > $17)) END"
        )),
    };
    let query = query
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
        .bind(retry_ats)
        .bind(failed_runs)
        .bind(cut_short_runs)
        .bind(due_ats)
        .bind(queue_deadlines)
        .bind(nodes);
    let query = match make_due_ready {
        Some(now) => query.bind(micros(now)).bind(DUE_CHUNK),
        None => query,
    };
    let rows = query.fetch_all(&mut **transaction).await?;
    let mut next_due = None;
    let mut written: HashSet<Uuid> = HashSet::with_capacity(rows.len());
    for (id, due) in rows {
        match id {
            Some(id) => {
                written.insert(id);
            }
            None => next_due = Some(due.map(from_micros)),
        }
    }
    let written = tasks
        .iter()
        .map(|task| written.contains(task.id.as_uuid()))
        .collect();
    Ok((written, next_due))
}

/// Deletes finished tasks (never an unfinished one, whoever asks).
/// The columns only claims and sweeps read, `due_at` and `queue_deadline`.
type WaitingColumns = (Option<i64>, Option<i64>);

/// The columns only claims and sweeps read: when a waiting task becomes
/// due, if that is still ahead at `now`; and when it has waited too long.
/// A task that is not waiting has neither.
fn waiting_columns(task: &Task, now: SystemTime) -> WaitingColumns {
    if !task.status.is_waiting() {
        return (None, None);
    }
    let ready_at = task.ready_at();
    let due_at = (ready_at > now).then(|| micros(ready_at));
    (due_at, task.queue_deadline().map(micros))
}

pub(super) async fn delete_finished(
    transaction: &mut Transaction<'_, Postgres>,
    ids: &[TaskId],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
    sqlx::query("DELETE FROM tasks WHERE id = ANY($1) AND completed_at IS NOT NULL")
        .bind(ids)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// What became of an all-or-nothing batch of inserts.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchInserted {
    /// Stored, in order: each new task as stored, or for a `request_id`
    /// used before with the same parameters, the task that holds it.
    Stored(Vec<Task>),
    /// A `request_id` was taken by a task with other parameters: nothing
    /// was stored.
    Conflict { request_id: String },
}

impl PostgresStore {
    /// Inserts `tasks` as `origin` in one transaction, all or nothing, and
    /// announces the new ones: the store side of `BatchCreateTasks`. Its
    /// own commit rather than a replica's group commit, so a conflict found
    /// in the table can take back the whole batch.
    pub async fn insert_batch(
        &self,
        origin: &str,
        tasks: &[Arc<Task>],
    ) -> Result<BatchInserted, StoreError> {
        let mut transaction = self.begin_gated().await?;
        let inserted =
            insert_tasks(&mut transaction, tasks, &HashMap::new(), Duration::ZERO).await?;
        let mut answers = Vec::with_capacity(tasks.len());
        let mut new_tasks = Vec::with_capacity(tasks.len());
        for (task, outcome) in tasks.iter().zip(inserted) {
            match outcome {
                Inserted::New => {
                    new_tasks.push(Arc::clone(task));
                    answers.push((**task).clone());
                }
                Inserted::Existing(existing) if existing.has_parameters_of(task) => {
                    answers.push(existing);
                }
                Inserted::Existing(_) => {
                    transaction.rollback().await?;
                    return Ok(BatchInserted::Conflict {
                        request_id: task.request_id.clone().unwrap_or_default(),
                    });
                }
            }
        }
        let payloads: Vec<Announcement> = new_tasks
            .iter()
            .filter_map(|task| change_payload(origin, task))
            .collect();
        notify_through_gate(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(BatchInserted::Stored(answers))
    }
}
