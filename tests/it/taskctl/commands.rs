//! The task commands doing their work: `create` (with `--wait`, data
//! from stdin or a file, a repeated `--request-id`), `list` (filters,
//! pages, `--all`), `watch` to each terminal status and through a
//! shutdown, and `cancel` from another taskctl.

use super::*;

#[tokio::test]
async fn create_wait_exits_with_the_final_status() {
    let server = TestServer::start().await;

    let completed = taskctl(
        &server,
        &[
            "create", "fine", "--kind", "echo", "--data", "[1, 2]", "--wait",
        ],
    )
    .await;
    completed.expect_code(0);
    assert!(
        completed.stdout.starts_with("created task "),
        "{}",
        completed.stdout
    );
    assert!(
        completed
            .stdout
            .lines()
            .any(|line| line.starts_with("COMPLETED 100%")),
        "{}",
        completed.stdout
    );
    assert!(
        completed.stdout.contains("completed"),
        "{}",
        completed.stdout
    );
    assert!(completed.stdout.contains("[1,2]"), "{}", completed.stdout);

    let failed = taskctl(
        &server,
        &[
            "create",
            "broken",
            "--kind",
            "fail",
            "--data",
            r#"{"message": "disk on fire"}"#,
            "--wait",
            "-o",
            "json",
        ],
    )
    .await;
    failed.expect_code(3);
    let last = watched_tasks(&failed.stdout).pop().expect("a final state");
    assert_eq!(last.status, i32::from(pb::TaskStatus::Failed));
    assert_eq!(last.error, "disk on fire");

    // Cancelled by another taskctl while this one waits.
    let waiting = spawn_taskctl(&server, &["create", "held", "--kind", "gate", "--wait"]);
    until_watchers(&server, 1).await;
    let mut client = server.client().await;
    let held = client
        .list_tasks(pb::ListTasksRequest {
            statuses: vec![pb::TaskStatus::Running.into()],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .tasks
        .pop()
        .expect("the held task runs");
    let cancelled = taskctl(&server, &["cancel", &held.id]).await;
    cancelled.expect_code(0);
    assert_eq!(detail(&cancelled.stdout, "STATUS"), "CANCELLED");
    let waited = waiting.await.expect("joined");
    waited.expect_code(4);
    assert!(
        waited
            .stdout
            .contains(&format!("task {} cancelled", held.id)),
        "{}",
        waited.stdout
    );
}

#[tokio::test]
async fn data_comes_from_stdin_or_a_file() {
    let server = TestServer::start().await;
    let data = json!({"from": "stdin", "n": [1, 2.5]});

    let mut from_stdin = command(
        &server.url(),
        &[
            "create", "piped", "--kind", "echo", "--data", "-", "--wait", "-o", "json",
        ],
    );
    from_stdin.write_stdin(data.to_string());
    let piped = run(from_stdin).await;
    piped.expect_code(0);
    let last = watched_tasks(&piped.stdout).pop().expect("a final state");
    assert_eq!(json_of(&last.result), Some(data));

    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("data.json");
    std::fs::write(&path, r#"{"from": "file", "deep": [[["x"]]]}"#).expect("written");
    let argument = format!("@{}", path.display());
    let from_file = taskctl(
        &server,
        &[
            "create", "filed", "--kind", "echo", "--data", &argument, "-o", "json",
        ],
    )
    .await;
    from_file.expect_code(0);
    let task = task_from_json(&from_file.stdout);
    assert_eq!(
        json_of(&task.data),
        Some(json!({"from": "file", "deep": [[["x"]]]}))
    );
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_same_task() {
    let server = TestServer::start().await;
    let args = [
        "create",
        "once",
        "--kind",
        "echo",
        "--request-id",
        "key-1",
        "-o",
        "json",
    ];
    let first = task_from_json(&taskctl(&server, &args).await.stdout);
    let second = task_from_json(&taskctl(&server, &args).await.stdout);
    assert_eq!(first.id, second.id);
    let mut client = server.client().await;
    assert_eq!(get(&mut client, &first.id).await.name, "once");

    // The same key with other parameters: said plainly, with what to do.
    let reused = taskctl(
        &server,
        &["create", "twice", "--kind", "echo", "--request-id", "key-1"],
    )
    .await;
    reused.expect_code(1);
    assert_eq!(
        reused.stderr.trim(),
        "taskctl: --request-id \"key-1\" was already used to create a task with other \
         parameters; repeat that create exactly to get its task, or choose a new --request-id"
    );
}

#[tokio::test]
async fn list_filters_and_pages_through_everything() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for index in 0..7 {
        let mut request = crate::support::request(&format!("batch {index}"), "echo", None);
        request.labels = [("batch".to_owned(), "b1".to_owned())].into();
        ids.push(
            client
                .create_task(request)
                .await
                .expect("created")
                .into_inner()
                .id,
        );
    }
    create(&mut client, "other", "fail", None).await;
    for id in &ids {
        wait_for_status(&client, id, pb::TaskStatus::Completed).await;
    }

    let page = taskctl(
        &server,
        &["list", "--label", "batch=b1", "--limit", "3", "-o", "json"],
    )
    .await;
    page.expect_code(0);
    let first: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &page.stdout);
    assert_eq!(first.tasks.len(), 3);
    assert!(!first.next_page_token.is_empty());

    let next = taskctl(
        &server,
        &[
            "list",
            "--label",
            "batch=b1",
            "--limit",
            "3",
            "--page-token",
            &first.next_page_token,
        ],
    )
    .await;
    next.expect_code(0);
    assert_eq!(next.stdout.lines().count(), 1 + 3, "{}", next.stdout);
    assert!(next.stderr.contains("--page-token"), "{}", next.stderr);

    let everything = taskctl(
        &server,
        &[
            "list", "--label", "batch=b1", "--limit", "2", "--all", "-o", "json",
        ],
    )
    .await;
    everything.expect_code(0);
    let all: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &everything.stdout);
    let listed: Vec<String> = all.tasks.into_iter().map(|task| task.id).collect();
    assert_eq!(listed, ids, "every task once, oldest first");
    assert!(all.next_page_token.is_empty());

    let table = taskctl(&server, &["list", "--all", "--limit", "2"]).await;
    table.expect_code(0);
    assert_eq!(table.stdout.lines().count(), 1 + 8, "{}", table.stdout);
    assert!(table.stderr.is_empty(), "{}", table.stderr);

    // Statuses in any case, repeated.
    let failed = taskctl(
        &server,
        &[
            "list",
            "--status",
            "FAILED",
            "--status",
            "cancelled",
            "-o",
            "json",
        ],
    )
    .await;
    failed.expect_code(0);
    let failed: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &failed.stdout);
    assert_eq!(failed.tasks.len(), 1);
    assert_eq!(failed.tasks[0].name, "other");
}

