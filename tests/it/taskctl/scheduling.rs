//! The v1.1 scheduling flags of `create` reaching the server (each alone,
//! so a flag sends only its own field), their usage errors, a `flaky`
//! task seen `RETRYING` by `list --status retrying` and by `create
//! --wait`, and `delete`.

use std::time::SystemTime;

use super::*;
use crate::support::status_of;

/// The server's default retry policy under `test_config`, which every
/// field a flag leaves out takes.
fn default_policy() -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: 1,
        initial_backoff: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        max_backoff: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        backoff_multiplier: 2.0,
    }
}

/// `create` with `flags`, as JSON, then the task the server holds.
async fn created_with(server: &TestServer, flags: &[&str]) -> (pb::Task, pb::Task) {
    let mut args = vec!["create", "scheduled", "--kind", "echo", "-o", "json"];
    args.extend_from_slice(flags);
    let created = taskctl(server, &args).await;
    created.expect_code(0);
    let printed = task_from_json(&created.stdout);
    let mut client = server.client().await;
    let held = get(&mut client, &printed.id).await;
    (printed, held)
}

#[tokio::test]
async fn each_scheduling_flag_sets_its_field_and_only_it() {
    let server = TestServer::start().await;
    let seconds = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });

    let (_, plain) = created_with(&server, &[]).await;
    assert_eq!(plain.retry_policy, Some(default_policy()));
    assert_eq!(plain.run_after, None);
    assert_eq!((plain.priority, plain.queue_timeout_seconds), (0, 0));

    for (flags, expected) in [
        (
            &["--max-attempts", "4"][..],
            pb::RetryPolicy {
                max_attempts: 4,
                ..default_policy()
            },
        ),
        (
            &["--backoff", "1500ms"],
            pb::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                ..default_policy()
            },
        ),
        (
            &["--max-backoff", "1m"],
            pb::RetryPolicy {
                max_backoff: seconds(60),
                ..default_policy()
            },
        ),
        (
            &["--backoff-multiplier", "1.5"],
            pb::RetryPolicy {
                backoff_multiplier: 1.5,
                ..default_policy()
            },
        ),
    ] {
        let (_, held) = created_with(&server, flags).await;
        assert_eq!(held.retry_policy, Some(expected), "{flags:?}");
    }

    let (_, prioritized) = created_with(&server, &["--priority", "-5"]).await;
    assert_eq!(prioritized.priority, -5);
    assert_eq!(prioritized.retry_policy, Some(default_policy()));
    let (_, limited) = created_with(&server, &["--queue-timeout", "90s"]).await;
    assert_eq!(limited.queue_timeout_seconds, 90);

    let later = SystemTime::now() + Duration::from_secs(3_600);
    let time = humantime::format_rfc3339_seconds(later).to_string();
    let (_, at) = created_with(&server, &["--run-after", &time]).await;
    let expected: prost_types::Timestamp = time.parse().expect("RFC 3339");
    assert_eq!(at.run_after, Some(expected));
    assert_eq!(status_of(&at), pb::TaskStatus::Pending);

    let before = SystemTime::now();
    let (_, delayed) = created_with(&server, &["--in", "1h"]).await;
    let after = SystemTime::now();
    let run_after = SystemTime::try_from(delayed.run_after.expect("run_after set")).expect("time");
    let hour = Duration::from_secs(3_600);
    // The server keeps whole microseconds.
    let earliest = before + hour - Duration::from_micros(1);
    assert!(
        (earliest..=after + hour).contains(&run_after),
        "{run_after:?}"
    );
}

