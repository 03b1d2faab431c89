//! Claims and sweeps: which waiting tasks a replica starts, in what order,
//! and which have waited too long. The rules of start order (priority,
//! `run_after`, per-kind limits) live here for PostgreSQL, beside the local
//! shape's `WaitQueue` for the other stores.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use sqlx::{Postgres, Transaction};

use super::{Announcement, PostgresStore, change_payload, notify, notify_through_gate};
use crate::store::{
    StoreError,
    row::{TaskRow, duration_micros, from_micros, micros, task_columns},
};
use crate::task::{Task, TaskEvent};

/// Delayed tasks one claim makes ready at most, and waiting tasks one sweep
/// fails at most: the rest follow at the next claim or sweep.
pub(super) const DUE_CHUNK: i64 = 1000;

/// What a claim took, and when it should look again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claimed {
    /// The tasks now running on the claiming replica, in start order.
    pub tasks: Vec<Task>,
    /// When the earliest delayed task (`run_after`, back-off) becomes due.
    pub next_due: Option<SystemTime>,
}

/// How many tasks of one kind a claim may take: the kinds a replica can
/// run, each with the room its own limit leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindRoom {
    pub kind: String,
    pub room: usize,
}

/// What one claim asks the table for.
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    /// The claiming replica: the tasks' new `node`.
    pub node: &'a str,
    /// How many tasks at most, whatever their kind.
    pub limit: usize,
    /// How long the claimed runs' leases last before they must be renewed.
    pub lease: Duration,
    /// The kinds this replica may take now, each with its room.
    pub rooms: &'a [KindRoom],
    /// The caller's clock, the one its timer uses: delayed tasks due by
    /// then are made ready.
    pub now: SystemTime,
    /// Also take over running tasks whose lease ran out (their replica
    /// died) or that never had one. That walk passes every row that ran
    /// since the table was last vacuumed, as a bitmap scan would at every
    /// claim; so the actor asks for it once per housekeeping tick, not at
    /// every claim.
    pub take_over: bool,
}

