//! Schedules on PostgreSQL, where the table is the truth and any replica
//! may fire a schedule: create, read, list, pause and resume, delete, and
//! the firing itself.
//!
//! Each firing happens once across replicas because the replica that fires
//! a schedule holds its row lock (`FOR UPDATE SKIP LOCKED`: the others pass
//! it by) and moves `next_fire_at` past `now` in the same transaction that
//! inserts the task; a replica that reaches the row afterwards rechecks
//! `next_fire_at <= now` on the row as committed, and leaves it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use uuid::Uuid;

use super::{Announcement, PostgresStore, change_payload, insert_tasks, notify};
use crate::{
    schedule::{FireOutcome, Overlap, Schedule, ScheduleId},
    store::{
        Inserted, SchedulePage, StoreError,
        row::{from_micros, micros, parse_status},
        schedule_row::{ScheduleRow, schedule_columns},
    },
    task::{Task, TaskId, TaskStatus},
};

/// Schedules one call of [`PostgresStore::fire_due_schedules`] fires at
/// most, so its transaction stays short; the rest are still due, and
/// [`PostgresStore::next_schedule_due`] says so.
pub const FIRE_CHUNK: usize = 100;

/// One firing that created a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    pub schedule_id: ScheduleId,
    /// The task as stored (pending).
    pub task: Task,
    /// The firing time it stands for (after downtime, the latest missed one).
    pub scheduled_for: SystemTime,
}

/// What one call of [`PostgresStore::fire_due_schedules`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FiringRound {
    /// The firings that created a task.
    pub fired: Vec<Fired>,
    /// Due firings skipped because the previous firing's task still runs.
    pub skipped: usize,
}

