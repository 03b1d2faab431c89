//! Schedules on PostgreSQL: create, read, page, pause and resume, delete,
//! and firing (exactly once across replicas, one firing for many missed,
//! and overlap), against a real database.

use std::{collections::HashSet, time::Instant};

use task_processor::{
    schedule::{NewSchedule, Overlap, SCHEDULE_ID_LABEL, Schedule, ScheduleId, ScheduleSpec},
    store::postgres::Fired,
};

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn new_schedule(cron: &str, overlap: Overlap, created_at: SystemTime) -> Schedule {
    let template = NewTask {
        tenant: Default::default(),
        name: "scheduled".to_owned(),
        description: "made by a schedule".to_owned(),
        kind: "echo".to_owned(),
        data: Some(Arc::new(json!({"text": "a\u{0}b", "n": 0.1}))),
        timeout_seconds: 60,
        labels: BTreeMap::from([("team".to_owned(), "billing".to_owned())]),
        request_id: None,
        scheduling: Default::default(),
        trace_context: Default::default(),
    };
    Schedule::new(
        ScheduleId::generate(),
        NewSchedule {
            spec: ScheduleSpec::parse(cron).expect("a valid cron"),
            time_zone: "Europe/Berlin".parse().expect("a zone"),
            template,
            overlap,
            paused: false,
        },
        created_at,
    )
}

