//! The schedules of the SQLite file: written with the tasks of a batch, in
//! its transaction (so a firing's new task and its schedule's next firing
//! are one commit), and read back whole at start.

use std::sync::Arc;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{ROWS_PER_STATEMENT, SqliteStore};
use crate::{
    schedule::{Schedule, ScheduleId},
    store::{
        StoreError,
        schedule_row::{ScheduleRow, schedule_columns},
    },
};

/// The schedule parts of a batch: stored whole, then forgotten.
#[derive(Debug, Default)]
pub(super) struct ScheduleWrites<'a> {
    pub upserts: &'a [Arc<Schedule>],
    pub deletes: &'a [ScheduleId],
}

impl ScheduleWrites<'_> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

impl SqliteStore {
    /// Every stored schedule, oldest first.
    pub async fn load_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<ScheduleRow> = {
            let mut slot = self.connection.lock().await;
            let connection = self.connected(&mut slot).await?;
            sqlx::query_as(concat!(
                "SELECT ",
                schedule_columns!(),
                " FROM schedules ORDER BY id"
            ))
            .fetch_all(&mut *connection)
            .await?
        };
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }
}

/// Stores the upserts whole (new or replacing the row of their id), then
/// deletes, inside the caller's transaction.
pub(super) async fn write_schedules(
    connection: &mut SqliteConnection,
    schedules: &ScheduleWrites<'_>,
) -> Result<(), StoreError> {
    let rows: Vec<ScheduleRow> = schedules
        .upserts
        .iter()
        .map(|schedule| ScheduleRow::from_schedule(schedule))
        .collect();
    // 12 values a row: a thousand rows stay well under SQLite's limit.
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut builder = QueryBuilder::<Sqlite>::new(concat!(
            "INSERT INTO schedules (",
            schedule_columns!(),
            ") "
        ));
        builder.push_values(chunk, |mut values, row| {
            values
                .push_bind(row.id)
                .push_bind(&row.cron)
                .push_bind(&row.time_zone)
                .push_bind(&row.template)
                .push_bind(row.paused)
                .push_bind(&row.overlap)
                .push_bind(row.next_fire_at)
                .push_bind(row.last_fire_at)
                .push_bind(row.last_task_id)
                .push_bind(row.created_at)
                .push_bind(row.revision)
                .push_bind(&row.tenant);
        });
        builder.push(
            " ON CONFLICT (id) DO UPDATE SET cron = excluded.cron, \
             time_zone = excluded.time_zone, template = excluded.template, \
             paused = excluded.paused, overlap = excluded.overlap, \
             next_fire_at = excluded.next_fire_at, last_fire_at = excluded.last_fire_at, \
             last_task_id = excluded.last_task_id, created_at = excluded.created_at, \
             revision = excluded.revision",
        );
        builder.build().execute(&mut *connection).await?;
    }
    for chunk in schedules.deletes.chunks(ROWS_PER_STATEMENT) {
        let mut builder = QueryBuilder::<Sqlite>::new("DELETE FROM schedules WHERE id IN (");
        let mut ids = builder.separated(", ");
        for id in chunk {
            ids.push_bind(*id.as_uuid());
        }
        builder.push(")");
        builder.build().execute(&mut *connection).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        store::{
            Batch, BatchOutcome, MemoryStore, TaskStore,
            schedule_row::tests::full_schedule,
            sqlite::tests::{Tmpfs, new_task},
        },
        task::{Task, TaskId},
    };

    fn batch(tasks: &[&Task], upserts: &[&Schedule], deletes: &[ScheduleId]) -> Batch {
        Batch {
            inserts: tasks.iter().map(|task| Arc::new((*task).clone())).collect(),
            schedule_upserts: upserts
                .iter()
                .map(|schedule| Arc::new((*schedule).clone()))
                .collect(),
            schedule_deletes: deletes.to_vec(),
            ..Batch::default()
        }
    }

    /// The whole batch, through the trait the persister uses.
    async fn commit(store: &dyn TaskStore, batch: &Batch) -> Result<BatchOutcome, StoreError> {
        TaskStore::commit(store, "local", batch).await
    }

    /// `schedule` after a firing that created `task`.
    fn fired(schedule: &Schedule, task: &Task) -> Schedule {
        let mut next = schedule.clone();
        let scheduled_for = next.next_fire_at.expect("due");
        next.record_firing(
            scheduled_for,
            task.id,
            Some(scheduled_for + Duration::from_secs(300)),
        );
        next
    }

    #[tokio::test]
    async fn schedules_are_upserted_and_deleted_with_the_tasks_of_a_batch() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        assert_eq!(store.load_schedules().await.expect("loads"), []);
        let (kept, dropped) = (full_schedule(), full_schedule());
        commit(&store, &batch(&[], &[&kept, &dropped], &[]))
            .await
            .expect("commits");

        // A firing: its task and the schedule's next firing together; and a
        // schedule upserted and deleted in one batch is gone.
        let task = new_task("fired", None);
        let kept = fired(&kept, &task);
        commit(&store, &batch(&[&task], &[&kept, &dropped], &[dropped.id]))
            .await
            .expect("commits");
        drop(store);

        let reopened = SqliteStore::open(&path).await.expect("reopens");
        assert_eq!(reopened.load_schedules().await.expect("loads"), [kept]);
        assert_eq!(reopened.load().await.expect("loads"), [task]);
    }

    #[tokio::test]
    async fn a_failed_commit_stores_neither_the_tasks_nor_the_schedules() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let schedule = full_schedule();
        let first = new_task("first", None);
        commit(&store, &batch(&[&first], &[&schedule], &[]))
            .await
            .expect("commits");

        // The batch's second task repeats a stored id, so its insert fails
        // after the schedule was written, inside the transaction.
        let second = new_task("second", None);
        let changed = fired(&schedule, &second);
        let created = full_schedule();
        commit(
            &store,
            &batch(&[&second, &first], &[&changed, &created], &[]),
        )
        .await
        .expect_err("the repeated id fails the batch");
        assert_eq!(store.load_schedules().await.expect("loads"), [schedule]);
        assert_eq!(store.load().await.expect("loads"), [first]);
    }

    #[tokio::test]
    async fn on_a_full_disk_a_firing_lands_whole_or_not_at_all() {
        let Some(tmpfs) = Tmpfs::mount("2m") else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (the test needs root)");
            return;
        };
        let path = tmpfs.0.path().join("tasks.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let padding = "x".repeat(50 * 1024);
        let mut schedule = full_schedule();
        schedule.template.data = Some(Arc::new(serde_json::json!(padding)));
        commit(&store, &batch(&[], &[&schedule], &[]))
            .await
            .expect("the schedule fits");
        let (mut committed, mut failed) = (Vec::<TaskId>::new(), 0);
        // Each firing: a large task and its schedule, which carries a large
        // template too, in one batch; well past full.
        for number in 0..60 {
            let mut task = new_task(&format!("firing {number}"), None);
            task.data = Some(Arc::new(serde_json::json!(padding)));
            let next = fired(&schedule, &task);
            match commit(&store, &batch(&[&task], &[&next], &[])).await {
                Ok(_) => {
                    committed.push(task.id);
                    schedule = next;
                }
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
        assert_eq!(stored, committed, "only the firings that said OK");
        assert_eq!(
            reopened.load_schedules().await.expect("loads"),
            [schedule],
            "the schedule as the last firing that said OK left it"
        );
    }

    #[tokio::test]
    async fn memory_takes_schedule_writes_and_keeps_nothing() {
        let store = MemoryStore;
        let written = commit(&store, &batch(&[], &[&full_schedule()], &[]))
            .await
            .expect("commits");
        assert!(written.inserted.is_empty());
    }

    #[test]
    fn a_batch_of_schedule_writes_only_is_not_empty() {
        let only_deletes = batch(&[], &[], &[ScheduleId::generate()]);
        assert!(!only_deletes.is_empty());
        assert!(!only_deletes.has_task_writes());
        let only_upserts = batch(&[], &[&full_schedule()], &[]);
        assert!(!only_upserts.is_empty());
        assert!(Batch::default().is_empty());
    }

    #[tokio::test]
    async fn a_row_that_no_longer_parses_fails_the_load_naming_it() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&directory.path().join("tasks.db"))
            .await
            .expect("opens");
        let schedule = full_schedule();
        commit(&store, &batch(&[], &[&schedule], &[]))
            .await
            .expect("commits");
        {
            let mut slot = store.connection.lock().await;
            let connection = slot.as_mut().expect("open");
            sqlx::query("UPDATE schedules SET time_zone = 'Mars/Olympus_Mons'")
                .execute(&mut *connection)
                .await
                .expect("breaks the row");
        }
        match store.load_schedules().await {
            Err(StoreError::CorruptSchedule { id, .. }) => assert_eq!(id, schedule.id),
            other => panic!("expected CorruptSchedule, got {other:?}"),
        }
    }
}
