//! The embedded default: one SQLite file in WAL mode with full sync, so a
//! committed batch survives `kill -9` and loss of power.
//!
//! One server process owns the file: the connection holds an exclusive lock
//! for its whole life, so a second server pointed at the same file fails at
//! start instead of running the same tasks twice.

use std::{collections::HashMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use serde_json::Value as JsonValue;
use uuid::Uuid;

use sqlx::{
    Connection, QueryBuilder, Sqlite, SqliteConnection,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous},
};
use tokio::sync::Mutex;

use super::{StoreError, Write, refuse_newer_schema, row::TaskRow};
use crate::task::{PayloadLocation, Task, TaskId};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long opening waits for another process to let go of the file.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Rows per statement: SQLite allows 32 766 bound values, and a row binds
/// at most 19.
const ROWS_PER_STATEMENT: usize = 1000;

/// A finished task's `data` and `result`, read back from the file.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPayload {
    pub data: Option<Arc<JsonValue>>,
    pub result: Option<Arc<JsonValue>>,
}

/// The open database. The manager's persister writes through it, one batch
/// at a time, and the manager's handle reads finished tasks' payloads; the
/// mutex takes turns between them (exclusive locking allows no second
/// connection).
#[derive(Debug)]
pub struct SqliteStore {
    name: String,
    connection: Mutex<SqliteConnection>,
}

impl SqliteStore {
    /// Opens (creating if missing) the file at `path`, takes its lock and
    /// applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let name = format!("sqlite://{}", path.display());
        let open_error = |source| StoreError::Open {
            store: name.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is synced at every commit, so a committed batch
            // survives a power loss, not only a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .locking_mode(SqliteLockingMode::Exclusive)
            .busy_timeout(LOCK_WAIT);
        let mut connection = SqliteConnection::connect_with(&options)
            .await
            .map_err(open_error)?;
        // Exclusive locking takes the lock at the first write: do one now,
        // so a second server fails here.
        sqlx::query("BEGIN IMMEDIATE; COMMIT;")
            .execute(&mut connection)
            .await
            .map_err(open_error)?;
        refuse_newer_schema(&name, &MIGRATOR, recorded_version(&mut connection).await?)?;
        MIGRATOR
            .run(&mut connection)
            .await
            .map_err(|source| StoreError::Migrate {
                store: name.clone(),
                source,
            })?;
        Ok(Self {
            name,
            connection: Mutex::new(connection),
        })
    }

    /// The store as the `store` setting names it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every stored task, oldest first. Finished tasks come without their
    /// `data` and `result` (marked [`PayloadLocation::InStore`]): they stay
    /// in the file, and [`SqliteStore::payloads`] reads them when asked.
    pub async fn load(&self) -> Result<Vec<Task>, StoreError> {
        let mut connection = self.connection.lock().await;
        // The columns of `task_columns!`, with the payloads of finished
        // tasks left unread.
        let rows: Vec<TaskRow> = sqlx::query_as(
            "SELECT id, name, description, kind, status, \
             CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL ELSE data END \
             AS data, \
             CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL ELSE result END \
             AS result, \
             error, timeout_seconds, labels, progress_percent, progress_message, attempt, node, \
             revision, request_id, created_at, started_at, completed_at \
             FROM tasks ORDER BY id",
        )
        .fetch_all(&mut *connection)
        .await?;
        rows.into_iter()
            .map(|row| {
                let mut task = row.into_task()?;
                if task.status.is_terminal() {
                    task.payload = PayloadLocation::InStore;
                }
                Ok(task)
            })
            .collect()
    }

