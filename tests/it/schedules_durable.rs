//! Schedules across restarts and replicas: a schedule is in the file (or
//! the table) and fires after a restart; firings missed while no server ran
//! are not replayed, except the most recent one, which fires once at
//! start; two PostgreSQL replicas fire each firing exactly once.

use std::time::{Duration, SystemTime};

use task_processor::{config::Config, pb, store::StoreUrl};

use crate::{
    schedules::{
        create_schedule, get_schedule, schedule_request, tasks_of, time_of, wait_for_tasks,
    },
    stores::{fresh_postgres_schema, fresh_sqlite_path, postgres_available},
    support::{TestServer, eventually, request, test_config},
};

/// The interval of the schedules here: long enough that a restart fits
/// between two firings, short enough to wait for a few.
const EVERY: Duration = Duration::from_secs(4);

fn server_config(store: &StoreUrl, node: &str) -> Config {
    Config {
        store: store.clone(),
        node_name: node.into(),
        ..test_config()
    }
}

/// Stops an in-process server the way a deploy does, and waits until it
/// has.
async fn stop(mut server: TestServer) {
    server.begin_shutdown().await.expect("stopped cleanly");
}

/// A schedule fires once; the server is down while two more firings pass;
/// the next server fires once, for the latest of them, at start, and then
/// goes on at the schedule's own times.
async fn a_restart_fires_the_most_recent_missed_firing_once(store: StoreUrl) {
    let server = TestServer::start_with(server_config(&store, "before")).await;
    let mut client = server.client().await;
    let schedule = create_schedule(
        &mut client,
        schedule_request(
            &format!("@every {}s", EVERY.as_secs()),
            pb::OverlapPolicy::Allow,
            request("tick", "echo", None),
        ),
    )
    .await;
    let created_at = time_of(&schedule.created_at);
    let firing = |k: u32| created_at + EVERY * k;
    wait_for_tasks(&client, &schedule.id, 1).await;
    // The first firing's task and its schedule are one commit: once the
    // task is readable, both are in the file.
    stop(server).await;
    assert!(
        SystemTime::now() < firing(2),
        "the test assumes the server stopped before the second firing"
    );

    // Down until the second and the third firing have passed.
    let down_until = firing(3) + Duration::from_millis(300);
    if let Ok(wait) = down_until.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let restarted_at = SystemTime::now();
    let server = TestServer::start_with(server_config(&store, "after")).await;
    let mut client = server.client().await;
    let read = eventually("the missed firing to fire at start", || {
        let mut client = client.clone();
        let id = schedule.id.clone();
        async move {
            let read = get_schedule(&mut client, &id).await;
            (read
                .last_fire_at
                .is_some_and(|at| time_of(&Some(at)) > firing(1)))
            .then_some(read)
        }
    })
    .await;
    // However late the start, the firing stands for the latest missed one,
    // and the schedule then goes on from now.
    let last_fire_at = time_of(&read.last_fire_at);
    let latest_missed = (2..)
        .map(firing)
        .take_while(|at| *at <= restarted_at)
        .last()
        .expect("firings were missed");
    assert!(
        last_fire_at >= latest_missed,
        "fired for {last_fire_at:?}, the latest missed firing was {latest_missed:?}"
    );
    let tasks = tasks_of(&mut client, &schedule.id).await;
    let since_restart: Vec<_> = tasks
        .iter()
        .filter(|task| time_of(&task.created_at) >= restarted_at)
        .collect();
    let before_next = since_restart
        .iter()
        .filter(|task| time_of(&task.created_at) < last_fire_at.max(latest_missed) + EVERY)
        .count();
    assert_eq!(
        before_next, 1,
        "one firing for all that were missed, not one each: {tasks:?}"
    );
    assert_eq!(
        tasks.len() - since_restart.len(),
        1,
        "the first server fired once"
    );
    // It goes on at its own times.
    wait_for_tasks(&client, &schedule.id, tasks.len() + 1).await;
    let later = get_schedule(&mut client, &schedule.id).await;
    let since_creation = time_of(&later.last_fire_at)
        .duration_since(created_at)
        .expect("after creation");
    assert_eq!(
        since_creation.as_millis() % EVERY.as_millis(),
        0,
        "still on its @every grid"
    );
}

#[tokio::test]
async fn sqlite_a_restart_fires_the_most_recent_missed_firing_once() {
    a_restart_fires_the_most_recent_missed_firing_once(StoreUrl::Sqlite(fresh_sqlite_path())).await;
}

#[tokio::test]
async fn postgres_a_restart_fires_the_most_recent_missed_firing_once() {
    if !postgres_available("schedules_durable::postgres_restart") {
        return;
    }
    let store = StoreUrl::Postgres(fresh_postgres_schema().await);
    a_restart_fires_the_most_recent_missed_firing_once(store).await;
}

#[tokio::test]
async fn a_paused_schedule_stays_paused_across_a_restart() {
    let store = StoreUrl::Sqlite(fresh_sqlite_path());
    let server = TestServer::start_with(server_config(&store, "before")).await;
    let mut client = server.client().await;
    let schedule = create_schedule(
        &mut client,
        pb::CreateScheduleRequest {
            paused: true,
            ..schedule_request(
                "@every 1s",
                pb::OverlapPolicy::Allow,
                request("t", "echo", None),
            )
        },
    )
    .await;
    stop(server).await;
    let server = TestServer::start_with(server_config(&store, "after")).await;
    let mut client = server.client().await;
    let read = get_schedule(&mut client, &schedule.id).await;
    assert_eq!(read, schedule, "stored as answered");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(tasks_of(&mut client, &schedule.id).await.is_empty());
}

#[tokio::test]
async fn two_postgres_replicas_fire_each_firing_exactly_once() {
    if !postgres_available("schedules_durable::two_replicas") {
        return;
    }
    let store = StoreUrl::Postgres(fresh_postgres_schema().await);
    let a = TestServer::start_with(server_config(&store, "a")).await;
    let b = TestServer::start_with(server_config(&store, "b")).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let schedule = create_schedule(
        &mut on_a,
        schedule_request(
            "@every 2s",
            pb::OverlapPolicy::Allow,
            request("tick", "echo", None),
        ),
    )
    .await;
    // Both replicas look for due firings on every tick. (Every 2 s: a
    // firing handled more than an interval late would stand for the one
    // after it too, by the missed-firing rule, and the count would be off.)
    wait_for_tasks(&on_b, &schedule.id, 4).await;
    let paused = on_b
        .pause_schedule(pb::PauseScheduleRequest {
            id: schedule.id.clone(),
        })
        .await
        .expect("paused on the other replica")
        .into_inner();
    let created_at = time_of(&schedule.created_at);
    let last_fire_at = time_of(&paused.last_fire_at);
    let firings = last_fire_at
        .duration_since(created_at)
        .expect("fired after creation")
        .as_secs()
        / 2;
    let tasks = tasks_of(&mut on_a, &schedule.id).await;
    assert_eq!(
        tasks.len() as u64,
        firings,
        "one task per firing time from the first to {last_fire_at:?}, none twice or missed"
    );
}
