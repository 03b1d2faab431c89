//! `taskctl`, the command line, driven as a person or a script would: the
//! real binary as a child process against the real server, checking what
//! it prints (tables, proto3 JSON, YAML) and how it exits. What the real
//! server does not do on cue (never answer, answer a deadline's status) a
//! scripted `TaskService` does.
//!
//! The child is blocking; it runs on tokio's blocking pool so the
//! in-process server keeps serving meanwhile.
//!
//! Here are the helpers every part shares (running taskctl, reading its
//! JSON and YAML back, the scripted service); the tests are by subject:
//! formats in `output`, the task commands in `commands`, many tasks from
//! a JSON Lines file (`create --from-file`) in `from_file`, the scheduling
//! flags of `create`, retries and `delete` in `scheduling`, the `schedule`
//! subcommands in `schedules`, `watch --all` in `watch_all`, the connected
//! workers (`workers`) in `workers`, errors and exit codes in
//! `exit_codes`, and
//! `health`, completions and help in `health_and_help`. taskctl when its connection fails is in
//! `taskctl_connection`.

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
        .env_remove("TASKCTL_TOKEN")
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
/// cue. With `ABORTED`, `WatchTasks` instead sends one message (token
/// `t1`) and then ends `ABORTED`, and from the token `t1` one more message
/// (token `t2`) and then `UNAVAILABLE`: a client that fell behind, and
/// resumed.
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
    type WatchTasksStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::WatchTasksResponse, Status>>>;

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

    async fn delete_task(
        &self,
        _request: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        self.answer().await
    }

    async fn watch_task(
        &self,
        _request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        self.answer().await
    }
    async fn watch_tasks(
        &self,
        request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        if !matches!(self.answer, Some((Code::Aborted, _))) {
            return self.answer().await;
        }
        let message = |name: &str, token: &str| pb::WatchTasksResponse {
            task: Some(pb::Task {
                id: format!("0190b4a4-5d3e-7f00-8000-00000000000{}", name.len()),
                name: name.into(),
                kind: "echo".into(),
                status: pb::TaskStatus::Running.into(),
                ..Default::default()
            }),
            initial_done: false,
            resume_token: token.into(),
        };
        let messages = match request.get_ref().resume_token.as_str() {
            "" => vec![
                Ok(message("first", "t1")),
                Err(Status::aborted("fell behind")),
            ],
            "t1" => vec![
                Ok(message("second", "t2")),
                Err(Status::unavailable("gone")),
            ],
            other => vec![Err(Status::invalid_argument(format!(
                "resume_token: unexpected {other:?}"
            )))],
        };
        Ok(Response::new(tokio_stream::iter(messages)))
    }
    async fn batch_create_tasks(
        &self,
        _request: Request<pb::BatchCreateTasksRequest>,
    ) -> Result<Response<pb::BatchCreateTasksResponse>, Status> {
        self.answer().await
    }

    async fn create_schedule(
        &self,
        _request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.answer().await
    }

    async fn get_schedule(
        &self,
        _request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.answer().await
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        self.answer().await
    }

    async fn pause_schedule(
        &self,
        _request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.answer().await
    }

    async fn resume_schedule(
        &self,
        _request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.answer().await
    }

    async fn delete_schedule(
        &self,
        _request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<()>, Status> {
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

mod commands;
mod exit_codes;
mod from_file;
mod health_and_help;
mod output;
mod schedules;
mod scheduling;
mod watch_all;
mod workers;
