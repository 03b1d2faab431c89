//! The SQLite store against `kill -9`: every create that was answered is
//! there after a restart, and unfinished tasks run again.

use std::sync::{Arc, Mutex};

use serde_json::json;
use task_processor::pb;

use crate::{
    process::start_binary,
    support::{
        eventually, get, missing_tasks, request, status_of, wait_for_attempt, wait_for_status,
    },
};

#[tokio::test]
async fn every_acknowledged_create_survives_kill_9_during_a_thousand_creates() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = format!("sqlite://{}", directory.path().join("tasks.db").display());
    // One slot and long sleeps: nothing finishes, so every task must come
    // back from the file, not from a run.
    let arguments = ["--store", store.as_str(), "--max-concurrent", "1"];
    let mut process = start_binary(&arguments, &[]);
    let client = process.client().await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let creators: Vec<_> = (0..20)
        .map(|creator| {
            let mut client = client.clone();
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                for number in 0..50 {
                    let create = request(
                        &format!("create {creator}-{number}"),
                        "sleep",
                        Some(json!({"seconds": 3600})),
                    );
                    match client.create_task(create).await {
                        Ok(task) => acknowledged
                            .lock()
                            .expect("not poisoned")
                            .push(task.into_inner().id),
                        // The process is gone: the rest of this creator's
                        // creates fail, as they should.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    eventually("a few hundred creates acknowledged", || {
        let count = acknowledged.lock().expect("not poisoned").len();
        async move { (count >= 300).then_some(()) }
    })
    .await;
    process.kill_hard();
    for creator in creators {
        creator.await.expect("creator joined");
    }
    let acknowledged = acknowledged.lock().expect("not poisoned").clone();
    assert!(acknowledged.len() >= 300, "{}", acknowledged.len());

    let restarted = start_binary(&arguments, &[]);
    let mut client = restarted.client().await;
    let lost = missing_tasks(&mut client, &acknowledged).await;
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn after_kill_9_running_tasks_run_again_and_pending_ones_keep_their_order() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = format!("sqlite://{}", directory.path().join("tasks.db").display());
    let arguments = [
        "--store",
        store.as_str(),
        "--max-concurrent",
        "1",
        "--node-name",
        "first",
    ];
    let mut process = start_binary(&arguments, &[]);
    let mut client = process.client().await;
    let long = Some(json!({"seconds": 3600}));
    let running = client
        .create_task(request("running", "sleep", long.clone()))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    let mut waiting = Vec::new();
    for number in 0..3 {
        let task = client
            .create_task(request(&format!("waiting {number}"), "sleep", long.clone()))
            .await
            .expect("created")
            .into_inner();
        waiting.push(task.id);
    }
    let mut keyed = request("finished", "echo", Some(json!(7)));
    keyed.request_id = "before-the-crash".into();
    let done = client
        .create_task(keyed.clone())
        .await
        .expect("created")
        .into_inner();
    client
        .cancel_task(pb::CancelTaskRequest {
            id: done.id.clone(),
        })
        .await
        .expect("cancelled");
    process.kill_hard();

    let restarted_arguments = [
        "--store",
        store.as_str(),
        "--max-concurrent",
        "1",
        "--node-name",
        "second",
    ];
    let restarted = start_binary(&restarted_arguments, &[]);
    let mut client = restarted.client().await;
    // The run that was cut short runs again: a new attempt, on the new node.
    let rerun = wait_for_attempt(&client, &running.id, 2).await;
    assert_eq!(status_of(&rerun), pb::TaskStatus::Running);
    assert_eq!(rerun.node, "second");
    assert!(rerun.revision > running.revision);
    // Terminal tasks are untouched.
    let cancelled = get(&mut client, &done.id).await;
    assert_eq!(status_of(&cancelled), pb::TaskStatus::Cancelled);
    assert_eq!(cancelled.attempt, 0);
    // Idempotency keys came back with their tasks.
    let repeated = client
        .create_task(keyed)
        .await
        .expect("the same create again")
        .into_inner();
    assert_eq!(repeated.id, done.id);
    // The waiting ones wait still, and start in their original order.
    client
        .cancel_task(pb::CancelTaskRequest {
            id: running.id.clone(),
        })
        .await
        .expect("cancel the rerun");
    for (position, id) in waiting.iter().enumerate() {
        let started = wait_for_status(&client, id, pb::TaskStatus::Running).await;
        assert_eq!(started.attempt, 1, "waiting task {position}");
        for later in &waiting[position + 1..] {
            let later = get(&mut client, later).await;
            assert_eq!(
                status_of(&later),
                pb::TaskStatus::Pending,
                "FIFO after restart"
            );
        }
        client
            .cancel_task(pb::CancelTaskRequest { id: id.clone() })
            .await
            .expect("cancel");
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_file_is_refused() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = format!("sqlite://{}", directory.path().join("tasks.db").display());
    let _first = start_binary(&["--store", store.as_str()], &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_task-processor"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", store.as_str()])
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tasks.db") && stderr.contains("locked"),
        "the error names the file and the lock: {stderr}"
    );
}

#[tokio::test]
async fn a_shutdown_interrupts_running_tasks_and_the_next_start_runs_them_again() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = format!("sqlite://{}", directory.path().join("tasks.db").display());
    let arguments = |node: &'static str| {
        vec![
            "--store".to_owned(),
            store.clone(),
            "--max-concurrent".to_owned(),
            "1".to_owned(),
            "--drain-period".to_owned(),
            "0s".to_owned(),
            "--shutdown-grace".to_owned(),
            "0s".to_owned(),
            "--node-name".to_owned(),
            node.to_owned(),
        ]
    };
    let first_arguments = arguments("before");
    let first_arguments: Vec<&str> = first_arguments.iter().map(String::as_str).collect();
    let mut process = start_binary(&first_arguments, &[]);
    let mut client = process.client().await;
    let long = Some(json!({"seconds": 3600}));
    let running = client
        .create_task(request("deploy survivor", "sleep", long.clone()))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    let waiting = client
        .create_task(request("still waiting", "sleep", long))
        .await
        .expect("created")
        .into_inner();
    crate::process::send_sigterm(&process.child);
    let exit = process.child.wait().expect("exits");
    assert!(exit.success(), "{exit:?}");

    let second_arguments = arguments("after");
    let second_arguments: Vec<&str> = second_arguments.iter().map(String::as_str).collect();
    let restarted = start_binary(&second_arguments, &[]);
    let mut client = restarted.client().await;
    let rerun = wait_for_attempt(&client, &running.id, 2).await;
    assert_eq!(status_of(&rerun), pb::TaskStatus::Running, "not cancelled");
    assert_eq!(rerun.node, "after");
    let waiting = get(&mut client, &waiting.id).await;
    assert_eq!(status_of(&waiting), pb::TaskStatus::Pending);
}