#[tokio::test]
async fn json_prints_the_policy_as_grpcurl_does_and_get_shows_it() {
    let server = TestServer::start().await;
    let (printed, held) = created_with(
        &server,
        &[
            "--max-attempts",
            "3",
            "--backoff",
            "1500ms",
            "--priority",
            "7",
            "--in",
            "1h",
        ],
    )
    .await;
    assert_eq!(printed, held, "the JSON reads back to the task");
    let shown = taskctl(&server, &["get", &held.id, "-o", "json"]).await;
    shown.expect_code(0);
    let json: JsonValue = serde_json::from_str(&shown.stdout).expect("JSON");
    assert_eq!(
        json["retryPolicy"],
        json!({
            "maxAttempts": 3,
            "initialBackoff": "1.500s",
            "maxBackoff": "300s",
            "backoffMultiplier": 2
        }),
        "{}",
        shown.stdout
    );
    assert_eq!(json["priority"], json!(7));
    assert!(json["runAfter"].is_string(), "{}", shown.stdout);

    let table = taskctl(&server, &["get", &held.id]).await;
    table.expect_code(0);
    assert_eq!(detail(&table.stdout, "PRIORITY"), "7");
    assert_eq!(
        detail(&table.stdout, "RETRY POLICY"),
        "3 attempts; back-off 1s 500ms, ×2 per retry, at most 5m"
    );
    assert!(
        detail(&table.stdout, "RUN AFTER").ends_with("(in 1h)"),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn bad_scheduling_flags_are_usage_errors_naming_the_flag() {
    let server = TestServer::start().await;
    let both = taskctl(
        &server,
        &[
            "create",
            "x",
            "--in",
            "1m",
            "--run-after",
            "2026-12-03T18:00:00Z",
        ],
    )
    .await;
    both.expect_code(2);
    assert!(
        both.stderr.contains("--run-after") && both.stderr.contains("--in"),
        "{}",
        both.stderr
    );
    for (args, flag) in [
        (&["--priority", "101"][..], "--priority"),
        (&["--max-attempts", "0"], "--max-attempts"),
        (&["--backoff-multiplier", "0.5"], "--backoff-multiplier"),
        (&["--run-after", "2026-12-03 18:00"], "--run-after"),
        (&["--queue-timeout", "soon"], "--queue-timeout"),
        (
            &["--backoff", "1m", "--max-backoff", "10s"],
            "--max-backoff",
        ),
    ] {
        let mut all = vec!["create", "x"];
        all.extend_from_slice(args);
        let usage = taskctl(&server, &all).await;
        usage.expect_code(2);
        assert!(usage.stderr.contains(flag), "{args:?}: {}", usage.stderr);
    }
    // What only the server knows is refused by it, naming the flag.
    let too_far = taskctl(&server, &["create", "x", "--in", "400days"]).await;
    too_far.expect_code(6);
    assert!(
        too_far
            .stderr
            .starts_with("taskctl: invalid argument: field run_after (--run-after or --in): "),
        "{}",
        too_far.stderr
    );
    let mut client = server.client().await;
    assert_eq!(crate::support::count_tasks(&mut client).await, 0);
}

#[tokio::test]
async fn a_flaky_task_is_listed_and_shown_while_retrying() {
    let server = TestServer::start().await;
    let created = taskctl(
        &server,
        &[
            "create",
            "unsteady",
            "--kind",
            "flaky",
            "--max-attempts",
            "2",
            "--backoff",
            "1m",
            "-o",
            "json",
        ],
    )
    .await;
    created.expect_code(0);
    let task = task_from_json(&created.stdout);
    let client = server.client().await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Retrying).await;

    let listed = taskctl(&server, &["list", "--status", "retrying", "-o", "json"]).await;
    listed.expect_code(0);
    let listed: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &listed.stdout);
    let ids: Vec<&str> = listed.tasks.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(ids, [task.id.as_str()]);
    let table = taskctl(&server, &["list", "--status", "RETRYING"]).await;
    table.expect_code(0);
    assert!(table.stdout.contains(" RETRYING "), "{}", table.stdout);

    // Followed: the retry says why and when, then the task completes.
    let waited = taskctl(
        &server,
        &[
            "create",
            "steadier",
            "--kind",
            "flaky",
            "--max-attempts",
            "2",
            "--backoff",
            "100ms",
            "--wait",
        ],
    )
    .await;
    waited.expect_code(0);
    let retrying = waited
        .stdout
        .lines()
        .find(|line| line.starts_with("RETRYING "))
        .unwrap_or_else(|| panic!("a RETRYING line in {}", waited.stdout));
    assert!(
        retrying.contains("  attempt 1 failed (flaky failure 1); next attempt at "),
        "{retrying}"
    );
    assert!(
        waited.stdout.contains(r#"completed after "#),
        "{}",
        waited.stdout
    );
}

#[tokio::test]
async fn delete_forgets_finished_tasks_and_refuses_others() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let finished = create(&mut client, "done", "echo", None).await;
    wait_for_status(&client, &finished.id, pb::TaskStatus::Completed).await;
    let running = create(&mut client, "held", "gate", None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;

    let deleted = taskctl(&server, &["delete", &finished.id]).await;
    deleted.expect_code(0);
    assert_eq!(deleted.stdout, format!("deleted task {}\n", finished.id));
    let gone = taskctl(&server, &["get", &finished.id]).await;
    gone.expect_code(5);

    let refused = taskctl(&server, &["delete", &running.id]).await;
    refused.expect_code(1);
    assert_eq!(
        refused.stderr.trim(),
        format!(
            "taskctl: task {0} has not finished, so it cannot be deleted; cancel it first \
             (taskctl cancel {0}) or wait until it ends",
            running.id
        )
    );
    assert_eq!(
        status_of(&get(&mut client, &running.id).await),
        pb::TaskStatus::Running
    );

    // Several: each in turn, past failures, exiting with the worst code.
    let other = create(&mut client, "also done", "echo", None).await;
    wait_for_status(&client, &other.id, pb::TaskStatus::Completed).await;
    let several = taskctl(
        &server,
        &["delete", &running.id, &finished.id, &other.id, "-o", "json"],
    )
    .await;
    several.expect_code(5);
    assert_eq!(
        several.stdout, "{}\n",
        "one DeleteTask answer, as grpcurl prints it"
    );
    let errors: Vec<&str> = several.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{}", several.stderr);
    assert!(errors[0].contains("cancel it first"), "{errors:?}");
    assert_eq!(
        errors[1],
        format!("taskctl: task {} not found", finished.id)
    );
    let status = client
        .get_task(pb::GetTaskRequest {
            id: other.id.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);

    server.gate.release(1);
}
