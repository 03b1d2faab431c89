//! `create --from-file`: a JSON Lines file (or stdin) of `CreateTaskRequest`s
//! created with `BatchCreateTasks`, in calls of at most 1000, in file
//! order; a line taskctl cannot read is reported by its number before
//! anything is sent, and a line the server refuses by its number too.

use std::path::{Path, PathBuf};

use super::*;
use crate::support::{count_tasks, http_get, list_all};

const BATCH_RESPONSE: &str = "taskprocessor.v1.BatchCreateTasksResponse";

/// One `echo` task a line, `task 1` to `task {count}`, each with its
/// number as data.
fn echo_lines(count: usize) -> Vec<String> {
    (1..=count)
        .map(|number| {
            json!({"name": format!("task {number}"), "kind": "echo", "data": {"n": number}})
                .to_string()
        })
        .collect()
}

/// Writes the lines as a file in `directory`.
fn write_lines(directory: &Path, lines: &[String]) -> PathBuf {
    let path = directory.join("tasks.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("written");
    path
}

async fn from_file(server: &TestServer, path: &Path, extra: &[&str]) -> Run {
    let path = path.to_str().expect("a UTF-8 path");
    let mut args = vec!["create", "--from-file", path];
    args.extend_from_slice(extra);
    taskctl(server, &args).await
}

fn names(tasks: &[pb::Task]) -> Vec<&str> {
    tasks.iter().map(|task| task.name.as_str()).collect()
}

/// How many `BatchCreateTasks` calls the server answered with `code`
/// (`Ok`, `InvalidArgument`), from its metrics.
async fn batch_calls(server: &TestServer, code: &str) -> u64 {
    let (status, text) = http_get(&server.admin_address.to_string(), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let sample = format!(
        r#"task_processor_rpc_requests_total{{method="TaskService/BatchCreateTasks",code="{code}"}} "#
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&sample))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

/// Asserts that the server answered `expected` `BatchCreateTasks` calls
/// OK. A call is counted once its answer is sent, which may be just after
/// taskctl read it: polled until there are as many, then checked exactly.
async fn assert_ok_batch_calls(server: &TestServer, expected: u64) {
    eventually(
        &format!("{expected} BatchCreateTasks calls"),
        || async move { (batch_calls(server, "Ok").await >= expected).then_some(()) },
    )
    .await;
    assert_eq!(batch_calls(server, "Ok").await, expected);
}

#[tokio::test]
async fn a_file_of_three_tasks_is_created_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = write_lines(directory.path(), &echo_lines(3));

    let created = from_file(&server, &path, &["-o", "json"]).await;
    created.expect_code(0);
    let response: pb::BatchCreateTasksResponse = from_json(BATCH_RESPONSE, &created.stdout);
    assert_eq!(names(&response.tasks), ["task 1", "task 2", "task 3"]);
    for (number, task) in (1..).zip(&response.tasks) {
        assert_eq!(task.kind, "echo");
        let done = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
        assert_eq!(json_of(&done.result), Some(json!({"n": number})));
    }
    assert_eq!(names(&list_all(&mut client).await), names(&response.tasks));

    // For people: the table `list` prints, one row a task, in file order.
    let table = from_file(&server, &path, &[]).await;
    table.expect_code(0);
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{}", table.stdout);
    assert!(rows[0].starts_with("ID "), "{}", table.stdout);
    for (row, name) in rows[1..].iter().zip(["task 1", "task 2", "task 3"]) {
        assert!(row.contains(&format!("  {name}  ")), "{name} in {row}");
    }
    // One call each run.
    assert_ok_batch_calls(&server, 2).await;
}

#[tokio::test]
async fn thousands_of_lines_go_in_calls_of_at_most_1000() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let lines = echo_lines(2500);
    let path = write_lines(directory.path(), &lines);

    let created = from_file(&server, &path, &["-o", "json"]).await;
    created.expect_code(0);
    let response: pb::BatchCreateTasksResponse = from_json(BATCH_RESPONSE, &created.stdout);
    let expected: Vec<String> = (1..=2500).map(|number| format!("task {number}")).collect();
    assert_eq!(names(&response.tasks), expected);
    assert_eq!(
        names(&list_all(&mut client).await),
        expected,
        "stored in file order"
    );
    // 1000 + 1000 + 500.
    assert_ok_batch_calls(&server, 3).await;
}

#[tokio::test]
async fn large_lines_go_in_calls_the_server_can_take() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    // 1000 tasks of 3 KB data: 3 MB, past the 2 MiB a server with the
    // default max_data_bytes takes in one message.
    let blob = "x".repeat(3000);
    let lines: Vec<String> = (1..=1000)
        .map(|number| {
            json!({"name": format!("task {number}"), "kind": "echo", "data": {"blob": blob}})
                .to_string()
        })
        .collect();
    let path = write_lines(directory.path(), &lines);

    let created = from_file(&server, &path, &["-o", "json"]).await;
    created.expect_code(0);
    let response: pb::BatchCreateTasksResponse = from_json(BATCH_RESPONSE, &created.stdout);
    assert_eq!(response.tasks.len(), 1000);
    assert_eq!(count_tasks(&mut client).await, 1000);
    // About 345 tasks fit in taskctl's 1 MiB a call.
    assert_ok_batch_calls(&server, 3).await;
}

