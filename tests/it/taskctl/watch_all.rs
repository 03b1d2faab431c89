//! `taskctl watch --all`: every change of the matching tasks, as JSON lines
//! or a line each, the initial list with `--initial`, a task that leaves
//! the filter shown once more; and a stream the server ends `ABORTED`
//! resumed by itself from the last token.

use task_processor::pb;
use tonic::Code;

use super::{TestServer, command, from_json, run, spawn_taskctl, start_scripted, wait_for_status};
use crate::support::eventually;

fn labelled(name: &str, team: &str) -> pb::CreateTaskRequest {
    let mut request = crate::support::request(name, "echo", None);
    request.labels.insert("team".into(), team.into());
    request
}

/// Waits until `count` `WatchTasks` streams are open on the server.
async fn until_task_streams(server: &TestServer, count: usize) {
    eventually(&format!("{count} WatchTasks streams"), || async move {
        (server.stats().await.task_streams >= count).then_some(())
    })
    .await;
}

fn messages(stdout: &str) -> Vec<pb::WatchTasksResponse> {
    stdout
        .lines()
        .map(|line| from_json("taskprocessor.v1.WatchTasksResponse", line))
        .collect()
}

#[tokio::test]
async fn watch_all_shows_every_change_of_the_matching_tasks_until_the_server_stops() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    let listed = client
        .create_task(labelled("listed", "x"))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &listed.id, pb::TaskStatus::Completed).await;

    let as_json = spawn_taskctl(
        &server,
        &[
            "watch",
            "--all",
            "--initial",
            "--label",
            "team=x",
            "-o",
            "json",
        ],
    );
    let as_table = spawn_taskctl(
        &server,
        &["watch", "--all", "--label", "team=x", "--status", "running"],
    );
    until_task_streams(&server, 2).await;
    let changed = client
        .create_task(labelled("changed", "x"))
        .await
        .expect("created")
        .into_inner();
    let other = client
        .create_task(labelled("other team", "y"))
        .await
        .expect("created")
        .into_inner();
    wait_for_status(&client, &changed.id, pb::TaskStatus::Completed).await;
    wait_for_status(&client, &other.id, pb::TaskStatus::Completed).await;
    let stopped = server.begin_shutdown();

    let json_run = as_json.await.expect("joined");
    json_run.expect_code(7);
    let shown: Vec<(String, bool, i32)> = messages(&json_run.stdout)
        .into_iter()
        .map(|message| {
            assert!(!message.resume_token.is_empty(), "{message:?}");
            let task = message.task.unwrap_or_default();
            (task.name, message.initial_done, task.status)
        })
        .collect();
    use pb::TaskStatus::{Completed, Pending, Running, Unspecified};
    assert_eq!(
        shown,
        [
            ("listed".to_string(), false, Completed as i32),
            (String::new(), true, Unspecified as i32),
            ("changed".to_string(), false, Pending as i32),
            ("changed".to_string(), false, Running as i32),
            ("changed".to_string(), false, Completed as i32),
        ]
    );

    let table_run = as_table.await.expect("joined");
    table_run.expect_code(7);
    let lines: Vec<&str> = table_run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("TIME"), "{lines:?}");
    for (line, status) in lines[1..].iter().zip(["RUNNING", "COMPLETED"]) {
        assert!(
            line.contains(&changed.id) && line.contains(status),
            "the task, then once more as it left the filter: {lines:?}"
        );
    }
    stopped.await.expect("stopped");
}

#[tokio::test]
async fn watch_all_resumes_by_itself_from_the_last_token_when_it_fell_behind() {
    let (address, serving) = start_scripted(Some((Code::Aborted, "fell behind"))).await;
    let watched = run(command(&address, &["watch", "--all", "-o", "json"])).await;
    watched.expect_code(7);
    let names: Vec<String> = messages(&watched.stdout)
        .into_iter()
        .map(|message| message.task.unwrap_or_default().name)
        .collect();
    assert_eq!(names, ["first", "second"], "{watched:?}");
    assert!(watched.stderr.contains("resuming"), "{watched:?}");
    serving.abort();
}
