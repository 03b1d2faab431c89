//! `taskctl`, the command line, driven as a person or a script would: the
//! real binary as a child process against the real server, checking what
//! it prints (tables, proto3 JSON, YAML) and how it exits. What the real
//! server does not do on cue (never answer, answer a deadline's status) a
//! scripted `TaskService` does.
//!
//! The child is blocking; it runs on tokio's blocking pool so the
//! in-process server keeps serving meanwhile.

use std::{process::Stdio, time::Duration};

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value as JsonValue, json};
use task_processor::{
    config::Config,
    pb::{
        self,
        task_service_server::{TaskService, TaskServiceServer},
    },
};
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status, transport::server::TcpIncoming};

use crate::support::{
    DEADLINE, TestServer, create, eventually, get, json as json_of, test_config, wait_for_status,
};

pub(crate) const TASKCTL: &str = env!("CARGO_BIN_EXE_taskctl");

/// What one run of `taskctl` did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code of {self:#?}");
        self
    }
}

/// `taskctl --addr <address> <args…>`, with no stdin and none of the
/// TASKCTL_* variables of whoever runs the tests.
pub(crate) fn command(address: &str, args: &[&str]) -> assert_cmd::Command {
    let mut command = std::process::Command::new(TASKCTL);
    command
        .arg("--addr")
        .arg(address)
        .args(args)
        .env_remove("TASKCTL_ADDR")
        .env_remove("TASKCTL_CALL_TIMEOUT")
        .stdin(Stdio::null());
    let mut command = assert_cmd::Command::from_std(command);
    command.timeout(DEADLINE);
    command
}

pub(crate) async fn run(mut command: assert_cmd::Command) -> Run {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking run finished")
        .expect("taskctl started");
    Run {
        code: output
            .status
            .code()
            .unwrap_or_else(|| panic!("taskctl was killed (timed out?): {output:?}")),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

async fn taskctl(server: &TestServer, args: &[&str]) -> Run {
    run(command(&server.url(), args)).await
}

/// Starts `taskctl` without waiting for it, for watches.
fn spawn_taskctl(server: &TestServer, args: &[&str]) -> JoinHandle<Run> {
    tokio::spawn(run(command(&server.url(), args)))
}

/// Waits until `count` watch streams are open on the server, so that what
/// the test does next happens while a `taskctl` is watching.
async fn until_watchers(server: &TestServer, count: usize) {
    eventually(&format!("{count} watchers"), || async move {
        (server.stats().await.watchers >= count).then_some(())
    })
    .await;
}

fn descriptor_pool() -> DescriptorPool {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("the embedded descriptors")
}

/// Reads proto3 JSON back into the generated message, strictly (unknown
/// fields are errors).
fn from_json<M: prost::Message + Default>(full_name: &str, text: &str) -> M {
    let descriptor = descriptor_pool()
        .get_message_by_name(full_name)
        .expect("known message");
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .unwrap_or_else(|error| panic!("{full_name} from JSON {text:?}: {error}"));
    deserializer.end().expect("exactly one JSON value");
    message.transcode_to().expect("the generated message")
}

fn from_yaml<M: prost::Message + Default>(full_name: &str, text: &str) -> M {
    let descriptor = descriptor_pool()
        .get_message_by_name(full_name)
        .expect("known message");
    let message = DynamicMessage::deserialize(descriptor, yaml_serde::Deserializer::from_str(text))
        .unwrap_or_else(|error| panic!("{full_name} from YAML {text:?}: {error}"));
    message.transcode_to().expect("the generated message")
}

fn task_from_json(text: &str) -> pb::Task {
    from_json("taskprocessor.v1.Task", text)
}

/// The lines of a `watch -o json`, each a `WatchTaskResponse`.
fn watched_tasks(stdout: &str) -> Vec<pb::Task> {
    stdout
        .lines()
        .map(|line| {
            from_json::<pb::WatchTaskResponse>("taskprocessor.v1.WatchTaskResponse", line)
                .task
                .expect("every message has the task")
        })
        .collect()
}

/// The value of `KEY:` in a key/value view.
fn detail<'a>(view: &'a str, key: &str) -> &'a str {
    view.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}: in {view}"))
}

