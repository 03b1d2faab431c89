//! The command line of `taskctl`, declared with clap's derive: flags,
//! subcommands, their help and examples, and the parsers of single values
//! (`k=v` labels, durations, times, statuses).
//!
//! Nothing here talks to a server or prints results; `commands` does.

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use task_processor::pb;

use crate::{
    connection::DEFAULT_KEEPALIVE,
    errors::exit_codes_help,
    paging::Pages,
    schedules::{SCHEDULE_EXAMPLES, ScheduleCommand},
};

/// The address used when neither --addr nor TASKCTL_ADDR is given.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:50051";

const ROOT_EXAMPLES: &str = "\
Examples:
  taskctl create report --kind sleep --data '{\"seconds\": 2}' --wait
  taskctl list --status running --status pending
  taskctl get 0190b4a4-5d3e-7f00-8000-000000000000 -o yaml
  taskctl schedule create nightly --cron '0 2 * * *' --tz Europe/Berlin --kind echo
  taskctl --addr tasks.internal:50051 health";

/// taskctl: create, follow and manage the tasks and schedules of a
/// task-processor server.
///
/// Talks gRPC to the server at --addr (or TASKCTL_ADDR). Every command
/// prints a table for people by default; -o json prints proto3 JSON
/// exactly as grpcurl does, -o yaml the same as YAML.
#[derive(Debug, Parser)]
#[command(name = "taskctl", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes, before or after its name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Server address: http://host:port, or host:port.
    #[arg(
        long,
        global = true,
        env = "TASKCTL_ADDR",
        default_value = DEFAULT_ADDRESS,
        value_name = "ADDRESS"
    )]
    pub addr: String,

    /// Output form: a table for people, or proto3 JSON or YAML for
    /// programs.
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table,
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,

    /// How long each call (and connecting) may take, e.g. 10s, 1m; more
    /// than 0. Not applied to watch streams, which last as long as the
    /// task. (Named apart from `create --timeout`, which is the task's own
    /// timeout.) The default, 30s, outlasts the server's wait for its store
    /// (2 s) and keepalive's detection of a frozen server (20 s), so those
    /// are reported as unavailable (exit 7), not as a timeout (exit 1).
    // Issue 9: a default equal to the server's store wait (10 s each) made
    // a store outage look like "no answer" (1). 30 s is far longer than the
    // server's 2 s store wait, and longer than the ~20 s keepalive needs to
    // find a dead connection, so a frozen server under a long call is
    // "connection lost" (7) too; a person rarely waits longer than that.
    #[arg(
        long,
        global = true,
        env = "TASKCTL_CALL_TIMEOUT",
        default_value = "30s",
        value_parser = parse_call_timeout,
        value_name = "DURATION"
    )]
    pub call_timeout: Duration,

    /// Hidden, for tests: the HTTP/2 keepalive interval, and how long each
    /// ping may go unanswered, before the connection counts as lost. Tests
    /// set 1s so that a frozen server is noticed in about 2 s rather than
    /// the 20 s of the default (see `connection::DEFAULT_KEEPALIVE`).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "TASKCTL_KEEPALIVE",
        hide_env = true,
        default_value = DEFAULT_KEEPALIVE,
        value_parser = parse_keepalive,
        value_name = "DURATION"
    )]
    pub keepalive: Duration,

    /// Connect with TLS, trusting the public roots unless --ca is given
    /// (as https:// does).
    #[arg(long, global = true)]
    pub tls: bool,

    /// CA certificate (PEM) that signed the server's certificate; implies
    /// TLS.
    #[arg(long, global = true, value_name = "FILE", alias = "ca-cert")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that require one (mTLS); with
    /// --key; implies TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Bearer token sent with every call (`authorization: Bearer …`).
    #[arg(
        long,
        global = true,
        env = "TASKCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// File holding the bearer token (keeps it out of the process list and
    /// shell history).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, or a key/value view for one task or
    /// schedule.
    Table,
    /// proto3 JSON: one object per answer; streams print one object per
    /// line.
    Json,
    /// The JSON value as YAML; streams print one document per message.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a task, or one per line of a file; with --wait, follow it to
    /// its end.
    #[command(after_help = "\
