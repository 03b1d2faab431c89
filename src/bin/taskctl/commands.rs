//! What each subcommand does: builds the request from the parsed command
//! line, calls the server, prints the answer, and says how it went as an
//! [`Outcome`] or a [`CliError`].
//!
//! Every unary call is bounded by `--call-timeout`; watch streams are not,
//! since they last as long as the task, but HTTP/2 keepalive (set up in
//! `connection`) ends one whose server froze or vanished.

use std::{
    collections::HashMap,
    future::Future,
    io::Read,
    time::{Duration, SystemTime},
};

use serde_json::Value as JsonValue;
use task_processor::{
    api::json::json_to_proto,
    pb::{
        self, task_service_client::TaskServiceClient, worker_service_client::WorkerServiceClient,
    },
};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::{
        Cli, Command, CreateArgs, HealthArgs, ListArgs, OutputFormat, SchedulingArgs,
        StartTimeArgs, TaskArgs,
    },
    connection::{ServerAddress, Transport},
    errors::{CliError, ExitStatus, is_deadline_exceeded},
    from_file,
    output::{self, HealthReport, Printer},
    paging,
    progress::WatchDisplay,
    schedules, workers,
};

/// The health services checked when `--service` is not given.
const DEFAULT_HEALTH_SERVICES: [&str; 2] = ["", "taskprocessor.v1.TaskService"];

/// How a command that did its job ended; errors are [`CliError`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A watched task ended `FAILED`.
    TaskFailed,
    /// A watched task ended `CANCELLED`.
    TaskCancelled,
    /// A command that acts on several tasks went on past failures, each
    /// already reported on stderr; `worst` is the highest of their exit
    /// statuses.
    ErrorsReported {
        worst: ExitStatus,
    },
}

impl Outcome {
    pub fn exit_status(self) -> ExitStatus {
        match self {
            Self::Success => ExitStatus::Success,
            Self::TaskFailed => ExitStatus::TaskFailed,
            Self::TaskCancelled => ExitStatus::TaskCancelled,
            Self::ErrorsReported { worst } => worst,
        }
    }
}

/// Where the server is and what every call needs; the commands of other
/// modules (`schedules`) call through it too.
pub struct Session {
    address: ServerAddress,
    call_timeout: Duration,
    /// The HTTP/2 keepalive interval and ping timeout (hidden flag).
    keepalive: Duration,
    pub printer: Printer,
}

/// Runs the command the command line names.
pub async fn run(cli: Cli) -> Result<Outcome, CliError> {
    let Cli { global, command } = cli;
    if let Command::Completions(args) = &command {
        return print_completions(args.shell);
    }
    let session = Session {
        address: ServerAddress::from_flags(&global)?,
        call_timeout: global.call_timeout,
        keepalive: global.keepalive,
        printer: Printer::new(global.output)?,
    };
    match command {
        Command::Create(args) => session.create(&args).await,
        Command::Get(args) => session.get(&args.id).await,
        Command::List(args) => session.list(args).await,
        Command::Watch(args) => match &args.id {
            Some(id) if !args.all => session.watch(id).await,
            _ => session.watch_all(args).await,
        },
        Command::Cancel(args) => session.cancel(&args.id).await,
        Command::Delete(args) => session.delete(&args.ids).await,
        Command::Health(args) => session.health(args).await,
        Command::Schedule(command) => schedules::run(&session, command).await,
        Command::Workers => workers::list(&session).await,
        Command::Completions(args) => print_completions(args.shell),
    }
}

impl Session {
    /// Connects; each command does so once, after checking its local
    /// input, so a typo in --data needs no server to be reported.
    async fn connect(&self) -> Result<Transport, CliError> {
        self.address
            .connect(self.call_timeout, self.keepalive)
            .await
    }

    pub async fn tasks(&self) -> Result<TaskServiceClient<Transport>, CliError> {
        Ok(TaskServiceClient::new(self.connect().await?))
    }

    pub async fn workers(&self) -> Result<WorkerServiceClient<Transport>, CliError> {
        Ok(WorkerServiceClient::new(self.connect().await?))
    }

    /// A request that tells the server our deadline too.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }

    /// Awaits one call within `--call-timeout`; `map_status` turns a
    /// refusal into an error a person can act on. The deadline is ours
    /// whether our timer, tonic's client or the server noticed it first.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
        map_status: impl FnOnce(Status) -> CliError,
    ) -> Result<T, CliError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if is_deadline_exceeded(&status) => Err(self.deadline_exceeded()),
            Ok(Err(status)) => Err(map_status(status)),
            Err(_elapsed) => Err(self.deadline_exceeded()),
        }
    }

    fn deadline_exceeded(&self) -> CliError {
        CliError::DeadlineExceeded {
            timeout: humantime::format_duration(self.call_timeout).to_string(),
        }
    }

    async fn create(&self, args: &CreateArgs) -> Result<Outcome, CliError> {
        if let Some(path) = &args.from_file {
            return from_file::create_tasks(self, path).await;
        }
        let request = create_request(args, SystemTime::now())?;
        let mut client = self.tasks().await?;
        let task = self
            .unary(client.create_task(self.request(request)), |status| {
                CliError::from_create_status(status, args.request_id.as_deref())
            })
            .await?;
        if !args.wait {
            self.printer.print_task(&task)?;
            return Ok(Outcome::Success);
        }
        if self.printer.format == OutputFormat::Table {
            output::write_stdout(&format!("created task {} ({})\n", task.id, task.name))?;
        }
        self.follow(client, &task.id).await
    }

    async fn get(&self, task_id: &str) -> Result<Outcome, CliError> {
        let mut client = self.tasks().await?;
        let request = self.request(pb::GetTaskRequest {
            id: task_id.to_owned(),
        });
        let task = self
            .unary(client.get_task(request), |status| {
                CliError::from_task_status(status, Some(task_id))
            })
            .await?;
        self.printer.print_task(&task)?;
        // Whatever the task's status: `get` reports, `watch` judges.
        Ok(Outcome::Success)
    }

    async fn cancel(&self, task_id: &str) -> Result<Outcome, CliError> {
        let mut client = self.tasks().await?;
        let request = self.request(pb::CancelTaskRequest {
            id: task_id.to_owned(),
        });
        let task = self
            .unary(client.cancel_task(request), |status| {
                CliError::from_task_status(status, Some(task_id))
            })
            .await?;
        self.printer.print_task(&task)?;
        Ok(Outcome::Success)
    }

    /// Deletes each task in turn. A failure is reported at once and does
    /// not stop the others; the outcome carries the worst of them.
    async fn delete(&self, task_ids: &[String]) -> Result<Outcome, CliError> {
        let mut client = self.tasks().await?;
        let mut worst: Option<ExitStatus> = None;
        for task_id in task_ids {
            let request = self.request(pb::DeleteTaskRequest {
                id: task_id.clone(),
            });
            let deleted = self
                .unary(client.delete_task(request), |status| {
                    CliError::from_delete_status(status, task_id)
                })
                .await;
            match deleted {
                Ok(()) => self.printer.print_deleted(task_id)?,
                Err(error) => {
                    error.report();
                    let status = error.exit_status();
                    if worst.is_none_or(|worst| status.code() > worst.code()) {
                        worst = Some(status);
                    }
                }
            }
        }
        Ok(worst.map_or(Outcome::Success, |worst| Outcome::ErrorsReported { worst }))
    }

    async fn list(&self, args: ListArgs) -> Result<Outcome, CliError> {
        let client = self.tasks().await?;
        // Every page's request but for its token.
        let filters = pb::ListTasksRequest {
            page_size: args.page.limit.unwrap_or(0),
            page_token: String::new(),
            statuses: args
                .statuses
                .into_iter()
                .map(|status| pb::TaskStatus::from(status).into())
                .collect(),
            labels: args.labels.into_iter().collect(),
        };
        let pages = args.page.pages();
        let first_token = args.page.page_token.unwrap_or_default();
        let page = paging::fetch(first_token, pages, |page_token| {
            let mut client = client.clone();
            let request = self.request(pb::ListTasksRequest {
                page_token,
                ..filters.clone()
            });
            async move {
                self.unary(client.list_tasks(request), |status| {
                    CliError::from_task_status(status, None)
                })
                .await
            }
        })
        .await?;
        self.printer.print_task_list(&page)?;
        Ok(Outcome::Success)
    }

    async fn watch(&self, task_id: &str) -> Result<Outcome, CliError> {
        let client = self.tasks().await?;
        self.follow(client, task_id).await
    }

    /// Follows the task to a terminal status; the outcome is that status.
    async fn follow(
        &self,
        mut client: TaskServiceClient<Transport>,
        task_id: &str,
    ) -> Result<Outcome, CliError> {
        let map_status = |status| CliError::from_task_status(status, Some(task_id));
        // Only opening the stream is bounded; the stream lasts as long as
        // the task does.
        let mut stream = self
            .unary(
                client.watch_task(pb::WatchTaskRequest {
                    id: task_id.to_owned(),
                }),
                map_status,
            )
            .await?;
        let display = WatchDisplay::new(&self.printer);
        let ended = loop {
            let task = match stream.message().await {
                Ok(Some(pb::WatchTaskResponse { task: Some(task) })) => task,
                Ok(Some(pb::WatchTaskResponse { task: None })) => continue,
                Ok(None) => {
                    break Err(CliError::Protocol(
                        "the watch stream ended before the task reached a final status".into(),
                    ));
                }
                Err(status) => break Err(map_status(status)),
            };
            if let Err(error) = display.show(&task) {
                break Err(error);
            }
            let outcome = match pb::TaskStatus::try_from(task.status) {
                Ok(pb::TaskStatus::Completed) => Outcome::Success,
                Ok(pb::TaskStatus::Failed) => Outcome::TaskFailed,
                Ok(pb::TaskStatus::Cancelled) => Outcome::TaskCancelled,
                _ => continue,
            };
            break Ok((task, outcome));
        };
        display.finish();
        let (task, outcome) = ended?;
        // A closing line for people; JSON and YAML readers have the states.
        if self.printer.format == OutputFormat::Table {
            let line = output::final_line(&task, std::time::SystemTime::now());
            output::write_stdout(&(line + "\n"))?;
        }
        Ok(outcome)
    }

    async fn health(&self, args: HealthArgs) -> Result<Outcome, CliError> {
        let services = if args.services.is_empty() {
            DEFAULT_HEALTH_SERVICES.map(str::to_owned).to_vec()
        } else {
            args.services
        };
        let mut client = HealthClient::new(self.connect().await?);
        let mut reports = Vec::with_capacity(services.len());
        for service in services {
            let request = self.request(HealthCheckRequest {
                service: service.clone(),
            });
            let response = self
                .unary(client.check(request), |status| {
                    if status.code() == Code::NotFound {
                        CliError::HealthServiceNotFound {
                            service: service.clone(),
                        }
                    } else {
                        CliError::from_status(status)
                    }
                })
                .await?;
            let status = ServingStatus::try_from(response.status).map_or_else(
                |_| format!("UNKNOWN({})", response.status),
                |status| status.as_str_name().to_owned(),
            );
            reports.push(HealthReport { service, status });
        }
        self.printer.print_health(&reports)?;
        let serving = ServingStatus::Serving.as_str_name();
        match reports.into_iter().find(|report| report.status != serving) {
            Some(report) => Err(CliError::NotServing {
                service: report.service,
                status: report.status,
            }),
            None => Ok(Outcome::Success),
        }
    }
}

