//! The command line of `taskctl`, declared with clap's derive: flags,
//! subcommands, their help and examples, and the parsers of single values
//! (`k=v` labels, durations, statuses).
//!
//! Nothing here talks to a server or prints results; `commands` does.

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use task_processor::pb;

use crate::{connection::DEFAULT_KEEPALIVE, errors::exit_codes_help};

/// The address used when neither --addr nor TASKCTL_ADDR is given.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:50051";

const ROOT_EXAMPLES: &str = "\
Examples:
  taskctl create report --kind sleep --data '{\"seconds\": 2}' --wait
  taskctl list --status running --status pending
  taskctl get 0190b4a4-5d3e-7f00-8000-000000000000 -o yaml
  taskctl --addr tasks.internal:50051 health";

/// taskctl: create, follow and manage tasks of a task-processor server.
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

    /// Reserved: connect with TLS. Not supported yet; using it is an error.
    #[arg(long, global = true)]
    pub tls: bool,

    /// Reserved: CA certificate for --tls. Not supported yet; using it is
    /// an error.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, or a key/value view for one task.
    Table,
    /// proto3 JSON: one object per answer; streams print one object per
    /// line.
    Json,
    /// The JSON value as YAML; streams print one document per message.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a task; with --wait, follow it to its end.
    #[command(after_help = "\
Examples:
  taskctl create hello
  taskctl create report --kind sleep --data '{\"seconds\": 1.5}' --timeout 30s --wait
  taskctl create import --data @input.json --label team=data --label env=dev
  echo '[1, 2, 3]' | taskctl create sum --kind echo --data - -o json
  taskctl create nightly --request-id nightly-2024-06-01   # safe to retry

Exit code with --wait: 0 completed, 3 failed, 4 cancelled.")]
    Create(CreateArgs),

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

    /// Follow a task live until it ends.
    #[command(after_help = "\
Examples:
  taskctl watch 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl watch 0190b4a4-5d3e-7f00-8000-000000000000 -o json   # one object per line

On a terminal a progress bar shows the task's progress and message;
otherwise one line per state. Exit code: 0 completed, 3 failed,
4 cancelled.")]
    Watch(TaskIdArgs),

    /// Cancel a pending or running task.
    #[command(after_help = "\
Examples:
  taskctl cancel 0190b4a4-5d3e-7f00-8000-000000000000

Prints the task as cancelled. Cancelling a cancelled task succeeds again;
a task that already completed or failed cannot be cancelled (exit 1).")]
    Cancel(TaskIdArgs),

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
    /// Human name of the task (1–200 characters).
    pub name: String,

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

    /// Idempotency key: repeating the create with the same key and
    /// parameters returns the same task.
    #[arg(long, value_name = "KEY")]
    pub request_id: Option<String>,

    /// Follow the task until it ends; the exit code tells how it ended.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task's id (a UUID).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks with this status; repeat for several (any of them).
    #[arg(long = "status", value_enum, ignore_case = true, value_name = "STATUS")]
    pub statuses: Vec<StatusFilter>,

    /// Only tasks with this label KEY=VALUE; repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Tasks per page (the server caps it at 1000; its default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub limit: Option<i32>,

    /// Start at this page (the token a previous list printed).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,

    /// Fetch every page and print all tasks together.
    #[arg(long)]
    pub all: bool,
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
}

impl From<StatusFilter> for pb::TaskStatus {
    fn from(filter: StatusFilter) -> Self {
        match filter {
            StatusFilter::Pending => Self::Pending,
            StatusFilter::Running => Self::Running,
            StatusFilter::Completed => Self::Completed,
            StatusFilter::Failed => Self::Failed,
            StatusFilter::Cancelled => Self::Cancelled,
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