Examples:
  taskctl create hello
  taskctl create --from-file tasks.jsonl   # one CreateTaskRequest in JSON a line
  taskctl create report --kind sleep --data '{\"seconds\": 1.5}' --timeout 30s --wait
  taskctl create import --data @input.json --label team=data --label env=dev
  echo '[1, 2, 3]' | taskctl create sum --kind echo --data - -o json
  taskctl create nightly --request-id nightly-2024-06-01   # safe to retry
  taskctl create sync --kind flaky --max-attempts 5 --backoff 2s --max-backoff 1m --wait
  taskctl create digest --run-after 2026-12-03T18:00:00Z --priority -5
  taskctl create reminder --in 10m --queue-timeout 5m

Exit code with --wait: 0 completed, 3 failed, 4 cancelled.")]
    // Boxed: its flags make it far larger than the other commands.
    Create(Box<CreateArgs>),

    /// Show one task with all its fields.
    #[command(after_help = "\
Examples:
  taskctl get 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl get 0190b4a4-5d3e-7f00-8000-000000000000 -o json | jq -r .status

Exits 0 whatever the task's status (5 when no task has the id); use
`watch` to turn the final status into the exit code.")]
    Get(TaskIdArgs),

    /// List tasks, oldest first.
    #[command(after_help = "\
Examples:
  taskctl list
  taskctl list --status failed --status cancelled
  taskctl list --label team=data --limit 20
  taskctl list --all -o json | jq '.tasks | length'

Without --all one page is shown; when more exist, the token of the next
page is printed to stderr (table) or as nextPageToken (json, yaml). With
--all every page is fetched and printed as one list.")]
    List(ListArgs),

    /// Follow a task live until it ends, or every matching task (--all).
    #[command(after_help = "\
Examples:
  taskctl watch 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl watch 0190b4a4-5d3e-7f00-8000-000000000000 -o json   # one object per line
  taskctl watch --all
  taskctl watch --all --status running --label team=data --kind sleep
  taskctl watch --all --initial -o json

On a terminal a progress bar shows the task's progress and message;
otherwise one line per state. Exit code: 0 completed, 3 failed,
4 cancelled.

With --all, one line per change of any matching task (time, id, kind,
status, progress), or one WatchTasksResponse per line with -o json, until
interrupted. A task that leaves the filter shows once more. When the
server ends the stream because taskctl fell behind, taskctl resumes from
the last message by itself.")]
    Watch(WatchArgs),

    /// Cancel a pending or running task.
    #[command(after_help = "\
Examples:
  taskctl cancel 0190b4a4-5d3e-7f00-8000-000000000000

Prints the task as cancelled. Cancelling a cancelled task succeeds again;
a task that already completed or failed cannot be cancelled (exit 1).")]
    Cancel(TaskIdArgs),

    /// Delete finished tasks, with their data and result.
    #[command(after_help = "\
Examples:
  taskctl delete 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl list --status failed -o json | jq -r '.tasks[].id' | xargs taskctl delete

Only a completed, failed or cancelled task can be deleted; one that has
not finished is refused (exit 1): cancel it first. With several ids,
each is deleted in turn, a failure does not stop the others, and the exit
code is the highest of the failures' codes (0 when all were deleted).")]
    Delete(TaskIdsArgs),

    /// Create and manage schedules: tasks created again and again on a
    /// calendar.
    #[command(subcommand, after_help = SCHEDULE_EXAMPLES)]
    Schedule(ScheduleCommand),

    /// List the workers connected to the server: kinds, capacity, tasks in
    /// flight and replica.
    #[command(after_help = "\
Examples:
  taskctl workers
  taskctl workers -o json | jq -r '.workers[].workerName'

Lists the worker streams (WorkerService/Work) connected to the replica
that answers, in the order they connected; with several replicas, ask
each one. IN FLIGHT/MAX is the tasks a worker runs now out of how many it
runs at once.")]
    Workers,

    /// Ask the server whether it is serving (grpc.health.v1).
    #[command(after_help = "\
Examples:
  taskctl health
  taskctl health --service taskprocessor.v1.TaskService