/// The create request from the command line, with `--data` read and
/// parsed; `--in` counts from `now`.
fn create_request(args: &CreateArgs, now: SystemTime) -> Result<pb::CreateTaskRequest, CliError> {
    let task = task_request(&args.task)?;
    Ok(pb::CreateTaskRequest {
        request_id: args.request_id.clone().unwrap_or_default(),
        run_after: run_after(&args.start, now)?,
        ..task
    })
}

/// The request the task flags describe, with `--data` read and parsed:
/// a whole create but for its start time and idempotency key, and so
/// also the template of a schedule.
pub fn task_request(args: &TaskArgs) -> Result<pb::CreateTaskRequest, CliError> {
    // clap requires NAME but with `create --from-file`, which is not built
    // here; said as a usage error all the same.
    let name = args
        .name
        .clone()
        .ok_or_else(|| CliError::Usage("the task's NAME is required".to_owned()))?;
    let data = args.data.as_deref().map(read_data).transpose()?;
    let labels: HashMap<String, String> = args.labels.iter().cloned().collect();
    let scheduling = &args.scheduling;
    Ok(pb::CreateTaskRequest {
        name,
        description: args.description.clone(),
        kind: args.kind.clone(),
        data: data.as_ref().map(json_to_proto),
        timeout_seconds: optional_whole_seconds("--timeout", args.timeout)?,
        labels,
        request_id: String::new(),
        retry_policy: retry_policy(scheduling)?,
        run_after: None,
        priority: scheduling.priority.unwrap_or_default(),
        queue_timeout_seconds: optional_whole_seconds("--queue-timeout", scheduling.queue_timeout)?,
    })
}

