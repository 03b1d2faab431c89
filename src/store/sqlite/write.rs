//! How a batch's task writes reach the file: a few statements per commit,
//! each of a row count from [`CHUNK_SIZES`], so the statement texts are
//! few and fixed. sqlx caches a prepared statement by its text; a text
//! built for each commit's row count would be a new statement (parsed,
//! planned and cached anew, pushing others out) almost every time.

use std::sync::LazyLock;

use serde_json::Value as JsonValue;
use sqlx::{
    Arguments, Connection, Encode, SqliteConnection, Type,
    sqlite::{Sqlite, SqliteArguments},
};

use super::schedules::{ScheduleWrites, write_schedules};
use crate::{
    store::{
        StoreError, Write,
        row::{duration_micros, labels_json, micros, status_name},
    },
    task::Task,
};

/// Rows per statement, largest first: a write of any count is cut into
/// these, greedily: below 512 rows, at most one of each (the bits of the
/// count), as each statement is a round trip to SQLite's thread. The
/// largest binds 32 × 512 = 16 384 values, under SQLite's limit of 32 766.
const CHUNK_SIZES: [usize; 10] = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1];

/// The statement texts, one per size of [`CHUNK_SIZES`], built once.
type Texts = LazyLock<[String; CHUNK_SIZES.len()]>;

static INSERTS: Texts = LazyLock::new(|| {
    CHUNK_SIZES.map(|rows| {
        let row = format!("({})", vec!["?"; TASK_COLUMNS].join(", "));
        format!(
            concat!("INSERT INTO tasks (", task_columns!(), ") VALUES {}"),
            vec![row; rows].join(", ")
        )
    })
});

/// One statement for many tasks: what can change after create, by id.
/// The unary `+` on `changed.id` keeps SQLite from indexing the values:
/// without it, from a few hundred rows up, the planner built an automatic
/// index on them and scanned the whole table, probing it once per stored
/// task, so each commit's updates cost in proportion to every task ever
/// kept (28 µs a row at 100 000 rows, and growing). With it, the only plan
/// left walks the values and finds each row by the primary key; a test
/// checks that plan for every size.
static UPDATES: Texts = LazyLock::new(|| {
    CHUNK_SIZES.map(|rows| {
        let row = format!("({})", vec!["?"; UPDATE_COLUMNS].join(", "));
        format!(
            "WITH changed (id, status, result, error, progress_percent, progress_message, \
             attempt, node, revision, started_at, completed_at, retry_at, failed_runs, \
             cut_short_runs) AS (VALUES {}) \
             UPDATE tasks SET status = changed.status, result = changed.result, \
             error = changed.error, progress_percent = changed.progress_percent, \
             progress_message = changed.progress_message, attempt = changed.attempt, \
             node = changed.node, revision = changed.revision, \
             started_at = changed.started_at, completed_at = changed.completed_at, \
             retry_at = changed.retry_at, failed_runs = changed.failed_runs, \
             cut_short_runs = changed.cut_short_runs \
             FROM changed WHERE tasks.id = +changed.id",
            vec![row; rows].join(", ")
        )
    })
});

static DELETES: Texts = LazyLock::new(|| {
    CHUNK_SIZES.map(|rows| {
        format!(
            "DELETE FROM tasks WHERE id IN ({})",
            vec!["?"; rows].join(", ")
        )
    })
});

/// How many values an insert binds per row: the columns of
/// [`task_columns`].
const TASK_COLUMNS: usize = 32;

/// How many values an update binds per row, as [`Values::update`] does.
const UPDATE_COLUMNS: usize = 14;

/// One batch in one transaction: the schedules first, then the tasks.
pub(super) async fn write_batch(
    connection: &mut SqliteConnection,
    writes: &[Write],
    schedules: &ScheduleWrites<'_>,
) -> Result<(), StoreError> {
    let mut transaction = connection.begin().await?;
    write_schedules(&mut transaction, schedules).await?;
    // Few statements per batch, however many tasks: each statement is a
    // round trip to SQLite's worker thread.
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    for write in writes {
        match write {
            Write::Insert(task) => inserts.push(task.as_ref()),
            Write::Update(task) => updates.push(task.as_ref()),
            Write::Delete(id) => deletes.push(*id.as_uuid()),
        }
    }
    for (size, chunk) in chunks(&inserts) {
        let mut values = Values::with_capacity(chunk.len() * TASK_COLUMNS);
        for task in chunk {
            values.insert(task)?;
        }
        sqlx::query_with(&INSERTS[size], values.0)
            .execute(&mut *transaction)
            .await?;
    }
    for (size, chunk) in chunks(&updates) {
        let mut values = Values::with_capacity(chunk.len() * UPDATE_COLUMNS);
        for task in chunk {
            values.update(task)?;
        }
        sqlx::query_with(&UPDATES[size], values.0)
            .execute(&mut *transaction)
            .await?;
    }
    for (size, chunk) in chunks(&deletes) {
        let mut values = Values::with_capacity(chunk.len());
        for id in chunk {
            values.push(*id)?;
        }
        sqlx::query_with(&DELETES[size], values.0)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// `rows` cut into pieces of [`CHUNK_SIZES`], in order, each with the
/// index of its size.
fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        let (index, size) = CHUNK_SIZES
            .into_iter()
            .enumerate()
            .find(|(_, size)| *size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some((index, chunk))
    })
}