Checks the whole server (\"\") and taskprocessor.v1.TaskService unless
--service is given. Exit code: 0 all serving, 7 one is not serving or
the server cannot be reached, 5 an unknown service.")]
    Health(HealthArgs),

    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  taskctl completions bash > /etc/bash_completion.d/taskctl
  taskctl completions zsh > \"${fpath[1]}/_taskctl\"
  taskctl completions fish > ~/.config/fish/completions/taskctl.fish")]
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub task: TaskArgs,

    /// Create one task per line of a JSON Lines file instead (- reads
    /// stdin); not with NAME or the flags of one task.
    ///
    /// Each line is a CreateTaskRequest in proto3 JSON, e.g. {"name": "a",
    /// "kind": "echo", "data": {"n": 1}}; blank lines are skipped. Every
    /// line is checked before anything is sent. The tasks go in calls of
    /// up to 1000 (BatchCreateTasks), each all or nothing; when one fails,
    /// the error says which lines it held, and those of the calls before
    /// it were created (and are printed).
    // Every flag that describes one task conflicts: the lines say it all.
    // A conflicting flag present also lifts NAME's requirement (clap).
    #[arg(
        long,
        value_name = "FILE|-",
        help_heading = None::<&str>,
        conflicts_with_all = FLAGS_OF_ONE_TASK
    )]
    pub from_file: Option<PathBuf>,

    // The two below reset the help heading, which the scheduling flags
    // of `task` leave set (clap does not restore it after a flatten).
    /// Idempotency key: repeating the create with the same key and
    /// parameters returns the same task.
    #[arg(long, value_name = "KEY", help_heading = None::<&str>)]
    pub request_id: Option<String>,

    /// Follow the task until it ends; the exit code tells how it ended.
    #[arg(long, help_heading = None::<&str>)]
    pub wait: bool,

    #[command(flatten)]
    pub start: StartTimeArgs,
}

/// The arguments of `create` that describe the one task it creates, by
/// their clap ids; `--from-file` takes none of them.
const FLAGS_OF_ONE_TASK: [&str; 16] = [
    "name",
    "kind",
    "description",
    "data",
    "labels",
    "timeout",
    "max_attempts",
    "backoff",
    "max_backoff",
    "backoff_multiplier",
    "priority",
    "queue_timeout",
    "request_id",
    "wait",
    "run_after",
    "in",
];

/// What a task is and how it is run: the flags `create` and `schedule
/// create` share, since a schedule's template is a create request. Not
/// here: the start time and the idempotency key, which a template may not
/// have (each firing is a new task, due when the schedule fires).
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Human name of the task (1–200 characters).
    // Optional in type only: required, but for `create --from-file`, whose
    // conflict with it clap lets stand in for it.
    #[arg(required = true)]
    pub name: Option<String>,

    /// Processor that runs it (demo, echo, sleep, fail, …); the server's
    /// default kind when absent.
    #[arg(long, default_value = "")]
    pub kind: String,

    /// Free text, up to 4096 characters.
    #[arg(long, default_value = "")]
    pub description: String,

    /// Input as JSON: the text itself, @FILE to read a file, or - to read
    /// stdin.
    #[arg(long, value_name = "JSON|@FILE|-")]
    pub data: Option<String>,

    /// A label KEY=VALUE; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// The task's own timeout, e.g. 30s, 5m; rounded up to whole seconds.
    /// 0s or absent: the server's default.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    #[command(flatten)]
    pub scheduling: SchedulingArgs,
}

/// How the task is run once due: its retry policy, priority and queue
/// timeout. Flags left out are not sent, so the server's defaults apply.
#[derive(Debug, Args)]
#[command(next_help_heading = "Scheduling")]
pub struct SchedulingArgs {
    /// How many runs may fail before the task is FAILED, the first
    /// included: 1 means no retry (1–100). Absent: the server's default
    /// for the kind (1 unless configured).
    // Negative numbers reach the range check, whose error names the flag.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=100),
        value_name = "N"
    )]
    pub max_attempts: Option<u32>,

    /// The wait after the first failed run, e.g. 500ms, 2s (server
    /// default 1s); each later wait is --backoff-multiplier times longer.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub backoff: Option<Duration>,

    /// The longest wait between runs, e.g. 1m (server default 5m); at
    /// least --backoff.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_backoff: Option<Duration>,

    /// How much longer each wait is than the one before: a number of at
    /// least 1 (server default 2).
    #[arg(long, value_parser = parse_backoff_multiplier, value_name = "FACTOR")]
    pub backoff_multiplier: Option<f64>,

    /// From -100 to 100 (default 0): among tasks ready to start, higher
    /// starts first, then oldest first.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-100..=100),
        value_name = "N"
    )]
    pub priority: Option<i32>,

    /// Fail the task if it waits longer than this to start, once ready,
    /// e.g. 5m; rounded up to whole seconds. 0s or absent: no limit.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub queue_timeout: Option<Duration>,
}