#[tokio::test]
async fn watch_follows_a_task_live_to_each_terminal_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    // Completed: the gate opens while taskctl watches.
    let gated = create(&mut client, "to complete", "gate", Some(json!("payload"))).await;
    wait_for_status(&client, &gated.id, pb::TaskStatus::Running).await;
    let watching = spawn_taskctl(&server, &["watch", &gated.id]);
    until_watchers(&server, 1).await;
    server.gate.release(1);
    let watched = watching.await.expect("joined");
    watched.expect_code(0);
    let lines: Vec<&str> = watched.stdout.lines().collect();
    assert!(lines[0].starts_with("RUNNING"), "{lines:?}");
    assert!(
        lines.iter().any(|line| line.starts_with("COMPLETED 100%")),
        "{lines:?}"
    );
    let last = lines.last().expect("lines");
    assert!(
        last.starts_with(&format!("task {} completed after ", gated.id)),
        "{lines:?}"
    );
    assert!(last.ends_with(r#": "payload""#), "{lines:?}");

    // Every progress report arrives in order, one JSON object per line.
    let chatty = create(&mut client, "chatty", "chatty", Some(json!({"reports": 5}))).await;
    let watched = taskctl(&server, &["watch", &chatty.id, "-o", "json"]).await;
    watched.expect_code(0);
    let states = watched_tasks(&watched.stdout);
    assert!(
        states
            .windows(2)
            .all(|pair| pair[0].revision < pair[1].revision),
        "revisions go up: {states:?}"
    );
    assert_eq!(
        states.last().expect("states").status,
        i32::from(pb::TaskStatus::Completed)
    );

    // Failed: a sleep that outlives its one-second timeout.
    let mut request = crate::support::request("too slow", "sleep", Some(json!({"seconds": 30})));
    request.timeout_seconds = 1;
    let slow = client
        .create_task(request)
        .await
        .expect("created")
        .into_inner();
    let watched = taskctl(&server, &["watch", &slow.id]).await;
    watched.expect_code(3);
    assert!(watched.stdout.contains("RUNNING"), "{}", watched.stdout);
    assert!(
        watched
            .stdout
            .contains(&format!("task {} failed after ", slow.id)),
        "{}",
        watched.stdout
    );

    // Cancelled by another taskctl while this one watches.
    let held = create(&mut client, "to cancel", "gate", None).await;
    let watching = spawn_taskctl(&server, &["watch", &held.id]);
    until_watchers(&server, 1).await;
    let cancelled = taskctl(&server, &["cancel", &held.id, "-o", "json"]).await;
    cancelled.expect_code(0);
    assert_eq!(
        task_from_json(&cancelled.stdout).status,
        i32::from(pb::TaskStatus::Cancelled)
    );
    let watched = watching.await.expect("joined");
    watched.expect_code(4);
    assert!(
        watched
            .stdout
            .contains(&format!("task {} cancelled", held.id)),
        "{}",
        watched.stdout
    );

    // Cancelling again is safe; a completed task cannot be cancelled.
    taskctl(&server, &["cancel", &held.id]).await.expect_code(0);
    let refused = taskctl(&server, &["cancel", &gated.id]).await;
    refused.expect_code(1);
    assert_eq!(
        refused.stderr.trim(),
        format!(
            "taskctl: task {} is already completed and cannot be cancelled",
            gated.id
        ),
        "said once"
    );
}

#[tokio::test]
async fn a_watch_cut_by_shutdown_exits_unavailable() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    let task = create(&mut client, "held", "gate", None).await;
    let watching = spawn_taskctl(&server, &["watch", &task.id]);
    until_watchers(&server, 1).await;
    let stopped = server.begin_shutdown();
    let watched = watching.await.expect("joined");
    watched.expect_code(7);
    assert!(
        watched.stderr.contains("server unavailable"),
        "{}",
        watched.stderr
    );
    stopped.await.expect("stopped");
}
