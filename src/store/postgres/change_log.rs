//! The change log (`task_changes`): every change any replica announced,
//! numbered in commit order (see `feed::notify`, which records them), kept
//! for a while so that a `WatchTasks` stream resumes on any replica.

use std::{sync::Arc, time::Duration};

use serde_json::Value as JsonValue;
use sqlx::Row;

use super::{
    PostgresStore,
    feed::{CHANGE_LOG_GATE_CLASS, decode_change},
};
use crate::store::StoreError;

pub use super::Change;

/// Where a replica's journal starts in the change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeLogStart {
    /// Names this database's log, for resume tokens.
    pub instance: u64,
    /// The last position recorded (0: none yet).
    pub last_position: u64,
}

/// What [`PostgresStore::changes_after`] found.
#[derive(Debug)]
pub enum ChangesAfter {
    /// The changes after the position asked for, in order (fewer than asked
    /// for: the log has no more now). Each task carries its data when the
    /// task is still stored.
    Changes(Vec<Change>),
    /// Changes after that position were already pruned.
    Pruned,
}

/// What turning the change log on found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watching {
    /// The position a new stream starts from: every change after it is
    /// recorded, and no token before it resumes.
    pub floor: u64,
    /// Whether the log was off: changes made meanwhile were not recorded,
    /// so streams that missed them must not go on.
    pub was_off: bool,
}

impl PostgresStore {
    /// Turns the change log on, or keeps it on, for at least `keep_on`:
    /// every replica records each change from now on. Called before a
    /// `WatchTasks` stream starts, and regularly while one follows.
    ///
    /// It takes the gate every announcing transaction holds (shared), so
    /// it waits for those in flight: any transaction that commits after it
    /// records its changes. Turning it on after it was off moves the
    /// horizon past every position taken so far, so that no token from
    /// before (whose successors were not recorded) resumes across the gap.
    pub async fn watch_change_log(&self, keep_on: Duration) -> Result<Watching, StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(CHANGE_LOG_GATE_CLASS)
            .bind(&*self.channel)
            .execute(&mut *transaction)
            .await?;
        let row = sqlx::query(
            "WITH was AS (SELECT watched_until > now() AS watched FROM task_changes_horizon), \
                  floor AS ( \
                      SELECT CASE WHEN (SELECT watched FROM was) THEN NULL \
                             ELSE nextval(pg_get_serial_sequence('task_changes', 'position')) \
                             END AS position) \
             UPDATE task_changes_horizon SET \
                 pruned_through = GREATEST(pruned_through, \
                                           COALESCE((SELECT position FROM floor), 0)), \
                 watched_until = GREATEST(watched_until, now() + make_interval(secs => $1)) \
             RETURNING pruned_through, (SELECT watched FROM was) AS was_on",
        )
        .bind(keep_on.as_secs_f64())
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Watching {
            floor: u64::try_from(row.try_get::<i64, _>("pruned_through")?).unwrap_or(0),
            was_off: !row.try_get::<bool, _>("was_on")?,
        })
    }

    /// The log's instance and the last position in it. Called after the
    /// replica listens, so a change recorded after this read is heard.
    pub async fn change_log_start(&self) -> Result<ChangeLogStart, StoreError> {
        let row = sqlx::query(
            "SELECT instance, \
                    (SELECT COALESCE(MAX(position), pruned_through) FROM task_changes) AS last \
             FROM task_changes_horizon",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ChangeLogStart {
            instance: row.try_get::<i64, _>("instance")?.cast_unsigned(),
            last_position: u64::try_from(row.try_get::<i64, _>("last")?).unwrap_or(0),
        })
    }

    /// Up to `limit` changes after `after`, in order, or `Pruned` if some
    /// of them are gone. One snapshot reads the horizon and the changes, so
    /// a prune in between cannot hide a gap.
    pub async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<ChangesAfter, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *transaction)
            .await?;
        let pruned_through: i64 =
            sqlx::query_scalar("SELECT pruned_through FROM task_changes_horizon")
                .fetch_one(&mut *transaction)
                .await?;
        if after < pruned_through {
            transaction.rollback().await?;
            return Ok(ChangesAfter::Pruned);
        }
        let rows = sqlx::query(
            "SELECT c.position, c.change, t.data \
             FROM task_changes c LEFT JOIN tasks t ON t.id = c.task_id \
             WHERE c.position > $1 ORDER BY c.position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let position: i64 = row.try_get("position")?;
            let text: String = row.try_get("change")?;
            let corrupt = |reason: String| StoreError::Corrupt {
                id: format!("change {position}"),
                reason,
            };
            let mut change = decode_change(&text).map_err(corrupt)?;
            change.position = u64::try_from(position).ok();
            let data: Option<String> = row.try_get("data")?;
            change.task.data = data
                .map(|text| serde_json::from_str::<JsonValue>(&text).map(Arc::new))
                .transpose()
                .map_err(|error| corrupt(format!("data is not JSON: {error}")))?;
            changes.push(change);
        }
        Ok(ChangesAfter::Changes(changes))
    }

    /// Lets go of the changes recorded more than `kept_for` ago, and of all
    /// but the last `capacity` positions; returns how many went. Any
    /// replica may call it at any time.
    pub async fn prune_change_log(
        &self,
        kept_for: Duration,
        capacity: usize,
    ) -> Result<u64, StoreError> {
        // The cut is the position before the first change young enough to
        // keep (walking the primary key from its old end, over no more than
        // the rows about to go), or everything if none is; and never more
        // than `capacity` positions are kept. The horizon moves first, in
        // the same statement, so a resume reading after the cut is refused.
        let pruned = sqlx::query(
            "WITH last AS (SELECT COALESCE(MAX(position), 0) AS position FROM task_changes), \
                  first_young AS ( \
                      SELECT position FROM task_changes \
                      WHERE recorded_at >= now() - make_interval(secs => $1) \
                      ORDER BY position LIMIT 1), \
                  cut AS ( \
                      SELECT GREATEST( \
                          COALESCE((SELECT position FROM first_young) - 1, \
                                   (SELECT position FROM last)), \
                          (SELECT position FROM last) - $2) AS position), \
                  moved AS ( \
                      UPDATE task_changes_horizon \
                      SET pruned_through = GREATEST(pruned_through, (SELECT position FROM cut)) \
                      RETURNING pruned_through) \
             DELETE FROM task_changes WHERE position <= (SELECT pruned_through FROM moved)",
        )
        .bind(kept_for.as_secs_f64())
        .bind(i64::try_from(capacity).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(pruned.rows_affected())
    }
}