/// When the task may start (`create` only). Absent: at once.
#[derive(Debug, Args)]
#[command(next_help_heading = "Scheduling")]
pub struct StartTimeArgs {
    /// Do not start before this time, in RFC 3339 with a zone:
    /// 2026-12-03T18:00:00Z or 2026-12-03T19:00:00+01:00.
    #[arg(long, value_parser = parse_rfc3339, value_name = "TIME", conflicts_with = "in")]
    pub run_after: Option<prost_types::Timestamp>,

    /// Do not start before this long from now, e.g. 10m, 1h 30m.
    #[arg(id = "in", long = "in", value_parser = parse_duration, value_name = "DURATION")]
    pub in_: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task's id (a UUID).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The task's id (a UUID); not with --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,

    /// Follow every task that matches --status, --label and --kind
    /// (WatchTasks), until interrupted.
    #[arg(long)]
    pub all: bool,

    /// With --all: only tasks with this status, before or after a change;
    /// repeat for several.
    #[arg(
        long = "status",
        value_enum,
        ignore_case = true,
        value_name = "STATUS",
        requires = "all"
    )]
    pub statuses: Vec<StatusFilter>,

    /// With --all: only tasks with this label KEY=VALUE; repeat to require
    /// several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, requires = "all")]
    pub labels: Vec<(String, String)>,

    /// With --all: only tasks of this kind; repeat for several.
    #[arg(long = "kind", value_name = "KIND", requires = "all")]
    pub kinds: Vec<String>,

    /// With --all: first show every matching task as it is now.
    #[arg(long, requires = "all")]
    pub initial: bool,
}

#[derive(Debug, Args)]
pub struct TaskIdsArgs {
    /// The ids of the tasks (UUIDs).
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks with this status; repeat for several (any of them).
    #[arg(long = "status", value_enum, ignore_case = true, value_name = "STATUS")]
    pub statuses: Vec<StatusFilter>,

    /// Only tasks with this label KEY=VALUE; repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    #[command(flatten)]
    pub page: PageArgs,
}

/// Which page of a list to show: the flags `list` and `schedule list`
/// share.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// How many per page (the server caps it at 1000; its default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub limit: Option<i32>,

    /// Start at this page (the token a previous list printed).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,

    /// Fetch every page (of --limit each) and print them as one list.
    #[arg(long)]
    pub all: bool,
}

impl PageArgs {
    /// What `--all` asks for.
    pub fn pages(&self) -> Pages {
        if self.all { Pages::All } else { Pages::One }
    }
}

/// A task status as a filter; `running`, `RUNNING` and
/// `TASK_STATUS_RUNNING` all work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    #[value(alias = "task_status_pending")]
    Pending,
    #[value(alias = "task_status_running")]
    Running,
    #[value(alias = "task_status_completed")]
    Completed,
    #[value(alias = "task_status_failed")]
    Failed,
    #[value(alias = "task_status_cancelled")]
    Cancelled,
    #[value(alias = "task_status_retrying")]
    Retrying,
}

impl From<StatusFilter> for pb::TaskStatus {
    fn from(filter: StatusFilter) -> Self {
        match filter {
            StatusFilter::Pending => Self::Pending,
            StatusFilter::Running => Self::Running,
            StatusFilter::Completed => Self::Completed,
            StatusFilter::Failed => Self::Failed,
            StatusFilter::Cancelled => Self::Cancelled,
            StatusFilter::Retrying => Self::Retrying,
        }
    }
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Service to check; repeat for several. Default: "" (the whole
    /// server) and taskprocessor.v1.TaskService.
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print the script for.
    pub shell: clap_complete::Shell,
}

/// The clap command with the exit-code table appended to the help.
pub fn command() -> clap::Command {
    Cli::command().after_help(format!("{ROOT_EXAMPLES}\n\n{}", exit_codes_help()))
}

/// Parses the process's arguments; on a usage error clap prints it and
/// exits with code 2.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// `KEY=VALUE`; the value may be empty and may contain `=`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// A human duration: `30s`, `1m 30s`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (try 30s, 5m, 1h)"))
}