/// The tasks the schedule created, as the label finds them.
async fn tasks_of(store: &PostgresStore, schedule: &Schedule) -> Vec<Task> {
    let page = store
        .list(&ListQuery {
            labels: BTreeMap::from([(SCHEDULE_ID_LABEL.to_owned(), schedule.id.to_string())]),
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    page.tasks.iter().map(|task| (**task).clone()).collect()
}

#[tokio::test]
async fn schedules_round_trip_page_pause_resume_and_delete() {
    let (_schema, store) = store_or_skip!("schedules_round_trip_page_pause_resume_and_delete");
    let created_at = now();
    let all: Vec<Schedule> = ["*/5 * * * *", "@every 90s", "0 9 * * MON-FRI"]
        .into_iter()
        .map(|cron| new_schedule(cron, Overlap::Skip, created_at))
        .collect();
    for schedule in &all {
        assert_eq!(
            &store.create_schedule(schedule).await.expect("create"),
            schedule
        );
    }
    // A create retried after an unknown outcome returns what is stored.
    let mut retried = all[0].clone();
    retried.paused = true;
    assert_eq!(
        store.create_schedule(&retried).await.expect("create"),
        all[0]
    );
    for schedule in &all {
        assert_eq!(
            store.get_schedule(schedule.id).await.expect("get").as_ref(),
            Some(schedule)
        );
    }
    assert_eq!(
        store
            .get_schedule(ScheduleId::generate())
            .await
            .expect("get"),
        None
    );

    let page = store.list_schedules(None, 2, None).await.expect("list");
    assert_eq!(unshared(&page.schedules), all[..2]);
    assert_eq!(page.next_after, Some(all[1].id));
    let page = store
        .list_schedules(page.next_after, 2, None)
        .await
        .expect("list");
    assert_eq!(unshared(&page.schedules), all[2..]);
    assert_eq!(page.next_after, None);
    let page = store.list_schedules(None, 3, None).await.expect("list");
    assert_eq!((page.schedules.len(), page.next_after), (3, None));
    assert!(
        store
            .list_schedules(None, 0, None)
            .await
            .expect("list")
            .schedules
            .is_empty()
    );

    let earliest = all
        .iter()
        .filter_map(|schedule| schedule.next_fire_at)
        .min();
    assert_eq!(store.next_schedule_due().await.expect("due"), earliest);

    // Pausing clears the next firing and bumps the revision, once.
    let every = &all[1];
    let paused = store
        .set_schedule_paused(every.id, true, now())
        .await
        .expect("pause")
        .expect("found");
    assert!(paused.paused);
    assert_eq!((paused.next_fire_at, paused.revision), (None, 2));
    let again = store
        .set_schedule_paused(every.id, true, now())
        .await
        .expect("pause")
        .expect("found");
    assert_eq!(again, paused);
    assert_eq!(
        store.get_schedule(every.id).await.expect("get"),
        Some(paused)
    );
    // Resuming: the first firing after now, not the ones missed meanwhile.
    let resumed_at = created_at + Duration::from_secs(1000);
    let resumed = store
        .set_schedule_paused(every.id, false, resumed_at)
        .await
        .expect("resume")
        .expect("found");
    assert!(!resumed.paused);
    assert_eq!(resumed.revision, 3);
    assert_eq!(
        resumed.next_fire_at,
        Some(created_at + Duration::from_secs(1080))
    );
    assert_eq!(
        store.get_schedule(every.id).await.expect("get"),
        Some(resumed)
    );
    assert_eq!(
        store
            .set_schedule_paused(ScheduleId::generate(), true, now())
            .await
            .expect("pause"),
        None
    );

    assert!(store.delete_schedule(all[0].id).await.expect("delete"));
    assert!(!store.delete_schedule(all[0].id).await.expect("delete"));
    assert_eq!(store.get_schedule(all[0].id).await.expect("get"), None);
    let page = store.list_schedules(None, 10, None).await.expect("list");
    assert_eq!(page.schedules.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_firing_at_once_fire_each_tick_once() {
    let (schema, store) = store_or_skip!("two_replicas_firing_at_once_fire_each_tick_once");
    let other = schema.store().await;
    let schedule = new_schedule("@every 1s", Overlap::Allow, now());
    store.create_schedule(&schedule).await.expect("create");

    let started = Instant::now();
    let fire = |store: PostgresStore, origin: &'static str| async move {
        let mut fired: Vec<Fired> = Vec::new();
        // Both poll as fast as they can, so they race for every tick.
        while started.elapsed() < Duration::from_millis(3300) {
            let firings = store
                .fire_due_schedules(origin, SystemTime::now())
                .await
                .expect("fire");
            fired.extend(firings.fired);
            tokio::task::yield_now().await;
        }
        fired
    };
    let (left, right) = tokio::join!(
        tokio::spawn(fire(store.clone(), "left")),
        tokio::spawn(fire(other, "right"))
    );
    let mut fired: Vec<Fired> = left
        .expect("left")
        .into_iter()
        .chain(right.expect("right"))
        .collect();
    fired.sort_by_key(|fired| fired.scheduled_for);

    let times: Vec<SystemTime> = fired.iter().map(|fired| fired.scheduled_for).collect();
    assert!(times.len() >= 3, "only {} firings in 3.3 s", times.len());
    let expected: Vec<SystemTime> = (1..=u32::try_from(times.len()).expect("few"))
        .map(|tick| schedule.created_at + SECOND * tick)
        .collect();
    assert_eq!(times, expected, "each tick once, none missed, none twice");

    let stored = tasks_of(&store, &schedule).await;
    assert_eq!(stored.len(), fired.len(), "one task per firing");
    for fired in &fired {
        assert_eq!(fired.schedule_id, schedule.id);
        assert_eq!(
            store.get(fired.task.id).await.expect("get").as_ref(),
            Some(&fired.task)
        );
    }
    let ids: HashSet<TaskId> = stored.iter().map(|task| task.id).collect();
    assert_eq!(ids.len(), stored.len());

    let last = fired.last().expect("fired");
    let after = store
        .get_schedule(schedule.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(after.last_fire_at, Some(last.scheduled_for));
    assert_eq!(after.last_task_id, Some(last.task.id));
    assert_eq!(after.revision, 1 + u64::try_from(fired.len()).expect("few"));
}

#[tokio::test]
async fn a_schedule_that_missed_many_firings_fires_once_and_announces_it() {
    let (_schema, store) =
        store_or_skip!("a_schedule_that_missed_many_firings_fires_once_and_announces_it");
    let at = now();
    // Due an hour ago: 3600 firings missed.
    let schedule = new_schedule("@every 1s", Overlap::Allow, at - HOUR);
    store.create_schedule(&schedule).await.expect("create");
    let mut feed = store.listen().await.expect("listen");

    let fired = store
        .fire_due_schedules("n1", at)
        .await
        .expect("fire")
        .fired;
    let [fired] = <[Fired; 1]>::try_from(fired).expect("exactly one firing");
    assert_eq!(fired.scheduled_for, at, "the latest missed firing");
    assert_eq!(fired.task.status, TaskStatus::Pending);
    assert_eq!(fired.task.name, "scheduled");
    assert_eq!(fired.task.data, schedule.template.data);
    assert_eq!(
        fired.task.labels.get(SCHEDULE_ID_LABEL),
        Some(&schedule.id.to_string())
    );
    let change = next_change(&mut feed).await;
    assert_eq!(change.origin, "n1");
    assert_eq!(change.task, without_data(&fired.task));

    let after = store
        .get_schedule(schedule.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(after.next_fire_at, Some(at + SECOND));
    assert_eq!(
        store.next_schedule_due().await.expect("due"),
        Some(at + SECOND)
    );
    assert!(
        store
            .fire_due_schedules("n1", at)
            .await
            .expect("fire")
            .fired
            .is_empty()
    );
    assert_eq!(tasks_of(&store, &schedule).await, [fired.task]);
}

#[tokio::test]
async fn overlap_skip_skips_while_the_last_task_runs_and_fires_once_it_finished() {
    let (_schema, store) =
        store_or_skip!("overlap_skip_skips_while_the_last_task_runs_and_fires_once_it_finished");
    // In the past, so the tasks it creates are ready to claim at once.
    let start = now() - Duration::from_secs(10);
    let schedule = new_schedule("@every 1s", Overlap::Skip, start);
    store.create_schedule(&schedule).await.expect("create");

    let first = store
        .fire_due_schedules("n1", start + SECOND)
        .await
        .expect("fire")
        .fired;
    let [first] = <[Fired; 1]>::try_from(first).expect("fires");

    // Pending, then running: skipped, but the schedule moves on.
    assert!(
        store
            .fire_due_schedules("n1", start + SECOND * 2)
            .await
            .expect("fire")
            .fired
            .is_empty()
    );
    let [running] = <[Task; 1]>::try_from(store.claim("n1", 1, HOUR, None).await.expect("claim"))
        .expect("claims the task");
    assert!(
        store
            .fire_due_schedules("n1", start + SECOND * 3)
            .await
            .expect("fire")
            .fired
            .is_empty()
    );
    let skipped = store
        .get_schedule(schedule.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(skipped.next_fire_at, Some(start + SECOND * 4));
    assert_eq!(skipped.last_task_id, Some(first.task.id));
    assert_eq!(skipped.last_fire_at, Some(start + SECOND));
    assert_eq!(skipped.revision, 4);

    let completed = applied(&running, TaskEvent::Complete(Arc::new(json!("done"))));
    assert!(update(&store, "n1", &completed).await);
    let next = store
        .fire_due_schedules("n1", start + SECOND * 4)
        .await
        .expect("fire")
        .fired;
    let [next] = <[Fired; 1]>::try_from(next).expect("fires once the task finished");
    assert_eq!(next.scheduled_for, start + SECOND * 4);
    assert_eq!(tasks_of(&store, &schedule).await.len(), 2);
}

/// The schedules of a page, as plain values to compare.
fn unshared(schedules: &[std::sync::Arc<Schedule>]) -> Vec<Schedule> {
    schedules
        .iter()
        .map(|schedule| (**schedule).clone())
        .collect()
}