/// The retry policy the flags ask for: `None` when no policy flag is
/// given, else a policy with only the given fields set, so the server
/// fills in the others from its defaults.
fn retry_policy(args: &SchedulingArgs) -> Result<Option<pb::RetryPolicy>, CliError> {
    if args.max_attempts.is_none()
        && args.backoff.is_none()
        && args.max_backoff.is_none()
        && args.backoff_multiplier.is_none()
    {
        return Ok(None);
    }
    if let (Some(backoff), Some(max_backoff)) = (args.backoff, args.max_backoff)
        && max_backoff < backoff
    {
        return Err(CliError::Usage(format!(
            "--max-backoff {} is shorter than --backoff {}; it must be at least as long",
            humantime::format_duration(max_backoff),
            humantime::format_duration(backoff)
        )));
    }
    Ok(Some(pb::RetryPolicy {
        max_attempts: args.max_attempts.unwrap_or_default(),
        initial_backoff: args
            .backoff
            .map(|backoff| proto_duration("--backoff", backoff))
            .transpose()?,
        max_backoff: args
            .max_backoff
            .map(|max_backoff| proto_duration("--max-backoff", max_backoff))
            .transpose()?,
        backoff_multiplier: args.backoff_multiplier.unwrap_or_default(),
    }))
}

/// `--run-after` as given, or `--in` from `now`; clap lets only one through.
fn run_after(
    args: &StartTimeArgs,
    now: SystemTime,
) -> Result<Option<prost_types::Timestamp>, CliError> {
    if let Some(time) = args.run_after {
        return Ok(Some(time));
    }
    let Some(delay) = args.in_ else {
        return Ok(None);
    };
    let too_far = || {
        CliError::Usage(format!(
            "--in {} is too far ahead",
            humantime::format_duration(delay)
        ))
    };
    let time = now.checked_add(delay).ok_or_else(too_far)?;
    let timestamp = prost_types::Timestamp::from(time);
    // `From<SystemTime>` saturates instead of failing; a saturated time is
    // not the one asked for.
    if SystemTime::try_from(timestamp).ok() != Some(time) {
        return Err(too_far());
    }
    Ok(Some(timestamp))
}

/// A duration flag as a `google.protobuf.Duration`.
fn proto_duration(flag: &str, duration: Duration) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(duration).map_err(|_| {
        CliError::Usage(format!(
            "{flag} {} is too long",
            humantime::format_duration(duration)
        ))
    })
}

/// `--data`: JSON text, `@FILE`, or `-` for stdin.
fn read_data(argument: &str) -> Result<JsonValue, CliError> {
    // What the error names: the flag as given, except the JSON text itself.
    let (text, source, hint) = if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(CliError::io("read --data from stdin"))?;
        (text, "--data - (stdin)".to_owned(), "")
    } else if let Some(path) = argument.strip_prefix('@') {
        let text = std::fs::read_to_string(path).map_err(|error| {
            CliError::Usage(format!("--data @{path}: cannot read the file: {error}"))
        })?;
        (text, format!("--data @{path}"), "")
    } else {
        let hint = " (quote it for the shell: --data '{\"a\": 1}')";
        (argument.to_owned(), "--data".to_owned(), hint)
    };
    serde_json::from_str(&text)
        .map_err(|error| CliError::Usage(format!("{source} is not valid JSON: {error}{hint}")))
}