/// The values of one statement, in order, taken straight from the tasks
/// (as [`crate::store::row::TaskRow::from_task`] encodes them, which
/// `load` reads back). Text is borrowed from the task: sqlx copies it once
/// on its way to SQLite's thread, where a row built first was a second
/// copy. An update encodes only the columns it writes, not `data` and the
/// labels, which never change after create.
struct Values<'q>(SqliteArguments<'q>);

impl<'q> Values<'q> {
    fn with_capacity(values: usize) -> Self {
        let mut arguments = SqliteArguments::default();
        arguments.reserve(values, 0);
        Self(arguments)
    }

    fn push<T>(&mut self, value: T) -> Result<(), StoreError>
    where
        T: Encode<'q, Sqlite> + Type<Sqlite> + 'q,
    {
        self.0
            .add(value)
            .map_err(|source| StoreError::Database(sqlx::Error::Encode(source)))
    }

    /// Every column, in the order of [`task_columns`].
    fn insert(&mut self, task: &'q Task) -> Result<(), StoreError> {
        let policy = &task.scheduling.retry_policy;
        self.push(*task.id.as_uuid())?;
        self.push(task.name.as_str())?;
        self.push(task.description.as_str())?;
        self.push(task.kind.as_str())?;
        self.push(status_name(task.status))?;
        self.push(json(task.data.as_deref()))?;
        self.push(json(task.result.as_deref()))?;
        self.push(task.error.as_str())?;
        self.push(i64::from(task.timeout_seconds))?;
        self.push(labels_json(&task.labels))?;
        self.progress(task)?;
        self.push(i64::from(task.attempt))?;
        self.push(task.node.as_str())?;
        self.push(revision(task))?;
        self.push(task.request_id.as_deref())?;
        self.push(micros(task.created_at))?;
        self.push(task.started_at.map(micros))?;
        self.push(task.completed_at.map(micros))?;
        self.push(i64::from(task.scheduling.priority))?;
        self.push(task.scheduling.run_after.map(micros))?;
        self.push(i64::from(task.scheduling.queue_timeout_seconds))?;
        self.push(i64::from(policy.max_attempts))?;
        self.push(duration_micros(policy.initial_backoff))?;
        self.push(duration_micros(policy.max_backoff))?;
        self.push(policy.backoff_multiplier)?;
        self.push(task.retry_at.map(micros))?;
        self.push(i64::from(task.failed_runs))?;
        self.push(i64::from(task.cut_short_runs))?;
        self.push(task.trace_context.traceparent.as_str())?;
        self.push(task.trace_context.tracestate.as_str())?;
        self.push(task.tenant.as_str())
    }

    /// The two progress columns: percent, then message.
    fn progress(&mut self, task: &'q Task) -> Result<(), StoreError> {
        let progress = task.progress.as_ref();
        self.push(progress.map(|progress| i64::from(progress.percent)))?;
        self.push(progress.map(|progress| progress.message.as_str()))
    }

    /// The id, then what can change after create, as [`UPDATES`] reads
    /// them.
    fn update(&mut self, task: &'q Task) -> Result<(), StoreError> {
        self.push(*task.id.as_uuid())?;
        self.push(status_name(task.status))?;
        self.push(json(task.result.as_deref()))?;
        self.push(task.error.as_str())?;
        self.progress(task)?;
        self.push(i64::from(task.attempt))?;
        self.push(task.node.as_str())?;
        self.push(revision(task))?;
        self.push(task.started_at.map(micros))?;
        self.push(task.completed_at.map(micros))?;
        self.push(task.retry_at.map(micros))?;
        self.push(i64::from(task.failed_runs))?;
        self.push(i64::from(task.cut_short_runs))
    }
}

/// A JSON column's text.
fn json(value: Option<&JsonValue>) -> Option<String> {
    value.map(JsonValue::to_string)
}

