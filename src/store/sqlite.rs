//! The embedded default: one SQLite file in WAL mode with full sync, so a
//! committed batch survives `kill -9` and loss of power.
//!
//! One server process owns the file: the connection holds an exclusive lock
//! for its whole life, so a second server pointed at the same file fails at
//! start instead of running the same tasks twice.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Connection, QueryBuilder, Sqlite, SqliteConnection,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous},
};
use tokio::sync::Mutex;

use super::{StoreError, Write, latest_version, row::TaskRow};
use crate::task::Task;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long opening waits for another process to let go of the file.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Rows per INSERT statement: SQLite allows 32 766 bound values.
const INSERT_CHUNK: usize = 1000;

/// The open database. Only the manager's persister uses it, one batch at a
/// time; the mutex only makes that sharing safe to express.
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
        refuse_newer_schema(&name, &mut connection).await?;
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

    /// Every stored task, oldest first.
    pub async fn load(&self) -> Result<Vec<Task>, StoreError> {
        let mut connection = self.connection.lock().await;
        let rows: Vec<TaskRow> = sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks ORDER BY id"
        ))
        .fetch_all(&mut *connection)
        .await?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    /// Applies a batch in one transaction: one fsync however many writes.
    pub async fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.lock().await;
        let mut transaction = connection.begin().await?;
        let inserts: Vec<TaskRow> = writes
            .iter()
            .filter_map(|write| match write {
                Write::Insert(task) => Some(TaskRow::from_task(task)),
                _ => None,
            })
            .collect();
        for chunk in inserts.chunks(INSERT_CHUNK) {
            insert_rows(chunk)
                .build()
                .execute(&mut *transaction)
                .await?;
        }
        for write in writes {
            match write {
                Write::Insert(_) => {}
                Write::Update(task) => {
                    let row = TaskRow::from_task(task);
                    sqlx::query(
                        "UPDATE tasks SET status = ?, result = ?, error = ?, \
                         progress_percent = ?, progress_message = ?, attempt = ?, node = ?, \
                         revision = ?, started_at = ?, completed_at = ? WHERE id = ?",
                    )
                    .bind(row.status)
                    .bind(row.result)
                    .bind(row.error)
                    .bind(row.progress_percent)
                    .bind(row.progress_message)
                    .bind(row.attempt)
                    .bind(row.node)
                    .bind(row.revision)
                    .bind(row.started_at)
                    .bind(row.completed_at)
                    .bind(row.id)
                    .execute(&mut *transaction)
                    .await?;
                }
                Write::Delete(id) => {
                    sqlx::query("DELETE FROM tasks WHERE id = ?")
                        .bind(id.as_uuid())
                        .execute(&mut *transaction)
                        .await?;
                }
            }
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
            .push_bind(row.name.clone())
            .push_bind(row.description.clone())
            .push_bind(row.kind.clone())
            .push_bind(row.status.clone())
            .push_bind(row.data.clone())
            .push_bind(row.result.clone())
            .push_bind(row.error.clone())
            .push_bind(row.timeout_seconds)
            .push_bind(row.labels.clone())
            .push_bind(row.progress_percent)
            .push_bind(row.progress_message.clone())
            .push_bind(row.attempt)
            .push_bind(row.node.clone())
            .push_bind(row.revision)
            .push_bind(row.request_id.clone())
            .push_bind(row.created_at)
            .push_bind(row.started_at)
            .push_bind(row.completed_at);
    });
    builder
}

/// Refuses a database that a newer binary migrated past what this one knows.
async fn refuse_newer_schema(
    name: &str,
    connection: &mut SqliteConnection,
) -> Result<(), StoreError> {
    let has_history: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *connection)
    .await?;
    if has_history.is_none() {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *connection)
        .await?;
    let supported = latest_version(&MIGRATOR);
    match found {
        Some(found) if found > supported => Err(StoreError::NewerSchema {
            store: name.to_owned(),
            found,
            supported,
        }),
        _ => Ok(()),
    }
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
                assert!(message.contains(&latest_version(&MIGRATOR).to_string()));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
}