impl PostgresStore {
    /// Takes up to `request.limit` tasks for `request.node`: ready ones
    /// (pending or retrying, whose `run_after` or back-off has passed),
    /// highest priority first, then FIFO, and, with `take_over`, running
    /// ones whose lease ran out (their replica died) or that never had one
    /// (stored running by an insert, so no replica renews it), which count
    /// one more run cut short. Each becomes running with the next attempt
    /// and a lease of `lease`, and is announced. Also says when the next
    /// delayed task becomes due, so the caller can claim again then.
    ///
    /// Delayed tasks wait outside the ready index: first, those whose time
    /// has come by `now` are made ready, so thousands of delayed tasks cost
    /// an index range, not a scan. `SKIP LOCKED` lets replicas claim at once
    /// without waiting on each other or taking the same task twice. Only
    /// tasks of the kinds in `rooms` are taken, at most each kind's room: a
    /// replica leaves alone what it cannot run (a kind that only newer
    /// replicas know, during a rolling update), and keeps each kind within
    /// its own limit.
    pub async fn claim_due(&self, request: ClaimRequest<'_>) -> Result<Claimed, StoreError> {
        let mut transaction = self.begin_gated().await?;
        let (claimed, payloads) = claim_within(&mut transaction, request, None).await?;
        notify_through_gate(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(claimed)
    }

    /// [`PostgresStore::claim_due`] at this moment, of `kinds` (`None`:
    /// of every kind that has waiting tasks), taking over expired runs too,
    /// without limits by kind and without the next due time: the tasks
    /// claimed.
    pub async fn claim(
        &self,
        node: &str,
        limit: usize,
        lease: Duration,
        kinds: Option<&[String]>,
    ) -> Result<Vec<Task>, StoreError> {
        let kinds: Vec<String> = match kinds {
            Some(kinds) => kinds.to_vec(),
            None => {
                sqlx::query_scalar(
                    "SELECT DISTINCT kind FROM tasks \
                     WHERE status IN ('pending', 'retrying', 'running')",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        let rooms: Vec<KindRoom> = kinds
            .into_iter()
            .map(|kind| KindRoom { kind, room: limit })
            .collect();
        let claimed = self
            .claim_due(ClaimRequest {
                node,
                limit,
                lease,
                rooms: &rooms,
                now: SystemTime::now(),
                take_over: true,
            })
            .await?;
        Ok(claimed.tasks)
    }

    /// Fails the waiting tasks (pending or retrying) that have waited past
    /// their queue timeout by `now`, as `origin`, through the state machine,
    /// and announces them; returns them. Every replica may sweep at once:
    /// rows another sweep holds are skipped.
    pub async fn expire_waiting(
        &self,
        origin: &str,
        now: SystemTime,
    ) -> Result<Vec<Task>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks \
             WHERE status IN ('pending', 'retrying') AND queue_deadline IS NOT NULL \
                 AND queue_deadline <= $1 \
             ORDER BY queue_deadline LIMIT $2 \
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(micros(now))
        .bind(DUE_CHUNK)
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            transaction.rollback().await?;
            return Ok(Vec::new());
        }
        let mut expired = Vec::with_capacity(rows.len());
        for row in rows {
            let mut task = row.into_task()?;
            if task.apply(TaskEvent::QueueTimeout, now).is_ok() {
                expired.push(task);
            }
        }
        let ids: Vec<Uuid> = expired.iter().map(|task| *task.id.as_uuid()).collect();
        let errors: Vec<&str> = expired.iter().map(|task| task.error.as_str()).collect();
        let revisions: Vec<i64> = expired
            .iter()
            .map(|task| i64::try_from(task.revision).unwrap_or(i64::MAX))
            .collect();
        let completed: Vec<Option<i64>> = expired
            .iter()
            .map(|task| task.completed_at.map(micros))
            .collect();
        sqlx::query(
            "UPDATE tasks SET status = 'failed', error = input.error, \
                 revision = input.revision, completed_at = input.completed_at, \
                 due_at = NULL, queue_deadline = NULL \
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
                 AS input(id, error, revision, completed_at) \
             WHERE tasks.id = input.id",
        )
        .bind(ids)
        .bind(errors)
        .bind(revisions)
        .bind(completed)
        .execute(&mut *transaction)
        .await?;
        let payloads: Vec<Announcement> = expired
            .iter()
            .filter_map(|task| change_payload(origin, task))
            .collect();
        notify(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(expired)
    }
}

/// When the earliest delayed task becomes due (`None`: none is delayed).
pub(super) type NextDue = Option<SystemTime>;

/// The statement of [`make_due_ready`] (as a query a CTE can hold),
/// `$now` and `$chunk` its parameters: delayed tasks whose time has come
/// by `$now` become ready, at most `$chunk`, their ids returned.
macro_rules! made_ready_sql {
    ($now:literal, $chunk:literal) => {
        concat!(
            "UPDATE tasks SET due_at = NULL WHERE id IN ( \
                 SELECT id FROM tasks \
                 WHERE status IN ('pending', 'retrying') AND due_at IS NOT NULL \
                     AND due_at <= ",
            $now,
            " ORDER BY due_at LIMIT ",
            $chunk,
            " FOR UPDATE SKIP LOCKED) \
             RETURNING id"
        )
    };
}
pub(super) use made_ready_sql;

/// A claim's first step, in its own statement so that the claim's sees
/// what it did: delayed tasks whose time has come by `now` become ready
/// (claims read only ready tasks, so thousands of delayed tasks cost an
/// index range, not a scan), and the next due time is read. The
/// statement's snapshot still shows the rows it makes ready as delayed,
/// hence `due_at > now`; a full chunk means more may be due at once.
pub(super) async fn make_due_ready(
    transaction: &mut Transaction<'static, Postgres>,
    now: SystemTime,
) -> Result<NextDue, StoreError> {
    let next_due: Option<i64> = sqlx::query_scalar(concat!(
        "WITH made_ready AS (",
        made_ready_sql!("$1", "$2"),
        ") SELECT CASE WHEN (SELECT count(*) FROM made_ready) >= $2 THEN $1 \
             ELSE (SELECT min(due_at) FROM tasks \
                   WHERE status IN ('pending', 'retrying') AND due_at > $1) END"
    ))
    .bind(micros(now))
    .bind(DUE_CHUNK)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(next_due.map(from_micros))
}

/// [`PostgresStore::claim_due`]'s work inside `transaction`, which may
/// hold a replica's commit too (a claim that rides on the commit that ends
/// runs): the tasks claimed, and the payloads announcing them, for the
/// caller to send before it commits.
///
/// `next_due`: what [`make_due_ready`] answered, when the caller had it
/// done already in this transaction (in the same statement as its own
/// update); `None` makes it the claim's first statement.
pub(super) async fn claim_within(
    transaction: &mut Transaction<'static, Postgres>,
    request: ClaimRequest<'_>,
    next_due: Option<NextDue>,
) -> Result<(Claimed, Vec<Announcement>), StoreError> {
    let ClaimRequest {
        node,
        limit,
        lease,
        rooms,
        now,
        take_over,
    } = request;
    let next_due = match next_due {
        Some(next_due) => next_due,
        None => make_due_ready(transaction, now).await?,
    };
    if limit == 0 || rooms.is_empty() {
        return Ok((
            Claimed {
                tasks: Vec::new(),
                next_due,
            },
            Vec::new(),
        ));
    }
    let kinds: Vec<&str> = rooms.iter().map(|room| room.kind.as_str()).collect();
    let room_counts: Vec<i64> = rooms
        .iter()
        .map(|room| i64::try_from(room.room.min(limit)).unwrap_or(i64::MAX))
        .collect();
    // The ready tasks of each kind are looked up apart, through the
    // partial index `tasks_ready`, at most its room of each; expired
    // ones (only with `take_over`, `$6`: a false one-time filter skips
    // those scans) through `tasks_running_lease`, in lease order, and
    // the never-leased by their NULL lease. Then the best of each kind
    // up to its room, and the best of all up to `limit`. One filter over
    // both statuses would walk the primary key past every finished
    // task. Rows locked but not taken are let go at commit, untouched.
    // One start time for the whole claim, so start times never
    // contradict the order.
    let rows: Vec<TaskRow> = sqlx::query_as(concat!(
        "WITH rooms AS (SELECT * FROM UNNEST($4::text[], $5::bigint[]) AS rooms(kind, room)), \
         lease_ran_out AS MATERIALIZED ( \
             SELECT id, priority, kind FROM tasks \
             WHERE $6 AND status = 'running' AND lease_until < clock_timestamp() \
                 AND kind = ANY($4) \
             ORDER BY lease_until LIMIT $2 \
             FOR UPDATE SKIP LOCKED \
         ), \
         never_leased AS MATERIALIZED ( \
             SELECT id, priority, kind FROM tasks \
             WHERE $6 AND status = 'running' AND lease_until IS NULL \
                 AND kind = ANY($4) \
             ORDER BY id LIMIT $2 \
             FOR UPDATE SKIP LOCKED \
         ), \
         ready AS MATERIALIZED ( \
             SELECT found.* FROM rooms CROSS JOIN LATERAL ( \
                 SELECT id, priority, kind FROM tasks \
                 WHERE status IN ('pending', 'retrying') AND due_at IS NULL \
                     AND kind = rooms.kind \
                 ORDER BY priority DESC, id LIMIT rooms.room \
                 FOR UPDATE SKIP LOCKED) AS found \
         ), \
         ranked AS ( \
             SELECT id, priority, kind, \
                 row_number() OVER (PARTITION BY kind ORDER BY priority DESC, id) AS place \
             FROM (SELECT * FROM lease_ran_out UNION ALL SELECT * FROM never_leased \
                   UNION ALL SELECT * FROM ready) AS every_kind \
         ), \
         candidates AS ( \
             SELECT ranked.id FROM ranked JOIN rooms ON rooms.kind = ranked.kind \
             WHERE ranked.place <= rooms.room \
             ORDER BY ranked.priority DESC, ranked.id LIMIT $2 \
         ), \
         started AS MATERIALIZED (SELECT ",
        database_micros!(),
        " AS at) \
         UPDATE tasks SET status = 'running', attempt = attempt + 1, node = $1, \
             cut_short_runs = cut_short_runs \
                 + CASE WHEN status = 'running' THEN 1 ELSE 0 END, \
             error = CASE WHEN status = 'running' THEN error ELSE '' END, \
             started_at = (SELECT at FROM started), \
             progress_percent = NULL, progress_message = NULL, \
             revision = revision + 1, due_at = NULL, queue_deadline = NULL, \
             lease_until = clock_timestamp() + $3 * interval '1 microsecond' \
         WHERE id IN (SELECT id FROM candidates) \
         RETURNING ",
        task_columns!()
    ))
    .bind(node)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(duration_micros(lease))
    .bind(kinds)
    .bind(room_counts)
    .bind(take_over)
    .fetch_all(&mut **transaction)
    .await?;
    let mut tasks = rows
        .into_iter()
        .map(TaskRow::into_task)
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING does not keep the order of the candidates.
    tasks.sort_by_key(Task::start_order);
    let payloads: Vec<Announcement> = tasks
        .iter()
        .filter_map(|task| change_payload(node, task))
        .collect();
    Ok((Claimed { tasks, next_due }, payloads))
}