/// A timeout flag in whole seconds, rounded up so that `500ms` is not
/// silently "the server's default" (or "no limit"); absent is 0.
fn optional_whole_seconds(flag: &str, duration: Option<Duration>) -> Result<u32, CliError> {
    let Some(duration) = duration else {
        return Ok(0);
    };
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(seconds).map_err(|_| CliError::Usage(format!("{flag} {seconds}s is too long")))
}

fn print_completions(shell: clap_complete::Shell) -> Result<Outcome, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::cli::command(), "taskctl", &mut script);
    output::write_stdout(&String::from_utf8_lossy(&script))?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole_seconds(duration: Duration) -> Result<u32, CliError> {
        optional_whole_seconds("--queue-timeout", Some(duration))
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_secs(30)).expect("fits"), 30);
        assert_eq!(
            whole_seconds(Duration::from_millis(1_500)).expect("fits"),
            2
        );
        assert_eq!(whole_seconds(Duration::ZERO).expect("fits"), 0);
        assert_eq!(
            optional_whole_seconds("--timeout", None).expect("absent"),
            0
        );
        let error =
            whole_seconds(Duration::from_secs(u64::from(u32::MAX) + 1)).expect_err("too long");
        assert!(error.to_string().starts_with("--queue-timeout "), "{error}");
    }

    fn request_of(args: &[&str], now: SystemTime) -> Result<pb::CreateTaskRequest, CliError> {
        let mut all = vec!["taskctl", "create", "t"];
        all.extend_from_slice(args);
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(all).expect("parses");
        let Command::Create(create) = cli.command else {
            panic!("create expected");
        };
        create_request(&create, now)
    }

    #[test]
    fn a_policy_flag_sends_a_policy_with_only_what_was_given() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let plain = request_of(&[], now).expect("valid");
        assert_eq!(plain.retry_policy, None);
        assert_eq!(plain.run_after, None);
        assert_eq!((plain.priority, plain.queue_timeout_seconds), (0, 0));

        let attempts = request_of(&["--max-attempts", "4"], now).expect("valid");
        assert_eq!(
            attempts.retry_policy,
            Some(pb::RetryPolicy {
                max_attempts: 4,
                ..Default::default()
            })
        );
        let backoff =
            request_of(&["--backoff", "1500ms", "--backoff-multiplier", "3"], now).expect("valid");
        assert_eq!(
            backoff.retry_policy,
            Some(pb::RetryPolicy {
                initial_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000
                }),
                backoff_multiplier: 3.0,
                ..Default::default()
            })
        );
        let error = request_of(&["--backoff", "1m", "--max-backoff", "10s"], now)
            .expect_err("max below initial");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        assert!(
            error.to_string().starts_with("--max-backoff 10s "),
            "{error}"
        );
    }

    #[test]
    fn start_time_priority_and_queue_timeout_are_sent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let delayed = request_of(&["--in", "1m 30s", "--priority", "-7"], now).expect("valid");
        assert_eq!(
            delayed.run_after,
            Some(prost_types::Timestamp {
                seconds: 1_090,
                nanos: 0
            })
        );
        assert_eq!(delayed.priority, -7);
        let at = request_of(
            &[
                "--run-after",
                "1970-01-01T01:00:00+01:00",
                "--queue-timeout",
                "1.5s",
            ],
            now,
        )
        .expect("valid");
        assert_eq!(at.run_after, Some(prost_types::Timestamp::default()));
        assert_eq!(at.queue_timeout_seconds, 2);
        let error = request_of(&["--in", "500000000000y"], now).expect_err("too far");
        assert!(error.to_string().starts_with("--in "), "{error}");
    }

    #[test]
    fn data_is_json_text_or_a_file() {
        assert_eq!(
            read_data(r#"{"a": [1, "x"]}"#).expect("valid"),
            serde_json::json!({"a": [1, "x"]})
        );
        let error = read_data("{not json").expect_err("invalid");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        let text = error.to_string();
        assert!(text.starts_with("--data is not valid JSON: "), "{text}");
        assert_eq!(
            text.matches("--data").count(),
            2,
            "once, and in the hint: {text}"
        );
        let error = read_data("@/nonexistent/taskctl-data.json").expect_err("no file");
        assert!(error.to_string().contains("cannot read"), "{error}");
    }
}