impl PostgresStore {
    /// Stores a new schedule; returns it as stored (times to the
    /// microsecond). A schedule whose id is stored already (a create
    /// retried after an unknown outcome) is not written again: the stored
    /// one is returned.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<Schedule, StoreError> {
        let row = ScheduleRow::from_schedule(schedule);
        let inserted: Option<ScheduleRow> = sqlx::query_as(concat!(
            "INSERT INTO schedules (",
            schedule_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO NOTHING RETURNING ",
            schedule_columns!()
        ))
        .bind(row.id)
        .bind(&row.cron)
        .bind(&row.time_zone)
        .bind(&row.template)
        .bind(row.paused)
        .bind(&row.overlap)
        .bind(row.next_fire_at)
        .bind(row.last_fire_at)
        .bind(row.last_task_id)
        .bind(row.created_at)
        .bind(row.revision)
        .bind(&row.tenant)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(inserted) = inserted {
            return inserted.into_schedule();
        }
        self.get_schedule(schedule.id)
            .await?
            .ok_or_else(|| StoreError::CorruptSchedule {
                id: schedule.id,
                reason: "its id was taken by a row that vanished".to_owned(),
            })
    }

    /// The schedule with this id.
    pub async fn get_schedule(&self, id: ScheduleId) -> Result<Option<Schedule>, StoreError> {
        let row: Option<ScheduleRow> = sqlx::query_as(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(ScheduleRow::into_schedule).transpose()
    }

    /// Up to `limit` schedules in id (creation) order, after `after`, of
    /// `tenant` when it names one (schedules are few: no index needed).
    /// Keyset paging on the primary key, as for tasks: schedules created or
    /// deleted meanwhile never shift a page. A `limit` of 0 yields an empty
    /// last page.
    pub async fn list_schedules(
        &self,
        after: Option<ScheduleId>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<SchedulePage, StoreError> {
        if limit == 0 {
            return Ok(SchedulePage {
                schedules: Vec::new(),
                next_after: None,
            });
        }
        // The nil UUID sorts first and is never a schedule's id.
        let after = after.map_or(Uuid::nil(), |id| *id.as_uuid());
        let rows: Vec<ScheduleRow> = sqlx::query_as(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE id > $1 AND ($3::text IS NULL OR tenant = $3) \
             ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit;
        let schedules = rows
            .into_iter()
            .take(limit)
            .map(|row| row.into_schedule().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = more
            .then(|| schedules.last().map(|schedule| schedule.id))
            .flatten();
        Ok(SchedulePage {
            schedules,
            next_after,
        })
    }

    /// Pauses (`paused`) or resumes the schedule at `now`, as
    /// [`Schedule::pause`] and [`Schedule::resume`] do: a change bumps the
    /// revision; resuming sets `next_fire_at` to the first firing after
    /// `now`, pausing clears it; pausing a paused schedule (or resuming a
    /// running one) changes nothing. Returns the schedule as it now is;
    /// `None` when no schedule has this id.
    pub async fn set_schedule_paused(
        &self,
        id: ScheduleId,
        paused: bool,
        now: SystemTime,
    ) -> Result<Option<Schedule>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // Waits for a firing that holds the row: it is one short transaction.
        let row: Option<ScheduleRow> = sqlx::query_as(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE id = $1 FOR UPDATE"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let mut schedule = row.into_schedule()?;
        let changed = if paused {
            schedule.pause()
        } else {
            schedule.resume(now)
        };
        if changed {
            let row = ScheduleRow::from_schedule(&schedule);
            sqlx::query(
                "UPDATE schedules SET paused = $2, next_fire_at = $3, revision = $4 \
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(row.paused)
            .bind(row.next_fire_at)
            .bind(row.revision)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(Some(schedule))
    }

    /// Deletes the schedule; `false` when no schedule has this id. The
    /// tasks it created stay.
    pub async fn delete_schedule(&self, id: ScheduleId) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// When the earliest schedule that is not paused fires next (possibly
    /// already past: then it is due now); `None` when none will.
    pub async fn next_schedule_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT min(next_fire_at) FROM schedules WHERE NOT paused")
                .fetch_one(&self.pool)
                .await?;
        Ok(next.map(from_micros))
    }

    /// Fires, as `origin`, the schedules due at `now` (not paused,
    /// `next_fire_at <= now`), at most [`FIRE_CHUNK`] of them, in one
    /// transaction: each fires once however many firings it missed
    /// ([`Schedule::due_firing`]), or, with [`Overlap::Skip`] while the task
    /// of its last firing has not finished, skips; either way it moves on
    /// to its next firing after `now`. Each new task is inserted and
    /// announced like any other. Returns the firings that created a task, and how many were skipped.
    ///
    /// Schedules another replica is firing are passed by, not waited for.
    /// A schedule whose row does not read back is logged and left alone,
    /// so it never stops the others from firing.
    pub async fn fire_due_schedules(
        &self,
        origin: &str,
        now: SystemTime,
    ) -> Result<FiringRound, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<ScheduleRow> = sqlx::query_as(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE NOT paused AND next_fire_at <= $1 \
             ORDER BY next_fire_at, id LIMIT $2 \
             FOR UPDATE SKIP LOCKED"
        ))
        .bind(micros(now))
        .bind(i64::try_from(FIRE_CHUNK).unwrap_or(i64::MAX))
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            transaction.rollback().await?;
            return Ok(FiringRound::default());
        }
        let mut schedules = Vec::with_capacity(rows.len());
        for row in rows {
            match row.into_schedule() {
                Ok(schedule) => schedules.push(schedule),
                Err(error) => tracing::error!(
                    error = %crate::errors::error_chain(&error),
                    "a due schedule cannot be read; it does not fire"
                ),
            }
        }
        let last_statuses = last_task_statuses(&mut transaction, &schedules).await?;
        // The tasks' times as their columns keep them, so what this returns
        // equals what is stored.
        let created_at = from_micros(micros(now));
        let mut fired = Vec::new();
        let mut skipped = 0;
        for schedule in &mut schedules {
            let last_status = schedule
                .last_task_id
                .and_then(|id| last_statuses.get(&id).copied());
            let task_id = TaskId::generate();
            match schedule.fire_if_due(now, last_status, task_id) {
                FireOutcome::NotDue => {}
                FireOutcome::Skipped => skipped += 1,
                FireOutcome::Fired {
                    task,
                    scheduled_for,
                } => fired.push(Fired {
                    schedule_id: schedule.id,
                    task: Task::new(task_id, task, created_at),
                    scheduled_for,
                }),
            }
        }
        let tasks: Vec<Arc<Task>> = fired
            .iter()
            .map(|fired| Arc::new(fired.task.clone()))
            .collect();
        let inserted =
            insert_tasks(&mut transaction, &tasks, &HashMap::new(), Duration::ZERO).await?;
        if let Some((task, _)) = tasks
            .iter()
            .zip(&inserted)
            .find(|(_, outcome)| matches!(outcome, Inserted::Existing(_)))
        {
            // A fresh UUID v7 without a request_id cannot be taken.
            return Err(StoreError::Corrupt {
                id: task.id.to_string(),
                reason: "a new scheduled task's id is taken".to_owned(),
            });
        }
        record_firings(&mut transaction, &schedules).await?;
        let payloads: Vec<Announcement> = tasks
            .iter()
            .filter_map(|task| change_payload(origin, task))
            .collect();
        notify(&mut transaction, &self.channel, &payloads).await?;
        transaction.commit().await?;
        Ok(FiringRound { fired, skipped })
    }
}

/// The status of the last task of each schedule that skips while it has
/// not finished; a task retention forgot is not in the map.
async fn last_task_statuses(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    schedules: &[Schedule],
) -> Result<HashMap<TaskId, TaskStatus>, StoreError> {
    let ids: Vec<Uuid> = schedules
        .iter()
        .filter(|schedule| schedule.overlap == Overlap::Skip)
        .filter_map(|schedule| schedule.last_task_id)
        .map(|id| *id.as_uuid())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM tasks WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **transaction)
            .await?;
    rows.into_iter()
        .map(|(id, status)| {
            let status = parse_status(&status).ok_or_else(|| StoreError::Corrupt {
                id: id.to_string(),
                reason: format!("unknown status {status:?}"),
            })?;
            Ok((TaskId::from_uuid(id), status))
        })
        .collect()
}