    /// The `data` and `result` of the tasks `ids` names, in one query per
    /// thousand ids; a task not in the file (forgotten) is not in the map.
    pub async fn payloads(
        &self,
        ids: &[TaskId],
    ) -> Result<HashMap<TaskId, StoredPayload>, StoreError> {
        let mut rows: Vec<(Uuid, Option<String>, Option<String>)> = Vec::new();
        let mut connection = self.connection.lock().await;
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut builder =
                QueryBuilder::<Sqlite>::new("SELECT id, data, result FROM tasks WHERE id IN (");
            let mut bound = builder.separated(", ");
            for id in chunk {
                bound.push_bind(*id.as_uuid());
            }
            builder.push(")");
            rows.extend(
                builder
                    .build_query_as::<(Uuid, Option<String>, Option<String>)>()
                    .fetch_all(&mut *connection)
                    .await?,
            );
        }
        // Parsed after letting go of the connection, which commits wait for.
        drop(connection);
        let mut payloads = HashMap::with_capacity(rows.len());
        for (id, data, result) in rows {
            let payload = StoredPayload {
                data: json_column(id, "data", data)?,
                result: json_column(id, "result", result)?,
            };
            payloads.insert(TaskId::from_uuid(id), payload);
        }
        Ok(payloads)
    }

    /// Applies a batch in one transaction: one fsync however many writes.
    pub async fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.lock().await;
        let mut transaction = connection.begin().await?;
        // Few statements per batch, however many tasks: each statement is a
        // round trip to SQLite's worker thread.
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for write in writes {
            match write {
                Write::Insert(task) => inserts.push(TaskRow::from_task(task)),
                Write::Update(task) => updates.push(TaskRow::from_task(task)),
                Write::Delete(id) => deletes.push(*id.as_uuid()),
            }
        }
        for chunk in inserts.chunks(ROWS_PER_STATEMENT) {
            insert_rows(chunk)
                .build()
                .execute(&mut *transaction)
                .await?;
        }
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            update_rows(chunk)
                .build()
                .execute(&mut *transaction)
                .await?;
        }
        for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
            let mut builder = QueryBuilder::<Sqlite>::new("DELETE FROM tasks WHERE id IN (");
            let mut ids = builder.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            builder.push(")");
            builder.build().execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}

fn insert_rows(rows: &[TaskRow]) -> QueryBuilder<'_, Sqlite> {
    let mut builder = QueryBuilder::new(concat!("INSERT INTO tasks (", task_columns!(), ") "));
    builder.push_values(rows, |mut values, row| {
        values
            .push_bind(row.id)
            .push_bind(&row.name)
            .push_bind(&row.description)
            .push_bind(&row.kind)
            .push_bind(&row.status)
            .push_bind(&row.data)
            .push_bind(&row.result)
            .push_bind(&row.error)
            .push_bind(row.timeout_seconds)
            .push_bind(&row.labels)
            .push_bind(row.progress_percent)
            .push_bind(&row.progress_message)
            .push_bind(row.attempt)
            .push_bind(&row.node)
            .push_bind(row.revision)
            .push_bind(&row.request_id)
            .push_bind(row.created_at)
            .push_bind(row.started_at)
            .push_bind(row.completed_at);
    });
    builder
}

/// One UPDATE for many tasks: what can change after create, by id.
fn update_rows(rows: &[TaskRow]) -> QueryBuilder<'_, Sqlite> {
    let mut builder = QueryBuilder::new(
        "WITH changed (id, status, result, error, progress_percent, progress_message, \
         attempt, node, revision, started_at, completed_at) AS (",
    );
    builder.push_values(rows, |mut values, row| {
        values
            .push_bind(row.id)
            .push_bind(&row.status)
            .push_bind(&row.result)
            .push_bind(&row.error)
            .push_bind(row.progress_percent)
            .push_bind(&row.progress_message)
            .push_bind(row.attempt)
            .push_bind(&row.node)
            .push_bind(row.revision)
            .push_bind(row.started_at)
            .push_bind(row.completed_at);
    });
    builder.push(
        ") UPDATE tasks SET status = changed.status, result = changed.result, \
         error = changed.error, progress_percent = changed.progress_percent, \
         progress_message = changed.progress_message, attempt = changed.attempt, \
         node = changed.node, revision = changed.revision, started_at = changed.started_at, \
         completed_at = changed.completed_at FROM changed WHERE tasks.id = changed.id",
    );
    builder
}

/// A JSON column as the row stored it.
fn json_column(
    id: Uuid,
    column: &str,
    text: Option<String>,
) -> Result<Option<Arc<JsonValue>>, StoreError> {
    text.map(|text| {
        serde_json::from_str(&text)
            .map(Arc::new)
            .map_err(|error| StoreError::Corrupt {
                id: id.to_string(),
                reason: format!("{column} is not JSON: {error}"),
            })
    })
    .transpose()
}

