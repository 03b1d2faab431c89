//! The embedded default: one SQLite file in WAL mode with full sync, so a
//! committed batch survives `kill -9` and loss of power.
//!
//! One server process owns the file: the connection holds an exclusive lock
//! for its whole life, so a second server pointed at the same file fails at
//! start instead of running the same tasks twice.
//!
//! A failed commit closes the connection, and the next use opens a new one.
//! After a failed `COMMIT` (a full disk, an I/O error) SQLite may or may not
//! have rolled the transaction back, and sqlx's idea of it can differ from
//! SQLite's: sqlx then wraps every later batch in a `SAVEPOINT` inside a
//! transaction that never ends, and reports commits that never reach the
//! file. Closing rolls back whatever is open; a new connection starts clean.

use std::{collections::HashMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde_json::Value as JsonValue;
use uuid::Uuid;

use sqlx::{
    Connection, QueryBuilder, Sqlite, SqliteConnection,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous},
};
use tokio::sync::Mutex;

use super::{Batch, BatchOutcome, StoreError, Write, refuse_newer_schema, row::TaskRow};
use crate::task::{PayloadLocation, Task, TaskId};

mod schedules;
mod write;

use schedules::ScheduleWrites;
use write::write_batch;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long opening waits for another process to let go of the file.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Rows per statement of the reads by id and the schedule writes (one and
/// twelve values a row), under SQLite's 32 766 bound values. The task
/// writes have sizes of their own (see the `write` module).
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
    /// How to open the file again after a failure.
    options: SqliteConnectOptions,
    /// `None` after a failure closed it: the next use opens a new one.
    connection: Mutex<Option<SqliteConnection>>,
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
        let mut connection = connect(&options).await.map_err(open_error)?;
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
            options,
            connection: Mutex::new(Some(connection)),
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
        let mut slot = self.connection.lock().await;
        let connection = self.connected(&mut slot).await?;
        // The columns of `task_columns!`, with the payloads of finished
        // tasks left unread.
        let rows: Vec<TaskRow> = sqlx::query_as(
            "SELECT id, name, description, kind, status, \
             CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL ELSE data END \
             AS data, \
             CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN NULL ELSE result END \
             AS result, \
             error, timeout_seconds, labels, progress_percent, progress_message, attempt, node, \
             revision, request_id, created_at, started_at, completed_at, priority, run_after, \
             queue_timeout_seconds, max_attempts, initial_backoff_us, max_backoff_us, \
             backoff_multiplier, retry_at, failed_runs, cut_short_runs, traceparent, tracestate, \
             tenant FROM tasks ORDER BY id",
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
        let rows: Vec<(Uuid, Option<String>, Option<String>)> = self
            .select_by_ids("SELECT id, data, result FROM tasks WHERE id IN (", ids)
            .await?;
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

    /// How many bytes of JSON text the `data` and `result` of each task
    /// `ids` names take, without reading them (SQLite knows a value's length
    /// from its record header), so a page can be cut before its payloads are
    /// read. A task not in the file is not in the map.
    pub async fn payload_sizes(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, u64>, StoreError> {
        let rows: Vec<(Uuid, i64)> = self
            .select_by_ids(
                "SELECT id, COALESCE(octet_length(data), 0) + COALESCE(octet_length(result), 0) \
                 FROM tasks WHERE id IN (",
                ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, bytes)| (TaskId::from_uuid(id), u64::try_from(bytes).unwrap_or(0)))
            .collect())
    }

    /// Runs `select` (ending in `WHERE id IN (`) for `ids`, a thousand at a
    /// time. Callers parse what they read after it returns, so commits,
    /// which wait for the connection, do not wait for that.
    async fn select_by_ids<Row>(&self, select: &str, ids: &[TaskId]) -> Result<Vec<Row>, StoreError>
    where
        Row: for<'row> sqlx::FromRow<'row, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        let mut rows = Vec::new();
        let mut slot = self.connection.lock().await;
        let connection = self.connected(&mut slot).await?;
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut builder = QueryBuilder::<Sqlite>::new(select);
            let mut bound = builder.separated(", ");
            for id in chunk {
                bound.push_bind(*id.as_uuid());
            }
            builder.push(")");
            rows.extend(
                builder
                    .build_query_as::<Row>()
                    .fetch_all(&mut *connection)
                    .await?,
            );
        }
        Ok(rows)
    }

    /// Applies a batch in one transaction: one fsync however many writes.
    /// `Ok` means every write is in the file; on an error none is, and the
    /// connection is closed (see the module's comment).
    pub async fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.commit_with_schedules(writes, &ScheduleWrites::default())
            .await
    }

    /// [`SqliteStore::commit`], with schedule writes in the same
    /// transaction: all of them are in the file, or none.
    async fn commit_with_schedules(
        &self,
        writes: &[Write],
        schedules: &ScheduleWrites<'_>,
    ) -> Result<(), StoreError> {
        if writes.is_empty() && schedules.is_empty() {
            return Ok(());
        }
        let mut slot = self.connection.lock().await;
        let outcome = match self.connected(&mut slot).await {
            Ok(connection) => write_batch(connection, writes, schedules).await,
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            close(&mut slot).await;
        }
        outcome
    }

    /// Whether a page can be written: a probe for a store that failed,
    /// cheaper than a batch. It rewrites the header's `user_version` (which
    /// nothing else uses), so a full disk or a broken file fails it, and it
    /// survives nothing but the probe itself.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut slot = self.connection.lock().await;
        let outcome = match self.connected(&mut slot).await {
            Ok(connection) => probe_write(connection).await,
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            close(&mut slot).await;
        }
        outcome
    }

    /// The open connection, opening a new one if a failure closed it.
    async fn connected<'a>(
        &self,
        slot: &'a mut Option<SqliteConnection>,
    ) -> Result<&'a mut SqliteConnection, StoreError> {
        if slot.is_none() {
            let connection = connect(&self.options).await?;
            tracing::info!(store = %self.name, "reopened the store after a failure");
            *slot = Some(connection);
        }
        slot.as_mut().ok_or_else(|| StoreError::Corrupt {
            id: String::new(),
            reason: "the connection vanished while it was opened".into(),
        })
    }
}