/// `--backoff-multiplier`: a finite number of at least 1, as the server
/// requires (0, its "default", is what leaving the flag out means).
fn parse_backoff_multiplier(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor >= 1.0 => Ok(factor),
        Ok(_) => Err("must be a number of at least 1 (try 2, 1.5)".to_owned()),
        Err(_) => Err(format!("{text:?} is not a number (try 2, 1.5)")),
    }
}

/// `--run-after`: an RFC 3339 time with its zone, `2026-12-03T18:00:00Z`
/// or `…T19:00:00+01:00`. prost's parser alone would also take a bare date,
/// or a time without a zone as UTC, which a person in another zone would
/// not mean.
fn parse_rfc3339(text: &str) -> Result<prost_types::Timestamp, String> {
    const HINT: &str = "use RFC 3339 with a zone, e.g. 2026-12-03T18:00:00Z or \
                        2026-12-03T19:00:00+01:00";
    let bytes = text.as_bytes();
    let has_time = matches!(bytes.get(10), Some(b'T' | b't'));
    let has_zone = text.ends_with(['Z', 'z'])
        || (bytes.len() > 6
            && matches!(bytes[bytes.len() - 6], b'+' | b'-')
            && bytes[bytes.len() - 3] == b':');
    if !has_time || !has_zone {
        return Err(format!("{text:?} is not a time with a zone; {HINT}"));
    }
    text.parse::<prost_types::Timestamp>()
        .map_err(|_| format!("{text:?} is not a valid time; {HINT}"))
}

/// The longest deadline gRPC can send: `grpc-timeout` has at most eight
/// digits, and its largest unit is the hour (tonic panics beyond it).
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(99_999_999 * 3_600);

/// `--call-timeout`: a duration a call can be given, so neither 0 (every
/// call would fail before it is sent) nor more than gRPC can carry.
fn parse_call_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err("must be more than 0 (try 10s, 1m)".to_owned());
    }
    if timeout > MAX_CALL_TIMEOUT {
        return Err("must be at most 99999999h, the longest deadline gRPC can carry".to_owned());
    }
    Ok(timeout)
}