/// The highest migration version recorded in the file, if it has any.
async fn recorded_version(connection: &mut SqliteConnection) -> Result<Option<i64>, StoreError> {
    let has_history: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *connection)
    .await?;
    if has_history.is_none() {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *connection)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

    use super::*;
    use crate::task::{NewTask, TaskEvent, TaskId};

    fn new_task(name: &str, request_id: Option<&str>) -> Task {
        let new_task = NewTask {
            name: name.into(),
            description: String::new(),
            kind: "echo".into(),
            data: Some(Arc::new(serde_json::json!({"text": "a\u{0}b"}))),
            timeout_seconds: 60,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            request_id: request_id.map(str::to_owned),
        };
        Task::new(TaskId::generate(), new_task, SystemTime::UNIX_EPOCH)
    }

    #[tokio::test]
    async fn a_batch_of_inserts_updates_and_deletes_is_what_loads_back() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let kept = new_task("kept", Some("r1"));
        let dropped = new_task("dropped", None);
        store
            .commit(&[
                Write::Insert(Arc::new(kept.clone())),
                Write::Insert(Arc::new(dropped.clone())),
            ])
            .await
            .expect("inserts");
        let mut running = kept.clone();
        running
            .apply(
                TaskEvent::Start { node: "n".into() },
                SystemTime::UNIX_EPOCH,
            )
            .expect("starts");
        store
            .commit(&[
                Write::Update(Arc::new(running.clone())),
                Write::Delete(dropped.id),
            ])
            .await
            .expect("updates");
        drop(store);

        let reopened = SqliteStore::open(&path).await.expect("reopens");
        assert_eq!(reopened.load().await.expect("loads"), vec![running]);
    }

    #[tokio::test]
    async fn finished_tasks_load_without_their_payload_and_payloads_reads_it_back() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let waiting = new_task("waiting", None);
        let mut finished = new_task("finished", None);
        for event in [
            TaskEvent::Start { node: "n".into() },
            TaskEvent::Complete(Arc::new(serde_json::json!({"echo": "a\u{0}b", "n": 1.5}))),
        ] {
            finished
                .apply(event, SystemTime::UNIX_EPOCH)
                .expect("legal");
        }
        store
            .commit(&[
                Write::Insert(Arc::new(waiting.clone())),
                Write::Insert(Arc::new(finished.clone())),
            ])
            .await
            .expect("inserts");

        let loaded = store.load().await.expect("loads");
        assert_eq!(loaded, vec![waiting, finished.without_payload()]);
        let forgotten = TaskId::generate();
        let payloads = store
            .payloads(&[finished.id, forgotten])
            .await
            .expect("reads");
        assert_eq!(payloads.len(), 1, "a task not in the file is left out");
        assert_eq!(
            payloads.get(&finished.id),
            Some(&StoredPayload {
                data: finished.data.clone(),
                result: finished.result.clone(),
            })
        );
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_file_is_refused_while_the_first_is_open() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let _first = SqliteStore::open(&path).await.expect("opens");
        let second = SqliteStore::open(&path).await;
        assert!(matches!(second, Err(StoreError::Open { .. })), "{second:?}");
    }

    #[tokio::test]
    async fn a_schema_from_a_newer_binary_is_refused_with_both_versions() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        {
            let mut connection = store.connection.lock().await;
            sqlx::query(
                "INSERT INTO _sqlx_migrations \
                 (version, description, success, checksum, execution_time) \
                 VALUES (99999, 'from the future', TRUE, X'00', 0)",
            )
            .execute(&mut *connection)
            .await
            .expect("future migration recorded");
        }
        drop(store);
        let refused = SqliteStore::open(&path).await;
        match refused {
            Err(error @ StoreError::NewerSchema { .. }) => {
                let message = error.to_string();
                assert!(message.contains("99999"), "{message}");
                assert!(message.contains(&crate::store::latest_version(&MIGRATOR).to_string()));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