impl super::TaskStore for SqliteStore {
    /// Every part but `changes` (nobody else reads this file): inserts
    /// and updates of tasks whole, deletes, and the schedules' writes.
    fn commit<'a>(
        &'a self,
        _origin: &'a str,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchOutcome, StoreError>> {
        Box::pin(async move {
            let writes: Vec<Write> = batch
                .inserts
                .iter()
                .map(|task| Write::Insert(Arc::clone(task)))
                .chain(
                    batch
                        .updates
                        .iter()
                        .map(|task| Write::Update(Arc::clone(task))),
                )
                .chain(batch.deletes.iter().map(|id| Write::Delete(*id)))
                .collect();
            let schedules = ScheduleWrites {
                upserts: &batch.schedule_upserts,
                deletes: &batch.schedule_deletes,
            };
            self.commit_with_schedules(&writes, &schedules).await?;
            Ok(BatchOutcome::all_written(batch))
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SqliteStore::probe(self))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn call_deadline(&self) -> Option<Duration> {
        None
    }

    fn idle_probe_period(&self) -> Option<Duration> {
        None
    }
}

/// Opens a connection and takes the file's lock. Exclusive locking takes
/// it at the first write: one is done now, so a second server fails here.
async fn connect(options: &SqliteConnectOptions) -> Result<SqliteConnection, sqlx::Error> {
    let mut connection = SqliteConnection::connect_with(options).await?;
    sqlx::query("BEGIN IMMEDIATE; COMMIT;")
        .execute(&mut connection)
        .await?;
    Ok(connection)
}

/// Closes a connection that failed, which rolls back whatever it had open
/// and lets go of the file's lock; the next use opens a new one.
async fn close(slot: &mut Option<SqliteConnection>) {
    if let Some(connection) = slot.take()
        && let Err(error) = connection.close().await
    {
        tracing::debug!(error = %error, "closing the failed store connection");
    }
}

async fn probe_write(connection: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut transaction = connection.begin().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *transaction)
        .await?;
    // PRAGMA takes no bound values; the number is ours, not a user's.
    let next = if version == 1 { 2 } else { 1 };
    sqlx::query(&format!("PRAGMA user_version = {next}"))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(())
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

    pub(super) fn new_task(name: &str, request_id: Option<&str>) -> Task {
        let new_task = NewTask {
            tenant: Default::default(),
            name: name.into(),
            description: String::new(),
            kind: "echo".into(),
            data: Some(Arc::new(serde_json::json!({"text": "a\u{0}b"}))),
            timeout_seconds: 60,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            request_id: request_id.map(str::to_owned),
            scheduling: Default::default(),
            trace_context: Default::default(),
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

    /// A tmpfs of its own, unmounted when dropped.
    pub(super) struct Tmpfs(pub(super) tempfile::TempDir);

    impl Tmpfs {
        /// `None` where mounting is not allowed (the test needs root).
        pub(super) fn mount(size: &str) -> Option<Self> {
            let directory = tempfile::tempdir().expect("temporary directory");
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(directory.path())
                .output()
                .ok()?;
            mounted.status.success().then_some(Self(directory))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[tokio::test]
    async fn on_a_full_disk_a_commit_that_says_ok_is_in_the_file() {
        let Some(tmpfs) = Tmpfs::mount("2m") else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (the test needs root)");
            return;
        };
        let path = tmpfs.0.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let padding = "x".repeat(50 * 1024);
        let (mut committed, mut failed) = (Vec::new(), 0);
        // Well past full: once a COMMIT has failed, sqlx and SQLite could
        // disagree on whether a transaction is open, and later batches went
        // into one that never ended, each reported as committed.
        for number in 0..60 {
            let mut task = new_task(&format!("big {number}"), None);
            task.data = Some(Arc::new(serde_json::json!(padding)));
            let task = Arc::new(task);
            match store.commit(&[Write::Insert(Arc::clone(&task))]).await {
                Ok(()) => committed.push(task.id),
                Err(_) => failed += 1,
            }
        }
        assert!(failed > 0, "the disk never filled up");
        drop(store);
        let reopened = SqliteStore::open(&path).await.expect("reopens");
        let stored: Vec<TaskId> = reopened
            .load()
            .await
            .expect("loads")
            .iter()
            .map(|task| task.id)
            .collect();
        assert!(
            stored == committed,
            "every commit that said OK, and only those, must be in the file: \
             {} said OK, {} tasks are in the file",
            committed.len(),
            stored.len()
        );
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
            let mut slot = store.connection.lock().await;
            let connection = slot.as_mut().expect("open");
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
