//! How a batch's task writes reach the file: a few statements per commit,
//! each of a row count from [`CHUNK_SIZES`], so the statement texts are
//! few and fixed. sqlx caches a prepared statement by its text; a text
//! built for each commit's row count would be a new statement (parsed,
//! planned and cached anew, pushing others out) almost every time.

use std::sync::LazyLock;

use sqlx::{
    Connection, SqliteConnection,
    query::Query,
    sqlite::{Sqlite, SqliteArguments},
};

use super::schedules::{ScheduleWrites, write_schedules};
use crate::store::{StoreError, Write, row::TaskRow};

/// Rows per statement, largest first: a write of any count is cut into
/// these, greedily (so at most three of each smaller size). The largest
/// binds 32 × 256 = 8 192 values, well under SQLite's limit of 32 766.
const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

type Statement<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

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

/// How many values an update binds per row, as [`bind_update`] does.
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
            Write::Insert(task) => inserts.push(TaskRow::from_task(task)),
            Write::Update(task) => updates.push(TaskRow::from_task(task)),
            Write::Delete(id) => deletes.push(*id.as_uuid()),
        }
    }
    for (size, chunk) in chunks(&inserts) {
        let statement = sqlx::query(&INSERTS[size]);
        chunk
            .iter()
            .fold(statement, bind_insert)
            .execute(&mut *transaction)
            .await?;
    }
    for (size, chunk) in chunks(&updates) {
        let statement = sqlx::query(&UPDATES[size]);
        chunk
            .iter()
            .fold(statement, bind_update)
            .execute(&mut *transaction)
            .await?;
    }
    for (size, chunk) in chunks(&deletes) {
        let statement = sqlx::query(&DELETES[size]);
        chunk
            .iter()
            .fold(statement, |statement, id| statement.bind(*id))
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

/// A row's values, in the order of [`task_columns`].
fn bind_insert<'q>(statement: Statement<'q>, row: &'q TaskRow) -> Statement<'q> {
    statement
        .bind(row.id)
        .bind(&row.name)
        .bind(&row.description)
        .bind(&row.kind)
        .bind(&row.status)
        .bind(&row.data)
        .bind(&row.result)
        .bind(&row.error)
        .bind(row.timeout_seconds)
        .bind(&row.labels)
        .bind(row.progress_percent)
        .bind(&row.progress_message)
        .bind(row.attempt)
        .bind(&row.node)
        .bind(row.revision)
        .bind(&row.request_id)
        .bind(row.created_at)
        .bind(row.started_at)
        .bind(row.completed_at)
        .bind(row.priority)
        .bind(row.run_after)
        .bind(row.queue_timeout_seconds)
        .bind(row.max_attempts)
        .bind(row.initial_backoff_us)
        .bind(row.max_backoff_us)
        .bind(row.backoff_multiplier)
        .bind(row.retry_at)
        .bind(row.failed_runs)
        .bind(row.cut_short_runs)
        .bind(&row.traceparent)
        .bind(&row.tracestate)
        .bind(&row.tenant)
}

/// The id, then what can change after create, as [`UPDATES`] reads them.
fn bind_update<'q>(statement: Statement<'q>, row: &'q TaskRow) -> Statement<'q> {
    statement
        .bind(row.id)
        .bind(&row.status)
        .bind(&row.result)
        .bind(&row.error)
        .bind(row.progress_percent)
        .bind(&row.progress_message)
        .bind(row.attempt)
        .bind(&row.node)
        .bind(row.revision)
        .bind(row.started_at)
        .bind(row.completed_at)
        .bind(row.retry_at)
        .bind(row.failed_runs)
        .bind(row.cut_short_runs)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        store::sqlite::{SqliteStore, tests::new_task},
        task::TaskEvent,
    };

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

        // 301 updates (256 + 16 × 2 + 4 × 3 + 1), each its own node; 7
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
                sizes[1..].iter().all(|&times| times <= 3),
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