fn revision(task: &Task) -> i64 {
    i64::try_from(task.revision).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        store::{
            row::tests::{full_task, lived, truncate_to_micros},
            sqlite::{SqliteStore, tests::new_task},
        },
        task::TaskEvent,
    };

    /// Every column through the insert and the update, read back as
    /// written: the values bound here and `TaskRow`, which reads them,
    /// agree.
    #[tokio::test]
    async fn every_field_reads_back_after_insert_and_after_update() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&directory.path().join("tasks.db"))
            .await
            .expect("opens");
        let inserted = lived(full_task());
        let mut created = full_task();
        created.request_id = Some("another".into());
        store
            .commit(&[
                Write::Insert(Arc::new(inserted.clone())),
                Write::Insert(Arc::new(created.clone())),
            ])
            .await
            .expect("inserts");
        let updated = lived(created);
        store
            .commit(&[Write::Update(Arc::new(updated.clone()))])
            .await
            .expect("updates");
        assert_eq!(
            store.load().await.expect("loads"),
            [
                truncate_to_micros(inserted),
                truncate_to_micros(updated.clone())
            ]
        );

        // Running (the restart ran it again); now it completes.
        let mut finished = updated;
        finished
            .apply(
                TaskEvent::Complete(Arc::new(serde_json::json!({"echo": "a\u{0}b"}))),
                SystemTime::now(),
            )
            .expect("completes");
        store
            .commit(&[Write::Update(Arc::new(finished.clone()))])
            .await
            .expect("updates");
        let payloads = store.payloads(&[finished.id]).await.expect("reads");
        assert_eq!(
            payloads
                .get(&finished.id)
                .and_then(|payload| payload.result.clone()),
            finished.result
        );
        let loaded = store.load().await.expect("loads");
        assert_eq!(
            loaded.get(1),
            Some(&truncate_to_micros(finished).without_payload())
        );
    }

    /// Every statement text, as SQLite plans it on the real schema: each
    /// finds its rows by the primary key and none walks the table. A scan
    /// would cost each commit in proportion to every task kept.
    #[tokio::test]
    async fn no_write_scans_the_table() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&directory.path().join("tasks.db"))
            .await
            .expect("opens");
        let mut slot = store.connection.lock().await;
        let connection = slot.as_mut().expect("open");
        for (kind, texts) in [("update", &UPDATES), ("delete", &DELETES)] {
            for (index, text) in texts.iter().enumerate() {
                let plan: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(&format!("EXPLAIN QUERY PLAN {text}"))
                        .fetch_all(&mut *connection)
                        .await
                        .expect("plans");
                let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
                let rows = CHUNK_SIZES[index];
                assert!(
                    steps.iter().any(|step| step.starts_with("SEARCH tasks")),
                    "{kind} of {rows} rows: {steps:?}"
                );
                assert!(
                    !steps.iter().any(|step| step.starts_with("SCAN tasks")),
                    "{kind} of {rows} rows: {steps:?}"
                );
            }
        }
    }

    /// Counts that cut into every size, several of some: each write lands,
    /// once, with its own values.
    #[tokio::test]
    async fn writes_of_any_count_land_whole() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&directory.path().join("tasks.db"))
            .await
            .expect("opens");
        let tasks: Vec<_> = (0..345)
            .map(|number| new_task(&format!("task {number}"), None))
            .collect();
        let inserts: Vec<Write> = tasks
            .iter()
            .map(|task| Write::Insert(Arc::new(task.clone())))
            .collect();
        store.commit(&inserts).await.expect("inserts");

        // 301 updates (256 + 32 + 8 + 4 + 1), each its own node; 7
        // deletes; the rest untouched.
        let mut expected = Vec::new();
        let mut writes = Vec::new();
        for (number, task) in tasks.into_iter().enumerate() {
            if number < 301 {
                let mut running = task;
                running
                    .apply(
                        TaskEvent::Start {
                            node: format!("node {number}"),
                        },
                        SystemTime::UNIX_EPOCH,
                    )
                    .expect("starts");
                writes.push(Write::Update(Arc::new(running.clone())));
                expected.push(running);
            } else if number < 308 {
                writes.push(Write::Delete(task.id));
            } else {
                expected.push(task);
            }
        }
        store.commit(&writes).await.expect("updates and deletes");
        assert_eq!(store.load().await.expect("loads"), expected);
    }

    #[test]
    fn chunks_cover_every_row_once_in_order_with_few_sizes() {
        for count in 0..600 {
            let rows: Vec<usize> = (0..count).collect();
            let mut seen = Vec::new();
            let mut sizes = [0usize; CHUNK_SIZES.len()];
            for (index, chunk) in chunks(&rows) {
                assert_eq!(chunk.len(), CHUNK_SIZES[index]);
                sizes[index] += 1;
                seen.extend_from_slice(chunk);
            }
            assert_eq!(seen, rows, "{count} rows");
            assert!(
                sizes[1..].iter().all(|&times| times <= 1),
                "{count} rows: {sizes:?}"
            );
        }
    }

    #[test]
    fn every_text_binds_what_its_rows_bind() {
        let placeholders = |text: &str| text.matches('?').count();
        for (index, rows) in CHUNK_SIZES.into_iter().enumerate() {
            assert_eq!(placeholders(&INSERTS[index]), rows * TASK_COLUMNS);
            assert_eq!(placeholders(&UPDATES[index]), rows * UPDATE_COLUMNS);
            assert_eq!(placeholders(&DELETES[index]), rows);
        }
        assert_eq!(
            task_columns!().split(',').count(),
            TASK_COLUMNS,
            "TASK_COLUMNS follows the columns"
        );
        assert!(CHUNK_SIZES[0] * TASK_COLUMNS <= 32_766);
    }
}