/// Writes what a firing (or a skipped one) changes in each schedule, whose
/// rows this transaction holds.
async fn record_firings(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    schedules: &[Schedule],
) -> Result<(), StoreError> {
    // Column by column: a row would encode the template again.
    let ids: Vec<Uuid> = schedules
        .iter()
        .map(|schedule| *schedule.id.as_uuid())
        .collect();
    let next_fire_ats: Vec<Option<i64>> = schedules
        .iter()
        .map(|schedule| schedule.next_fire_at.map(micros))
        .collect();
    let last_fire_ats: Vec<Option<i64>> = schedules
        .iter()
        .map(|schedule| schedule.last_fire_at.map(micros))
        .collect();
    let last_task_ids: Vec<Option<Uuid>> = schedules
        .iter()
        .map(|schedule| schedule.last_task_id.map(|id| *id.as_uuid()))
        .collect();
    let revisions: Vec<i64> = schedules
        .iter()
        .map(|schedule| i64::try_from(schedule.revision).unwrap_or(i64::MAX))
        .collect();
    sqlx::query(
        "UPDATE schedules SET next_fire_at = input.next_fire_at, \
             last_fire_at = input.last_fire_at, last_task_id = input.last_task_id, \
             revision = input.revision \
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::uuid[], $5::bigint[]) \
             AS input(id, next_fire_at, last_fire_at, last_task_id, revision) \
         WHERE schedules.id = input.id",
    )
    .bind(ids)
    .bind(next_fire_ats)
    .bind(last_fire_ats)
    .bind(last_task_ids)
    .bind(revisions)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