/// The hidden `--keepalive`: more than 0 (hyper would never ping).
fn parse_keepalive(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval.is_zero() {
        return Err("must be more than 0 (try 1s)".to_owned());
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        assert_eq!(parse_label("a=b=c"), Ok(("a".to_owned(), "b=c".to_owned())));
        assert_eq!(parse_label("a="), Ok(("a".to_owned(), String::new())));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }

    #[test]
    fn call_timeouts_are_positive_and_fit_in_grpc() {
        assert_eq!(parse_call_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_call_timeout("99999999h").is_ok());
        for text in ["0s", "0ms", "100000000h", "soon"] {
            assert!(parse_call_timeout(text).is_err(), "{text}");
        }
        let error = Cli::try_parse_from(["taskctl", "--call-timeout", "0s", "health"])
            .expect_err("0s is refused");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn the_keepalive_default_parses_to_the_documented_interval() {
        let cli = Cli::try_parse_from(["taskctl", "health"]).expect("defaults");
        // docs/taskctl.md and the comment on DEFAULT_KEEPALIVE say 10 s.
        assert_eq!(cli.global.keepalive, Duration::from_secs(10));
        assert!(parse_keepalive("0s").is_err());
        assert_eq!(parse_keepalive("1s"), Ok(Duration::from_secs(1)));
    }

    fn create_of(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let mut all = vec!["taskctl", "create", "t"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        let Command::Create(create) = cli.command else {
            panic!("create expected");
        };
        Ok(*create)
    }

    fn scheduling_of(args: &[&str]) -> Result<SchedulingArgs, clap::Error> {
        create_of(args).map(|create| create.task.scheduling)
    }

    #[test]
    fn scheduling_flags_parse_and_bad_values_are_usage_errors() {
        let create = create_of(&[
            "--max-attempts",
            "3",
            "--backoff",
            "500ms",
            "--max-backoff",
            "1m",
            "--backoff-multiplier",
            "1.5",
            "--priority",
            "-5",
            "--queue-timeout",
            "2m",
            "--in",
            "10s",
        ])
        .expect("parses");
        assert_eq!(create.start.in_, Some(Duration::from_secs(10)));
        let scheduling = create.task.scheduling;
        assert_eq!(scheduling.max_attempts, Some(3));
        assert_eq!(scheduling.backoff, Some(Duration::from_millis(500)));
        assert_eq!(scheduling.max_backoff, Some(Duration::from_secs(60)));
        assert_eq!(scheduling.backoff_multiplier, Some(1.5));
        assert_eq!(scheduling.priority, Some(-5));
        assert_eq!(scheduling.queue_timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            scheduling_of(&["--priority=-100"])
                .expect("parses")
                .priority,
            Some(-100)
        );

        for (flag, value) in [
            ("--max-attempts", "0"),
            ("--max-attempts", "101"),
            ("--max-attempts", "-1"),
            ("--priority", "101"),
            ("--priority", "-101"),
            ("--priority", "high"),
            ("--backoff", "soon"),
            ("--max-backoff", "1 fortnight"),
            ("--backoff-multiplier", "0.5"),
            ("--backoff-multiplier", "NaN"),
            ("--backoff-multiplier", "inf"),
            ("--backoff-multiplier", "twice"),
            ("--run-after", "tomorrow"),
            ("--in", "later"),
            ("--queue-timeout", "5 parsecs"),
        ] {
            let error = create_of(&[flag, value]).expect_err(value);
            assert_eq!(error.exit_code(), 2, "{flag} {value}");
            let text = error.to_string();
            assert!(text.contains(flag), "{flag} named in: {text}");
        }
        let both = create_of(&["--in", "1m", "--run-after", "2026-12-03T18:00:00Z"])
            .expect_err("--in and --run-after conflict");
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn run_after_is_rfc_3339_with_a_zone() {
        let utc = parse_rfc3339("2026-12-03T18:00:00Z").expect("UTC");
        assert_eq!(utc.seconds, 1_796_320_800);
        let offset = parse_rfc3339("2026-12-03T19:00:00+01:00").expect("with an offset");
        assert_eq!(offset, utc);
        let fraction = parse_rfc3339("2026-12-03t18:00:00.250z").expect("lower case");
        assert_eq!(
            (fraction.seconds, fraction.nanos),
            (utc.seconds, 250_000_000)
        );
        for text in [
            "2026-12-03",
            "2026-12-03T18:00:00",
            "2026-12-03 18:00:00Z",
            "2026-13-03T18:00:00Z",
            "2026-12-03T18:00Z",
            "18:00",
            "",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn retrying_is_a_status_filter() {
        for text in ["retrying", "TASK_STATUS_RETRYING"] {
            let cli = Cli::try_parse_from(["taskctl", "list", "--status", text]).expect(text);
            let Command::List(list) = cli.command else {
                panic!("list expected");
            };
            assert_eq!(list.statuses, vec![StatusFilter::Retrying]);
            assert_eq!(
                pb::TaskStatus::from(list.statuses[0]),
                pb::TaskStatus::Retrying
            );
        }
    }

    #[test]
    fn delete_takes_one_id_or_more() {
        let cli = Cli::try_parse_from(["taskctl", "delete", "a", "b"]).expect("two ids");
        let Command::Delete(delete) = cli.command else {
            panic!("delete expected");
        };
        assert_eq!(delete.ids, ["a", "b"]);
        let error = Cli::try_parse_from(["taskctl", "delete"]).expect_err("an id is required");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn statuses_are_accepted_in_any_case_and_with_the_enum_prefix() {
        for text in ["running", "RUNNING", "Running", "TASK_STATUS_RUNNING"] {
            let cli = Cli::try_parse_from(["taskctl", "list", "--status", text]).expect(text);
            let Command::List(list) = cli.command else {
                panic!("list expected");
            };
            assert_eq!(list.statuses, vec![StatusFilter::Running]);
        }
    }
}