/// A `TaskService` that answers every call with one status after `delay`,
/// or — with `None` — never answers: what the real server does not do on
/// cue.
struct ScriptedService {
    answer: Option<(Code, &'static str)>,
    delay: Duration,
}

impl ScriptedService {
    async fn answer<T>(&self) -> Result<Response<T>, Status> {
        tokio::time::sleep(self.delay).await;
        match self.answer {
            Some((code, message)) => Err(Status::new(code, message)),
            None => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl TaskService for ScriptedService {
    type WatchTaskStream = tokio_stream::Empty<Result<pb::WatchTaskResponse, Status>>;

    async fn create_task(
        &self,
        _request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }

    async fn get_task(
        &self,
        _request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }

    async fn list_tasks(
        &self,
        _request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.answer().await
    }

    async fn cancel_task(
        &self,
        _request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.answer().await
    }

    async fn watch_task(
        &self,
        _request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        self.answer().await
    }
}

/// Serves a [`ScriptedService`] that answers at once on 127.0.0.1:0;
/// returns its address and the serving task, to abort at the end.
async fn start_scripted(answer: Option<(Code, &'static str)>) -> (String, JoinHandle<()>) {
    start_scripted_after(Duration::ZERO, answer).await
}

/// [`start_scripted`], answering each call only after `delay`.
pub(crate) async fn start_scripted_after(
    delay: Duration,
    answer: Option<(Code, &'static str)>,
) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let serving = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TaskServiceServer::new(ScriptedService { answer, delay }))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("serves");
    });
    (format!("http://{address}"), serving)
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address.to_string()
}

#[tokio::test]
async fn create_get_and_list_print_tables_for_people() {
    let server = TestServer::start().await;
    let created = taskctl(
        &server,
        &[
            "create",
            "nightly report",
            "--kind",
            "gate",
            "--description",
            "the nightly one",
            "--data",
            r#"{"rows": 3}"#,
            "--label",
            "team=data",
            "--label",
            "env=dev",
            "--timeout",
            "1500ms",
        ],
    )
    .await;
    created.expect_code(0);
    let id = detail(&created.stdout, "ID").to_owned();
    assert_eq!(detail(&created.stdout, "STATUS"), "PENDING");
    assert_eq!(detail(&created.stdout, "TIMEOUT"), "2s", "rounded up");

    let fetched = taskctl(&server, &["get", &id]).await;
    fetched.expect_code(0);
    let view = &fetched.stdout;
    assert_eq!(detail(view, "NAME"), "nightly report");
    assert_eq!(detail(view, "DESCRIPTION"), "the nightly one");
    assert_eq!(detail(view, "KIND"), "gate");
    assert_eq!(detail(view, "DATA"), r#"{"rows":3}"#);
    assert_eq!(detail(view, "LABELS"), "env=dev, team=data");
    assert!(detail(view, "CREATED").ends_with("ago)"), "{view}");

    let listed = taskctl(&server, &["list"]).await;
    listed.expect_code(0);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", listed.stdout);
    for column in [
        "ID", "NAME", "KIND", "STATUS", "PROGRESS", "AGE", "DURATION",
    ] {
        assert!(lines[0].contains(column), "{column} in {}", lines[0]);
    }
    assert!(lines[1].starts_with(&id), "{}", lines[1]);
    assert!(lines[1].contains("nightly report"), "{}", lines[1]);
    assert!(lines[1].contains("ago"), "{}", lines[1]);
    server.gate.release(1);
}

#[tokio::test]
async fn json_and_yaml_read_back_to_the_task_the_server_has() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let data = json!({
        "int": 42, "neg": -7, "frac": 0.25, "big": 1e300, "nul": "a\u{0000}b", "emoji": "🦀",
        "list": [null, true, "x", [], {}], "nested": {"deeper": {"n": 1}}
    });
    let task = create(&mut client, "round trip", "echo", Some(data.clone())).await;
    let task = wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;

    let as_json = taskctl(&server, &["get", &task.id, "-o", "json"]).await;
    as_json.expect_code(0);
    assert_eq!(task_from_json(&as_json.stdout), task);
    // What grpcurl prints: lowerCamelCase, enum names, strings for uint64,
    // RFC 3339 times, whole numbers without a fraction.
    let printed: JsonValue = serde_json::from_str(&as_json.stdout).expect("JSON");
    assert_eq!(printed["status"], "TASK_STATUS_COMPLETED");
    assert_eq!(
        printed["revision"],
        JsonValue::String(task.revision.to_string())
    );
    assert!(
        printed["createdAt"]
            .as_str()
            .expect("a string")
            .ends_with('Z')
    );
    assert_eq!(printed["timeoutSeconds"], 60);
    assert_eq!(printed["result"], data);
    assert!(
        as_json.stdout.contains(r#""int": 42,"#),
        "{}",
        as_json.stdout
    );

    let as_yaml = taskctl(&server, &["get", &task.id, "--output", "yaml"]).await;
    as_yaml.expect_code(0);
    assert_eq!(
        from_yaml::<pb::Task>("taskprocessor.v1.Task", &as_yaml.stdout),
        task
    );
    let yaml_value: JsonValue = yaml_serde::from_str(&as_yaml.stdout).expect("YAML");
    assert_eq!(yaml_value, printed, "YAML is the JSON value");

    let listed = taskctl(&server, &["list", "-o", "json"]).await;
    listed.expect_code(0);
    let response: pb::ListTasksResponse =
        from_json("taskprocessor.v1.ListTasksResponse", &listed.stdout);
    assert_eq!(response.tasks, vec![task.clone()]);
    let listed = taskctl(&server, &["list", "-o", "yaml"]).await;
    let response: pb::ListTasksResponse =
        from_yaml("taskprocessor.v1.ListTasksResponse", &listed.stdout);
    assert_eq!(response.tasks, vec![task.clone()]);

    let watched = taskctl(&server, &["watch", &task.id, "-o", "json"]).await;
    watched.expect_code(0);
    assert_eq!(watched_tasks(&watched.stdout), vec![task.clone()]);
    let watched = taskctl(&server, &["watch", &task.id, "-o", "yaml"]).await;
    watched.expect_code(0);
    let documents: Vec<&str> = watched
        .stdout
        .split("---\n")
        .filter(|document| !document.is_empty())
        .collect();
    assert_eq!(documents.len(), 1, "{}", watched.stdout);
    let message: pb::WatchTaskResponse =
        from_yaml("taskprocessor.v1.WatchTaskResponse", documents[0]);
    assert_eq!(message.task, Some(task));
}

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
async fn errors_say_what_to_do_and_exit_with_their_code() {
    let server = TestServer::start().await;
    let unknown = "0190b4a4-5d3e-7f00-8000-000000000000";
    for subcommand in ["get", "watch", "cancel"] {
        let missing = taskctl(&server, &[subcommand, unknown]).await;
        missing.expect_code(5);
        assert_eq!(
            missing.stderr.trim(),
            format!("taskctl: task {unknown} not found")
        );
    }

    // The violation is told once, naming the field and what sets it.
    let blank = taskctl(&server, &["create", "  "]).await;
    blank.expect_code(6);
    assert_eq!(
        blank.stderr.trim(),
        "taskctl: invalid argument: field name (NAME): is required and must not be blank"
    );
    let bad_label = taskctl(&server, &["create", "x", "--label", "bad key!=v"]).await;
    bad_label.expect_code(6);
    assert_eq!(bad_label.stderr.lines().count(), 1, "{}", bad_label.stderr);
    assert!(
        bad_label
            .stderr
            .starts_with("taskctl: invalid argument: field labels (--label): key \"bad key!\""),
        "{}",
        bad_label.stderr
    );
    let not_uuid = taskctl(&server, &["get", "not-a-uuid"]).await;
    not_uuid.expect_code(6);
    assert_eq!(
        not_uuid.stderr.trim(),
        "taskctl: invalid argument: field id (ID): \"not-a-uuid\" is not a UUID"
    );

    // --data is named once, as given.
    let not_json = taskctl(&server, &["create", "x", "--data", "{not json"]).await;
    not_json.expect_code(2);
    assert!(
        not_json
            .stderr
            .starts_with("taskctl: --data is not valid JSON: "),
        "{}",
        not_json.stderr
    );
    assert_eq!(
        not_json.stderr.matches("--data").count(),
        2,
        "once, and once in the quoting hint: {}",
        not_json.stderr
    );
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("broken.json");
    std::fs::write(&path, "{not json").expect("written");
    let argument = format!("@{}", path.display());
    let not_json = taskctl(&server, &["create", "x", "--data", &argument]).await;
    not_json.expect_code(2);
    assert!(
        not_json
            .stderr
            .starts_with(&format!("taskctl: --data {argument} is not valid JSON: ")),
        "{}",
        not_json.stderr
    );
    assert_eq!(
        not_json.stderr.matches("--data").count(),
        1,
        "{}",
        not_json.stderr
    );

    // Usage errors, found before any call.
    for args in [
        &["create", "x", "--data", "{not json"][..],
        &["create", "x", "--label", "novalue"],
        &["create", "x", "--timeout", "soon"],
        &["list", "--status", "sleeping"],
        &["list", "--limit", "0"],
        &["--call-timeout", "0s", "health"],
        &["--tls", "health"],
        &["frobnicate"],
    ] {
        let usage = taskctl(&server, args).await;
        usage.expect_code(2);
        assert!(!usage.stderr.is_empty(), "{args:?}");
    }
    let tls = taskctl(&server, &["get", unknown, "--ca-cert", "ca.pem"]).await;
    tls.expect_code(2);
    assert!(
        tls.stderr.contains("TLS is not supported yet"),
        "{}",
        tls.stderr
    );
}

#[tokio::test]
async fn no_server_is_reported_as_such() {
    let address = closed_port_address().await;
    for addr in [address.clone(), format!("http://{address}")] {
        let refused = run(command(&addr, &["list"])).await;
        refused.expect_code(7);
        assert_eq!(
            refused.stderr.trim(),
            format!(
                "taskctl: no server at {address} (connection refused) — is task-processor running?"
            )
        );
    }
    // The address may come from the environment too.
    let mut from_env = std::process::Command::new(TASKCTL);
    from_env
        .args(["health"])
        .env("TASKCTL_ADDR", &address)
        .stdin(Stdio::null());
    let refused = run(assert_cmd::Command::from_std(from_env)).await;
    refused.expect_code(7);
    assert!(refused.stderr.contains(&address), "{}", refused.stderr);
}

#[tokio::test]
async fn health_reports_serving_then_not_serving() {
    let mut server = TestServer::start_with(Config {
        drain_period: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let serving = taskctl(&server, &["health"]).await;
    serving.expect_code(0);
    assert!(
        serving
            .stdout
            .contains("taskprocessor.v1.TaskService  SERVING"),
        "{}",
        serving.stdout
    );
    assert_eq!(
        serving.stdout.matches("SERVING").count(),
        2,
        "{}",
        serving.stdout
    );

    let as_json = taskctl(&server, &["health", "-o", "json"]).await;
    as_json.expect_code(0);
    let reports: Vec<JsonValue> = as_json
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(
        reports,
        vec![
            json!({"service": "", "status": "SERVING"}),
            json!({"service": "taskprocessor.v1.TaskService", "status": "SERVING"}),
        ]
    );
    let one = taskctl(
        &server,
        &[
            "health",
            "--service",
            "taskprocessor.v1.TaskService",
            "-o",
            "yaml",
        ],
    )
    .await;
    one.expect_code(0);
    assert_eq!(
        one.stdout,
        "---\nservice: taskprocessor.v1.TaskService\nstatus: SERVING\n"
    );

    let unknown = taskctl(&server, &["health", "--service", "no.such.Service"]).await;
    unknown.expect_code(5);

    let stopped = server.begin_shutdown();
    let draining = eventually("health to say NOT_SERVING", || async {
        let run = taskctl(&server, &["health"]).await;
        (run.code != 0).then_some(run)
    })
    .await;
    draining.expect_code(7);
    assert!(
        draining.stdout.contains("NOT_SERVING"),
        "{}",
        draining.stdout
    );
    assert!(
        draining.stderr.contains("not SERVING"),
        "{}",
        draining.stderr
    );
    // Creates are refused while the server drains.
    let refused = taskctl(&server, &["create", "late"]).await;
    refused.expect_code(7);
    stopped.abort();
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        // No server is needed: the address is never used.
        let completions = run(command("127.0.0.1:9", &["completions", shell])).await;
        completions.expect_code(0);
        assert!(completions.stdout.contains("taskctl"), "{shell}");
        assert!(completions.stdout.contains("watch"), "{shell}");
    }
}

#[tokio::test]
async fn help_shows_examples_and_exit_codes() {
    let help = run(command("127.0.0.1:9", &["--help"])).await;
    help.expect_code(0);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);
    for line in [
        "  3  the task failed",
        "  7  unavailable",
        "  8  the server is busy (queue or memory budget full); retry later",
    ] {
        assert!(help.stdout.contains(line), "{line} in {}", help.stdout);
    }
    for subcommand in [
        "create",
        "get",
        "list",
        "watch",
        "cancel",
        "health",
        "completions",
    ] {
        let help = run(command("127.0.0.1:9", &[subcommand, "--help"])).await;
        help.expect_code(0);
        assert!(
            help.stdout.contains(&format!("taskctl {subcommand}")),
            "{subcommand}: {}",
            help.stdout
        );
        assert!(help.stdout.contains("Examples:"), "{subcommand}");
    }
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
async fn a_full_queue_exits_busy_and_says_when_to_retry() {
    let server = TestServer::start_with(Config {
        max_concurrent: 1,
        queue_capacity: 1,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let running = create(&mut client, "running", "gate", None).await;
    wait_for_status(&client, &running.id, pb::TaskStatus::Running).await;
    create(&mut client, "waiting", "gate", None).await;

    let refused = taskctl(&server, &["create", "one too many", "--kind", "gate"]).await;
    refused.expect_code(8);
    assert_eq!(
        refused.stderr.trim(),
        "taskctl: the server is busy: the queue is full: 1 tasks are waiting; retry in 1s"
    );
    server.gate.release(2);
}

#[tokio::test]
async fn a_call_past_its_deadline_is_reported_as_our_timeout() {
    // No answer at all: whichever of taskctl's timer, tonic's client and
    // the server notices the deadline first, it is the same timeout.
    let (address, serving) = start_scripted(None).await;
    let unknown = "0190b4a4-5d3e-7f00-8000-000000000000";
    let silent = run(command(
        &address,
        &["get", unknown, "--call-timeout", "300ms"],
    ))
    .await;
    silent.expect_code(1);
    assert_eq!(
        silent.stderr.trim(),
        "taskctl: no answer within 300ms (raise it with --call-timeout)"
    );
    serving.abort();

    // What tonic's server answers when the deadline taskctl sent passes,
    // and what other servers answer.
    for answer in [
        (Code::Cancelled, "Timeout expired"),
        (Code::DeadlineExceeded, "deadline exceeded"),
    ] {
        let (address, serving) = start_scripted(Some(answer)).await;
        let late = run(command(&address, &["create", "late"])).await;
        late.expect_code(1);
        assert_eq!(
            late.stderr.trim(),
            "taskctl: no answer within 30s (raise it with --call-timeout)",
            "{answer:?}"
        );
        serving.abort();
    }

    // Other refusals are told in words, never as a bare gRPC code.
    let (address, serving) = start_scripted(Some((Code::Internal, "handler panicked"))).await;
    let failed = run(command(&address, &["list"])).await;
    failed.expect_code(1);
    assert_eq!(
        failed.stderr.trim(),
        "taskctl: the server failed (internal error): handler panicked"
    );
    serving.abort();
}

#[tokio::test]
async fn the_same_task_prints_the_same_text_every_time() {
    let server = TestServer::start().await;
    let keys = [
        "team", "env", "zone", "app", "tier", "owner", "cost", "batch",
    ];
    let label_args: Vec<String> = keys.iter().map(|key| format!("{key}=v-{key}")).collect();
    let mut args = vec![
        "create",
        "labelled",
        "--kind",
        "echo",
        "--data",
        r#"{"zeta": 1, "alpha": {"x": 2, "b": 3}, "mid": 4}"#,
        "-o",
        "json",
    ];
    for label in &label_args {
        args.extend(["--label", label.as_str()]);
    }
    let created = taskctl(&server, &args).await;
    created.expect_code(0);
    let id = task_from_json(&created.stdout).id;

    let mut sorted = keys;
    sorted.sort_unstable();
    for format in ["json", "yaml"] {
        let first = taskctl(&server, &["get", &id, "-o", format]).await;
        first.expect_code(0);
        for _ in 0..3 {
            let again = taskctl(&server, &["get", &id, "-o", format]).await;
            assert_eq!(again.stdout, first.stdout, "-o {format}");
        }
        // Map entries in key order; the task's fields in declaration order.
        let positions: Vec<usize> = sorted
            .iter()
            .map(|key| {
                first
                    .stdout
                    .find(&format!("v-{key}"))
                    .unwrap_or_else(|| panic!("{key} in {}", first.stdout))
            })
            .collect();
        assert!(positions.is_sorted(), "-o {format}: {}", first.stdout);
        let data_keys: Vec<usize> = ["alpha", "b", "x", "mid", "zeta"]
            .iter()
            .map(|key| {
                let written = if format == "json" {
                    format!("\"{key}\":")
                } else {
                    format!(" {key}:")
                };
                first
                    .stdout
                    .find(&written)
                    .unwrap_or_else(|| panic!("{written} in {}", first.stdout))
            })
            .collect();
        assert!(data_keys.is_sorted(), "-o {format}: {}", first.stdout);
        assert!(
            first.stdout.find("name").expect("name") < first.stdout.find("kind").expect("kind")
        );
    }
}

#[tokio::test]
async fn yaml_quotes_strings_a_yaml_1_1_reader_would_misread() {
    let server = TestServer::start().await;
    let created = taskctl(
        &server,
        &[
            "create",
            "2026-11-25",
            "--kind",
            "echo",
            "--description",
            "1_000",
            "--data",
            r#"{"day": "2026-11-25", "answer": "yes", "at": "12:30"}"#,
            "--label",
            "on=off",
            "-o",
            "json",
        ],
    )
    .await;
    created.expect_code(0);
    let id = task_from_json(&created.stdout).id;
    let mut client = server.client().await;
    let task = wait_for_status(&client, &id, pb::TaskStatus::Completed).await;

    let as_yaml = taskctl(&server, &["get", &id, "-o", "yaml"]).await;
    as_yaml.expect_code(0);
    let yaml = &as_yaml.stdout;
    for line in [
        "name: '2026-11-25'",
        "description: '1_000'",
        "  'on': 'off'",
        "  day: '2026-11-25'",
        "  answer: 'yes'",
        "  at: '12:30'",
    ] {
        assert!(
            yaml.lines().any(|written| written == line),
            "{line} in {yaml}"
        );
    }
    // RFC 3339 times are timestamps to YAML 1.1.
    for key in ["createdAt", "startedAt", "completedAt"] {
        let value = yaml
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} in {yaml}"));
        assert!(
            value.starts_with('\'') && value.ends_with('\''),
            "{key}: {value}"
        );
    }
    assert_eq!(from_yaml::<pb::Task>("taskprocessor.v1.Task", yaml), task);
    assert_eq!(get(&mut client, &id).await, task);
}
