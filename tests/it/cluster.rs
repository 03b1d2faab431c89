//! Several real server processes on one PostgreSQL database: any replica
//! serves any task, cancels and watches cross replicas, a dead replica's
//! tasks are taken over after its lease, and `request_id` holds across
//! replicas.

use std::collections::HashSet;

use serde_json::json;
use task_processor::pb;
use tokio_stream::StreamExt;

use crate::{
    process::{Process, start_binary},
    stores::{fresh_postgres_schema, postgres_available},
    support::{eventually, get, request, status_of, wait_for_status},
};

/// `count` replicas named a, b, c… on one fresh schema; `None` when the
/// test is skipped for want of PostgreSQL.
async fn replicas(test: &str, count: usize, extra: &[&str]) -> Option<Vec<Process>> {
    if !postgres_available(test) {
        return None;
    }
    let store = fresh_postgres_schema().await;
    let replicas = ["a", "b", "c", "d"][..count]
        .iter()
        .map(|name| {
            let mut arguments = vec!["--store", store.as_str(), "--node-name", name];
            arguments.extend_from_slice(extra);
            start_binary(&arguments, &[])
        })
        .collect();
    Some(replicas)
}

#[tokio::test]
async fn any_replica_serves_reads_watches_and_cancels_of_tasks_another_runs() {
    let test = "cluster::any_replica_serves";
    if !postgres_available(test) {
        return;
    }
    let store = fresh_postgres_schema().await;
    let start = |name: &str| start_binary(&["--store", store.as_str(), "--node-name", name], &[]);
    // A alone first, so the task surely runs on A.
    let runner = start("a");
    let mut on_a = runner.client().await;
    let created = on_a
        .create_task(request("long", "sleep", Some(json!({"seconds": 3600}))))
        .await
        .expect("created on a")
        .into_inner();
    let running = wait_for_status(&on_a, &created.id, pb::TaskStatus::Running).await;
    assert_eq!(running.node, "a");
    let other = start("b");
    let mut on_b = other.client().await;

    // Read and listed on B.
    let read = get(&mut on_b, &created.id).await;
    assert_eq!(
        (read.name.as_str(), read.revision),
        ("long", running.revision)
    );
    assert_eq!(read.data, created.data);
    let listed = on_b
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("list on b")
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);

    // Watched on B; a progress-free sleep changes only when cancelled.
    let mut watch = on_b
        .watch_task(pb::WatchTaskRequest {
            id: created.id.clone(),
        })
        .await
        .expect("watch on b")
        .into_inner();
    let first = watch
        .next()
        .await
        .expect("a first state")
        .expect("watch message")
        .task
        .expect("a task");
    assert_eq!(status_of(&first), pb::TaskStatus::Running);

    // Cancelled on B: the run on A stops.
    let cancelled = on_b
        .cancel_task(pb::CancelTaskRequest {
            id: created.id.clone(),
        })
        .await
        .expect("cancel on b")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    eventually("the run to stop on a", || {
        let stopped = runner.logged(
            "task changed by another replica; stopping its run here",
            &created.id,
        );
        async move { stopped.then_some(()) }
    })
    .await;

    // B's watcher sees the cancel, then the stream ends.
    let mut rest = Vec::new();
    while let Some(message) = watch.next().await {
        rest.push(message.expect("watch message").task.expect("a task"));
    }
    let last = rest.last().expect("the cancel was delivered");
    assert_eq!(status_of(last), pb::TaskStatus::Cancelled);
    assert!(rest.iter().all(|task| task.revision > first.revision));
    let on_a_now = get(&mut on_a, &created.id).await;
    assert_eq!(status_of(&on_a_now), pb::TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_killed_replicas_tasks_are_finished_by_another_after_its_lease() {
    let test = "cluster::a_killed_replica";
    if !postgres_available(test) {
        return;
    }
    let store = fresh_postgres_schema().await;
    let start = |name: &str| {
        start_binary(
            &[
                "--store",
                store.as_str(),
                "--node-name",
                name,
                "--lease",
                "3s",
                "--max-concurrent",
                "2",
            ],
            &[],
        )
    };
    // A alone first, so it surely runs some of the work.
    let mut victim = start("a");
    let mut on_a = victim.client().await;
    let mut ids = Vec::new();
    for number in 0..4 {
        let task = on_a
            .create_task(request(
                &format!("work {number}"),
                "sleep",
                Some(json!({"seconds": 3})),
            ))
            .await
            .expect("created")
            .into_inner();
        ids.push(task.id);
    }
    let on_victim: Vec<pb::Task> = eventually("two tasks running on a", || {
        let client = on_a.clone();
        let ids = ids.clone();
        async move {
            let mut running = Vec::new();
            for id in &ids {
                let task = get(&mut client.clone(), id).await;
                if status_of(&task) == pb::TaskStatus::Running {
                    running.push(task);
                }
            }
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    // Killed before the others start, so its runs cannot finish meanwhile
    // however slowly the machine starts them.
    victim.kill_hard();
    let survivors = [start("b"), start("c")];

    let on_b = survivors[0].client().await;
    for task in &on_victim {
        let finished = wait_for_status(&on_b, &task.id, pb::TaskStatus::Completed).await;
        assert_ne!(finished.node, "a", "finished by a live replica");
        assert_eq!(finished.attempt, task.attempt + 1, "a new attempt");
    }
    for id in &ids {
        let task = wait_for_status(&on_b, id, pb::TaskStatus::Completed).await;
        assert_ne!(task.node, "a", "{task:?}");
    }
}

#[tokio::test]
async fn twenty_concurrent_creates_with_one_request_id_across_replicas_make_one_task() {
    let Some(replicas) = replicas("cluster::twenty_concurrent_creates", 3, &[]).await else {
        return;
    };
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }
    let mut create = request("once", "echo", Some(json!({"k": 1})));
    create.request_id = "across-replicas".into();
    let creates: Vec<_> = (0..20)
        .map(|number| {
            let mut client = clients[number % clients.len()].clone();
            let create = create.clone();
            tokio::spawn(async move {
                client
                    .create_task(create)
                    .await
                    .expect("created or found")
                    .into_inner()
                    .id
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for create in creates {
        ids.insert(create.await.expect("joined"));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");

    let mut different = create.clone();
    different.name = "other".into();
    let status = clients[1]
        .clone()
        .create_task(different)
        .await
        .expect_err("same request_id, other parameters");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    let listed = clients[2]
        .clone()
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);
}

#[tokio::test]
async fn a_replica_shutting_down_hands_its_running_tasks_to_the_others() {
    let Some(mut replicas) = replicas(
        "cluster::hand_over",
        2,
        &["--drain-period", "0s", "--shutdown-grace", "0s"],
    )
    .await
    else {
        return;
    };
    let mut on_a = replicas[0].client().await;
    // Long enough to be running at shutdown on a loaded machine, short
    // enough to finish after.
    let task = on_a
        .create_task(request("handed over", "sleep", Some(json!({"seconds": 3}))))
        .await
        .expect("created")
        .into_inner();
    let running = wait_for_status(&on_a, &task.id, pb::TaskStatus::Running).await;
    let (runner, other) = if running.node == "a" { (0, 1) } else { (1, 0) };
    crate::process::send_sigterm(&replicas[runner].child);
    let status = replicas[runner].child.wait().expect("exits");
    assert!(status.success(), "{status:?}");
    let on_other = replicas[other].client().await;
    let finished = wait_for_status(&on_other, &task.id, pb::TaskStatus::Completed).await;
    assert_eq!(finished.attempt, running.attempt + 1);
    assert_eq!(finished.node, replicas_name(other));
}

fn replicas_name(index: usize) -> &'static str {
    ["a", "b", "c", "d"][index]
}
