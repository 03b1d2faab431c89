//! The `workers` table: the remote workers connected to each replica, so
//! that any replica can list them all. Each replica rewrites its own rows
//! (one transaction a second while it has workers); rows that were not
//! refreshed for [`FRESH_FOR`] belong to a replica that is gone.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::PostgresStore;
use crate::store::{
    StoreError,
    row::{from_micros, micros},
};

/// How long a row counts without being refreshed (replicas refresh theirs
/// every second).
pub const FRESH_FOR: Duration = Duration::from_secs(10);

/// How long a stale row is kept before any replica deletes it.
const KEPT_FOR: Duration = Duration::from_secs(60);

/// One worker stream as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: Uuid,
    /// The replica the stream is connected to.
    pub node: String,
    pub name: String,
    pub kinds: Vec<String>,
    pub max_concurrent: u64,
    pub in_flight: u64,
    pub peer: String,
    pub connected_at: SystemTime,
}

type Columns = (Uuid, String, String, Vec<String>, i64, i64, String, i64);

impl PostgresStore {
    /// Makes `node`'s rows exactly `workers` (refreshed now), and deletes
    /// the rows of replicas gone for a while.
    pub async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRow],
    ) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = workers.iter().map(|worker| worker.id).collect();
        let mut transaction = self.pool.begin().await?;
        sqlx::query(concat!(
            "DELETE FROM workers WHERE (node = $1 AND NOT (id = ANY($2))) \
             OR seen_at < ",
            database_micros!(),
            " - $3"
        ))
        .bind(node)
        .bind(&ids)
        .bind(micros_of(KEPT_FOR))
        .execute(&mut *transaction)
        .await?;
        for worker in workers {
            sqlx::query(concat!(
                "INSERT INTO workers (id, node, name, kinds, max_concurrent, in_flight, peer, \
                 connected_at, seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
                database_micros!(),
                ") ON CONFLICT (id) DO UPDATE SET in_flight = EXCLUDED.in_flight, \
                 seen_at = EXCLUDED.seen_at"
            ))
            .bind(worker.id)
            .bind(node)
            .bind(&worker.name)
            .bind(&worker.kinds)
            .bind(i64::try_from(worker.max_concurrent).unwrap_or(i64::MAX))
            .bind(i64::try_from(worker.in_flight).unwrap_or(i64::MAX))
            .bind(&worker.peer)
            .bind(micros(worker.connected_at))
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Every worker of every replica that refreshed its rows lately, in
    /// the order they connected.
    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows: Vec<Columns> = sqlx::query_as(concat!(
            "SELECT id, node, name, kinds, max_concurrent, in_flight, peer, connected_at \
             FROM workers WHERE seen_at >= ",
            database_micros!(),
            " - $1 ORDER BY connected_at, id"
        ))
        .bind(micros_of(FRESH_FOR))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, node, name, kinds, max_concurrent, in_flight, peer, connected_at)| {
                    WorkerRow {
                        id,
                        node,
                        name,
                        kinds,
                        max_concurrent: u64::try_from(max_concurrent).unwrap_or(0),
                        in_flight: u64::try_from(in_flight).unwrap_or(0),
                        peer,
                        connected_at: from_micros(connected_at),
                    }
                },
            )
            .collect())
    }
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