#[tokio::test]
async fn a_line_taskctl_cannot_read_is_named_and_nothing_is_sent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    // Past the first call's 1000 lines: sending as it reads would have
    // created those.
    for (bad_line, problem) in [
        (
            r#"{"name": "task 1200", "kind": "echo""#,
            "EOF while parsing",
        ),
        (
            r#"{"name": "task 1200", "kind": "echo", "lables": {"a": "b"}}"#,
            "lables",
        ),
    ] {
        let mut lines = echo_lines(1500);
        lines[1199] = bad_line.to_owned();
        let path = write_lines(directory.path(), &lines);

        let refused = from_file(&server, &path, &[]).await;
        refused.expect_code(2);
        assert_eq!(refused.stdout, "");
        let expected = format!(
            "taskctl: --from-file {}, line 1200: not a CreateTaskRequest in proto3 JSON: ",
            path.display()
        );
        assert!(refused.stderr.starts_with(&expected), "{}", refused.stderr);
        assert!(refused.stderr.contains(problem), "{}", refused.stderr);
    }
    assert_eq!(count_tasks(&mut client).await, 0);
    assert_eq!(batch_calls(&server, "Ok").await, 0);
    assert_eq!(batch_calls(&server, "InvalidArgument").await, 0);
}

#[tokio::test]
async fn a_line_the_server_refuses_is_named_by_its_line() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut lines = echo_lines(3);
    lines[1] = json!({"name": " ", "kind": "echo"}).to_string();
    let path = write_lines(directory.path(), &lines);

    let refused = from_file(&server, &path, &[]).await;
    refused.expect_code(6);
    assert_eq!(refused.stdout, "", "nothing created, nothing printed");
    let first = refused.stderr.lines().next().expect("an error");
    assert!(
        first.starts_with(&format!(
            "taskctl: --from-file {}, line 2: invalid argument: field name: ",
            path.display()
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("nothing was created from lines 1-3 (one call, all or nothing)"),
        "{}",
        refused.stderr
    );
    assert_eq!(count_tasks(&mut client).await, 0);
}

#[tokio::test]
async fn a_refused_call_after_the_first_says_what_was_created() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut lines = echo_lines(2500);
    lines[1299] = json!({"name": "task 1300", "kind": "echo", "priority": 500}).to_string();
    let path = write_lines(directory.path(), &lines);

    let refused = from_file(&server, &path, &["-o", "json"]).await;
    refused.expect_code(6);
    let response: pb::BatchCreateTasksResponse = from_json(BATCH_RESPONSE, &refused.stdout);
    let first_call: Vec<String> = (1..=1000).map(|number| format!("task {number}")).collect();
    assert_eq!(names(&response.tasks), first_call, "the first call's tasks");
    for expected in [
        format!(
            "taskctl: --from-file {}, line 1300: invalid argument: field priority: ",
            path.display()
        ),
        "\n  nothing was created from lines 1001-2000 (one call, all or nothing)\n".to_owned(),
        "\n  created by the calls before: lines 1-1000, 1000 tasks (printed)\n".to_owned(),
        "\n  not sent: lines 2001-2500\n".to_owned(),
    ] {
        assert!(
            refused.stderr.contains(&expected),
            "{expected:?} in {}",
            refused.stderr
        );
    }
    assert_eq!(names(&list_all(&mut client).await), first_call);
}

#[tokio::test]
async fn a_dash_reads_the_lines_from_stdin() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut piped = command(&server.url(), &["create", "--from-file", "-", "-o", "json"]);
    piped.write_stdin(echo_lines(3).join("\n"));
    let created = run(piped).await;
    created.expect_code(0);
    let response: pb::BatchCreateTasksResponse = from_json(BATCH_RESPONSE, &created.stdout);
    assert_eq!(names(&response.tasks), ["task 1", "task 2", "task 3"]);
    assert_eq!(count_tasks(&mut client).await, 3);

    let mut broken = command(&server.url(), &["create", "--from-file", "-"]);
    broken.write_stdin("{\"name\": \"fine\"}\n\nnot json\n");
    let refused = run(broken).await;
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .starts_with("taskctl: --from-file - (stdin), line 3: "),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn the_flags_of_one_task_conflict_with_from_file() {
    let server = TestServer::start().await;
    for flags in [
        &["hello"][..],
        &["--kind", "echo"],
        &["--data", "{}"],
        &["--label", "a=b"],
        &["--wait"],
        &["--request-id", "k"],
        &["--in", "1m"],
        &["--priority", "5"],
    ] {
        let mut args = vec!["create", "--from-file", "tasks.jsonl"];
        args.extend_from_slice(flags);
        let refused = taskctl(&server, &args).await;
        refused.expect_code(2);
        assert!(
            refused.stderr.contains("cannot be used with"),
            "{flags:?}: {}",
            refused.stderr
        );
    }
}
