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
    let Some(replicas) = replicas("cluster::any_replica", 2, &["--max-concurrent", "4"]).await
    else {
        return;
    };
    let mut on_a = replicas[0].client().await;
    let mut on_b = replicas[1].client().await;

    // Created on A, read on B at once.
    let created = on_a
        .create_task(request("long", "sleep", Some(json!({"seconds": 3600}))))
        .await
        .expect("created on a")
        .into_inner();
    let read = get(&mut on_b, &created.id).await;
    assert_eq!(read.name, "long");
    assert_eq!(read.data, created.data);
    let listed = on_b
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("list on b")
        .into_inner();
    assert!(listed.tasks.iter().any(|task| task.id == created.id));

    // Watched on B while it runs wherever it was claimed.
    let mut watch = on_b
        .watch_task(pb::WatchTaskRequest {
            id: created.id.clone(),
        })
        .await
        .expect("watch on b")
        .into_inner();
    let running = wait_for_status(&on_b, &created.id, pb::TaskStatus::Running).await;
    let runner = if running.node == "a" {
        &replicas[0]
    } else {
        &replicas[1]
    };
    let canceller = if running.node == "a" {
        &mut on_b
    } else {
        &mut on_a
    };
    // Cancelled on the replica that does not run it.
    let cancelled = canceller
        .cancel_task(pb::CancelTaskRequest {
            id: created.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    eventually("the run to stop on the replica that ran it", || {
        let stopped = runner.logged(
            "task changed by another replica; stopping its run here",
            &created.id,
        );
        async move { stopped.then_some(()) }
    })
    .await;

    // B's watcher saw every status, in order, ending with the cancel.
    let mut statuses = Vec::new();
    let mut revisions = Vec::new();
    while let Some(message) = watch.next().await {
        let task = message.expect("watch message").task.expect("a task");
        revisions.push(task.revision);
        if statuses.last() != Some(&task.status) {
            statuses.push(task.status);
        }
    }
    let expected: Vec<i32> = [
        pb::TaskStatus::Pending,
        pb::TaskStatus::Running,
        pb::TaskStatus::Cancelled,
    ]
    .into_iter()
    .map(|status| status as i32)
    .collect();
    // The watch may begin after the claim: then it starts at RUNNING.
    assert!(
        statuses == expected || statuses == expected[1..],
        "{statuses:?}"
    );
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "{revisions:?}"
    );
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
    let survivors = [start("b"), start("c")];
    victim.kill_hard();

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
    // Long enough to be running at shutdown, short enough to finish after.
    let task = on_a
        .create_task(request("handed over", "sleep", Some(json!({"seconds": 1}))))
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
