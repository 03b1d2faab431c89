//! What can go wrong in `taskctl`, and the exit code each outcome and error
//! maps to. The table of exit codes lives here, once: `--help` prints it
//! and `main` uses it, so the two cannot drift apart.
//!
//! Errors are written for the person at the terminal: each says what
//! happened in words they can act on, never a bare gRPC code.

use std::{fmt, io, time::Duration};

use task_processor::errors::error_chain;
use tonic::{Code, Status, TimeoutExpired};
use tonic_types::StatusExt;

/// The exit codes of `taskctl`. Scripts depend on these numbers: never
/// renumber one, only add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// The command did what was asked; for `watch` and `create --wait`,
    /// the task completed.
    Success = 0,
    /// Anything not listed below.
    OtherError = 1,
    /// The command line was wrong (clap's own code for usage errors), or
    /// the input it names (`--data`, a line of `--from-file`).
    Usage = 2,
    /// The task ended `FAILED` (`watch`, `create --wait`).
    TaskFailed = 3,
    /// The task ended `CANCELLED` (`watch`, `create --wait`).
    TaskCancelled = 4,
    /// No task or schedule (or health service) has that id or name.
    NotFound = 5,
    /// The server refused the request as invalid.
    InvalidArgument = 6,
    /// No server answers, the connection to it was lost, it is shutting
    /// down, or it is not serving.
    Unavailable = 7,
    /// The server's queue of waiting tasks is full; the same command may
    /// succeed later.
    ServerBusy = 8,
}

/// Every exit code with what it means, in the order `--help` shows them.
pub const EXIT_CODES: &[(ExitStatus, &str)] = &[
    (
        ExitStatus::Success,
        "success; for watch and create --wait: the task completed",
    ),
    (ExitStatus::OtherError, "any other error"),
    (
        ExitStatus::Usage,
        "usage error: bad flags, arguments, --data or a line of --from-file",
    ),
    (
        ExitStatus::TaskFailed,
        "the task failed (watch, create --wait)",
    ),
    (
        ExitStatus::TaskCancelled,
        "the task was cancelled (watch, create --wait)",
    ),
    (
        ExitStatus::NotFound,
        "not found: no such task or schedule, or health service unknown",
    ),
    (
        ExitStatus::InvalidArgument,
        "invalid argument: the server refused a field",
    ),
    (
        ExitStatus::Unavailable,
        "unavailable: cannot connect, connection lost, server shutting down, or not serving",
    ),
    (
        ExitStatus::ServerBusy,
        "the server is busy (queue or memory budget full); retry later",
    ),
];

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

/// The exit-code table as `--help` prints it.
pub fn exit_codes_help() -> String {
    let mut help = String::from("Exit codes:\n");
    for (status, meaning) in EXIT_CODES {
        help.push_str(&format!("  {}  {meaning}\n", status.code()));
    }
    help.push_str(
        "  get, list and cancel exit 0 whatever the task's status; only watch and\n  \
         create --wait turn the final status into the exit code.",
    );
    help
}

/// One broken rule the server named in a `google.rpc.BadRequest` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Why a `taskctl` command did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something in the command line clap could not check by itself.
    #[error("{0}")]
    Usage(String),

    #[error("no server at {address} (connection refused) — is task-processor running?")]
    ConnectionRefused { address: String },

    #[error("cannot connect to {address}: {reason}")]
    CannotConnect { address: String, reason: String },

    #[error("task {task_id} not found")]
    TaskNotFound { task_id: String },

    #[error("schedule {schedule_id} not found")]
    ScheduleNotFound { schedule_id: String },

    #[error("health service {service:?} is not known to the server")]
    HealthServiceNotFound { service: String },

    /// The violations name the fields; the message is shown only when
    /// there are none, since the server's message repeats them.
    #[error("invalid argument{}", InvalidArgumentText { message, field_violations })]
    InvalidArgument {
        message: String,
        field_violations: Vec<FieldViolation>,
    },

    #[error("server unavailable: {message}")]
    Unavailable { message: String },

    /// The connection broke under a call or a watch: the server died,
    /// froze (keepalive pings went unanswered), or the connection or the
    /// stream was cut. `reason` is the transport's, in its words.
    #[error("the connection to the server was lost: {reason}")]
    ConnectionLost { reason: String },

    #[error("{service:?} is {status}, not SERVING")]
    NotServing { service: String, status: String },

    /// The call's deadline passed, whichever side noticed it first.
    #[error("no answer within {timeout} (raise it with --call-timeout)")]
    DeadlineExceeded { timeout: String },

    /// `message` is the server's, which usually names the task itself.
    #[error("{}", already_finished_text(task_id, message))]
    TaskAlreadyFinished { task_id: String, message: String },

    /// A delete of a task that is still pending, running or retrying
    /// (`FAILED_PRECONDITION`); the server's message says the same, this
    /// also says how.
    #[error(
        "task {task_id} has not finished, so it cannot be deleted; cancel it first \
         (taskctl cancel {task_id}) or wait until it ends"
    )]
    TaskNotFinished { task_id: String },

    /// A create reused an idempotency key with other parameters.
    #[error(
        "--request-id {request_id:?} was already used to create a task with other parameters; \
         repeat that create exactly to get its task, or choose a new --request-id"
    )]
    RequestIdReused { request_id: String },

    /// `RESOURCE_EXHAUSTED` with a `RetryInfo`: the queue of waiting tasks,
    /// or the memory budget for their data, is full for now. `reason` is
    /// the server's, without its own "retry in" (said here in words).
    #[error("the server is busy: {reason}; {}", RetryText(*retry_after))]
    ServerBusy {
        reason: String,
        retry_after: Option<Duration>,
    },

    /// Any other refusal; `reason` puts the status code in words.
    #[error("{reason}{}", MessageText(message))]
    Refused {
        reason: &'static str,
        message: String,
    },

    /// A call of `create --from-file` failed: said in the file's lines,
    /// with what the calls before it created. Exits as its cause.
    #[error("{0}")]
    BatchFailed(Box<crate::from_file::BatchFailure>),

    /// The server answered something that breaks the contract.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),

    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    /// The output could not be rendered; a bug or a message the descriptor
    /// set does not describe.
    #[error("cannot print the answer: {0}")]
    Render(String),
}

impl CliError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Usage(_) => ExitStatus::Usage,
            Self::TaskNotFound { .. }
            | Self::ScheduleNotFound { .. }
            | Self::HealthServiceNotFound { .. } => ExitStatus::NotFound,
            Self::InvalidArgument { .. } => ExitStatus::InvalidArgument,
            Self::ConnectionRefused { .. }
            | Self::CannotConnect { .. }
            | Self::Unavailable { .. }
            | Self::ConnectionLost { .. }
            | Self::NotServing { .. } => ExitStatus::Unavailable,
            Self::ServerBusy { .. } => ExitStatus::ServerBusy,
            Self::BatchFailed(failure) => failure.cause().exit_status(),
            Self::DeadlineExceeded { .. }
            | Self::TaskAlreadyFinished { .. }
            | Self::TaskNotFinished { .. }
            | Self::RequestIdReused { .. }
            | Self::Refused { .. }
            | Self::Protocol(_)
            | Self::Io { .. }
            | Self::Render(_) => ExitStatus::OtherError,
        }
    }

    /// True when stdout was closed under us (`taskctl list | head`): not
    /// worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    /// Tells the person on stderr, after `taskctl:`; nothing when stdout's
    /// reader left.
    pub fn report(&self) {
        if !self.is_broken_pipe() {
            eprintln!("taskctl: {self}");
        }
    }

    pub fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }

    /// Turns a status from a task RPC into an error a person can act on;
    /// `task_id` is the id the call was about, if any.
    pub fn from_task_status(status: Status, task_id: Option<&str>) -> Self {
        if let Some(lost) = connection_lost(&status) {
            return lost;
        }
        match (status.code(), task_id) {
            (Code::NotFound, Some(task_id)) => Self::TaskNotFound {
                task_id: task_id.to_owned(),
            },
            (Code::FailedPrecondition, Some(task_id)) => Self::TaskAlreadyFinished {
                task_id: task_id.to_owned(),
                message: status.message().to_owned(),
            },
            _ => Self::from_status(status),
        }
    }

    /// Turns a status from a schedule RPC into an error a person can act
    /// on; `schedule_id` is the id the call was about, if any.
    pub fn from_schedule_status(status: Status, schedule_id: Option<&str>) -> Self {
        if let Some(lost) = connection_lost(&status) {
            return lost;
        }
        match (status.code(), schedule_id) {
            (Code::NotFound, Some(schedule_id)) => Self::ScheduleNotFound {
                schedule_id: schedule_id.to_owned(),
            },
            _ => Self::from_status(status),
        }
    }

    /// Turns a status from `DeleteTask` into an error a person can act on:
    /// `FAILED_PRECONDITION` there means the task has not finished.
    pub fn from_delete_status(status: Status, task_id: &str) -> Self {
        if status.code() == Code::FailedPrecondition && connection_lost(&status).is_none() {
            return Self::TaskNotFinished {
                task_id: task_id.to_owned(),
            };
        }
        Self::from_task_status(status, Some(task_id))
    }

    /// Turns a status from `CreateTask` into an error a person can act on;
    /// `request_id` is the `--request-id` sent, if any.
    pub fn from_create_status(status: Status, request_id: Option<&str>) -> Self {
        if let Some(lost) = connection_lost(&status) {
            return lost;
        }
        match (status.code(), request_id) {
            (Code::AlreadyExists, Some(request_id)) => Self::RequestIdReused {
                request_id: request_id.to_owned(),
            },
            _ => Self::from_status(status),
        }
    }

    /// The mapping of gRPC status codes that do not depend on what was
    /// asked.
    pub fn from_status(status: Status) -> Self {
        if let Some(lost) = connection_lost(&status) {
            return lost;
        }
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument {
                field_violations: field_violations(&status),
                message: status.message().to_owned(),
            },
            Code::Unavailable => Self::Unavailable {
                message: unavailable_message(&status),
            },
            // Busy only when the server says when to retry: a request over
            // the size limit is RESOURCE_EXHAUSTED too, and retrying it is
            // pointless.
            Code::ResourceExhausted => match status.get_details_retry_info() {
                Some(retry_info) => Self::ServerBusy {
                    reason: without_retry_hint(status.message()).to_owned(),
                    retry_after: retry_info.retry_delay,
                },
                None => Self::Refused {
                    reason: code_in_words(Code::ResourceExhausted),
                    message: status.message().to_owned(),
                },
            },
            code => Self::Refused {
                reason: code_in_words(code),
                message: status.message().to_owned(),
            },
        }
    }
}

/// True when the status says the call's deadline passed: `DEADLINE_EXCEEDED`,
/// or the `CANCELLED` "Timeout expired" that tonic answers with — both its
/// server and its own client side — when a `grpc-timeout` runs out.
pub fn is_deadline_exceeded(status: &Status) -> bool {
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Cancelled => status.message() == TimeoutExpired(()).to_string(),
        _ => false,
    }
}

/// The one place that tells a broken connection from an answer: `Some`
/// when tonic made the status from a failure of the transport under the
/// call rather than receiving it from the server.
///
/// A status the server sends (in trailers or headers) never carries a
/// source error; one tonic makes locally from hyper, h2 or I/O does:
/// connection reset, broken pipe, "error reading a body from connection",
/// GOAWAY, a stream reset by the server, keepalive pings unanswered, the
/// connection closed before the answer. tonic gives these varied codes
/// (`UNKNOWN`, `INTERNAL`, `CANCELLED`, `UNAVAILABLE`), all of which mean
/// the same to a person: the server can no longer be heard. Matching on
/// the source rather than on hyper's and h2's types keeps taskctl free of
/// those crates' versions, and rather than on their messages keeps it
/// free of their wording. Our own deadline (tonic's `TimeoutExpired`)
/// also has a source, and stays a timeout.
fn connection_lost(status: &Status) -> Option<CliError> {
    let source = std::error::Error::source(status)?;
    if is_deadline_exceeded(status) || chain_has::<TimeoutExpired>(source) {
        return None;
    }
    Some(CliError::ConnectionLost {
        reason: lost_connection_reason(status, source),
    })
}

/// Whether an error of type `E` is among `error` and its causes.
fn chain_has<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current.is::<E>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// What broke, without tonic's wrapping (`h2 protocol error: `, `status:
/// Unknown, message: …`): the causes' own words, joined on one line.
fn lost_connection_reason(status: &Status, source: &(dyn std::error::Error + 'static)) -> String {
    let reason = error_chain(source).replace('\n', " ");
    if reason.trim().is_empty() {
        status.message().replace('\n', " ")
    } else {
        reason
    }
}

/// A status code in words, for refusals that have no better description.
fn code_in_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "the server answered with an error that says OK",
        Code::Cancelled => "the call was cancelled",
        Code::Unknown => "the server failed",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "the call took too long",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "the server is out of resources",
        Code::FailedPrecondition => "not possible in the current state",
        Code::Aborted => "the call was aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "the server does not offer this call (another version?)",
        Code::Internal => "the server failed (internal error)",
        Code::Unavailable => "server unavailable",
        Code::DataLoss => "data was lost",
        Code::Unauthenticated => "not authenticated",
    }
}

/// The error of a cancel refused because the task has finished, naming the
/// task once whether or not the server's message already does.
fn already_finished_text(task_id: &str, message: &str) -> String {
    if message.is_empty() {
        format!("task {task_id} has already finished and cannot be cancelled")
    } else if message.contains(task_id) {
        message.to_owned()
    } else {
        format!("task {task_id} cannot be cancelled: {message}")
    }
}

/// The field violations of the status's `google.rpc.BadRequest` detail.
fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| FieldViolation {
                    field: violation.field,
                    description: violation.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The flag or argument of `taskctl` that sets a request field, so the
/// person knows what to change; `None` for fields `taskctl` does not know.
fn flag_of_field(field: &str) -> Option<&'static str> {
    // `labels["a b"]` and the like: the field is the part before any index;
    // of a nested field, the retry policy's are known, else its top field.
    let field = field.split('[').next().unwrap_or(field);
    // A schedule's template is a create request: its fields are set by
    // the flags of `create`, which `schedule create` shares.
    if let Some(template_field) = field.strip_prefix("task.") {
        return flag_of_field(template_field);
    }
    Some(match field {
        "retry_policy.max_attempts" => "--max-attempts",
        "retry_policy.initial_backoff" => "--backoff",
        "retry_policy.max_backoff" => "--max-backoff",
        "retry_policy.backoff_multiplier" => "--backoff-multiplier",
        _ => match field.split('.').next().unwrap_or(field) {
            "name" => "NAME",
            "id" => "ID",
            "description" => "--description",
            "kind" => "--kind",
            "data" => "--data",
            "labels" => "--label",
            "timeout_seconds" => "--timeout",
            "request_id" => "--request-id",
            "run_after" => "--run-after or --in",
            "priority" => "--priority",
            "queue_timeout_seconds" => "--queue-timeout",
            "page_size" => "--limit",
            "page_token" => "--page-token",
            "statuses" => "--status",
            "cron" => "--cron",
            "time_zone" => "--time-zone",
            "overlap" => "--overlap",
            _ => return None,
        },
    })
}

/// A status made by tonic for a broken connection has a terse message; the
/// cause underneath says more.
fn unavailable_message(status: &Status) -> String {
    let mut message = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = error.source();
    }
    message
}

/// `: field kind (--kind): …` for one violation, one line per violation
/// for several, `: message` for none.
struct InvalidArgumentText<'a> {
    message: &'a str,
    field_violations: &'a [FieldViolation],
}

impl fmt::Display for InvalidArgumentText<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field_violations {
            [] => write!(formatter, "{}", MessageText(self.message)),
            [violation] => write!(formatter, ": {}", ViolationText(violation)),
            violations => {
                formatter.write_str(":")?;
                for violation in violations {
                    write!(formatter, "\n  {}", ViolationText(violation))?;
                }
                Ok(())
            }
        }
    }
}

/// `field kind (--kind): "resize" is not a registered kind`.
struct ViolationText<'a>(&'a FieldViolation);

impl fmt::Display for ViolationText<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FieldViolation { field, description } = self.0;
        write!(formatter, "field {field}")?;
        if let Some(flag) = flag_of_field(field) {
            write!(formatter, " ({flag})")?;
        }
        write!(formatter, ": {description}")
    }
}

/// `: message`, or nothing when the server sent no message.
struct MessageText<'a>(&'a str);

impl fmt::Display for MessageText<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(formatter, ": {}", self.0)
        }
    }
}

/// The server's message without the "; retry in 1000ms" it ends with.
fn without_retry_hint(message: &str) -> &str {
    message
        .rsplit_once("; retry in ")
        .map_or(message, |(reason, _)| reason)
}

/// `retry in 1s`, from the server's `google.rpc.RetryInfo`.
struct RetryText(Option<Duration>);

impl fmt::Display for RetryText {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(delay) if !delay.is_zero() => {
                write!(formatter, "retry in {}", humantime::format_duration(delay))
            }
            _ => formatter.write_str("retry later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn every_exit_status_is_in_the_table_once_and_in_the_help() {
        let help = exit_codes_help();
        let highest = EXIT_CODES
            .iter()
            .map(|(status, _)| status.code())
            .max()
            .unwrap_or_default();
        assert_eq!(highest, ExitStatus::ServerBusy.code());
        for code in 0..=highest {
            let rows = EXIT_CODES
                .iter()
                .filter(|(status, _)| status.code() == code)
                .count();
            assert_eq!(rows, 1, "exit code {code}");
            assert!(help.contains(&format!("\n  {code}  ")), "{help}");
        }
    }

    #[test]
    fn scheduling_fields_name_their_flags() {
        for (field, flag) in [
            ("retry_policy.max_attempts", "--max-attempts"),
            ("retry_policy.initial_backoff", "--backoff"),
            ("retry_policy.max_backoff", "--max-backoff"),
            ("retry_policy.backoff_multiplier", "--backoff-multiplier"),
            ("run_after", "--run-after or --in"),
            ("priority", "--priority"),
            ("queue_timeout_seconds", "--queue-timeout"),
            ("labels[\"a b\"]", "--label"),
        ] {
            assert_eq!(flag_of_field(field), Some(flag), "{field}");
        }
        assert_eq!(flag_of_field("retry_policy.jitter"), None);
    }

    #[test]
    fn schedule_fields_and_their_templates_name_their_flags() {
        for (field, flag) in [
            ("cron", "--cron"),
            ("time_zone", "--time-zone"),
            ("overlap", "--overlap"),
            ("task.name", "NAME"),
            ("task.kind", "--kind"),
            ("task.labels[\"a b\"]", "--label"),
            ("task.retry_policy.max_backoff", "--max-backoff"),
        ] {
            assert_eq!(flag_of_field(field), Some(flag), "{field}");
        }
        assert_eq!(flag_of_field("task"), None);
        let missing = CliError::from_schedule_status(Status::not_found("gone"), Some("42"));
        assert_eq!(missing.to_string(), "schedule 42 not found");
        assert_eq!(missing.exit_status(), ExitStatus::NotFound);
        let listed = CliError::from_schedule_status(Status::not_found("gone"), None);
        assert_eq!(listed.exit_status(), ExitStatus::OtherError);
    }

    #[test]
    fn invalid_argument_names_the_field_once() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "kind: \"resize\" is not a registered kind",
            ErrorDetails::with_bad_request_violation("kind", "\"resize\" is not a registered kind"),
        );
        let error = CliError::from_status(status);
        assert_eq!(
            error.to_string(),
            "invalid argument: field kind (--kind): \"resize\" is not a registered kind"
        );
        assert_eq!(error.exit_status(), ExitStatus::InvalidArgument);

        let several = CliError::InvalidArgument {
            message: "two problems".into(),
            field_violations: vec![
                FieldViolation {
                    field: "labels".into(),
                    description: "key \"a b\" may only hold a-z".into(),
                },
                FieldViolation {
                    field: "shoe_size".into(),
                    description: "must be positive".into(),
                },
            ],
        };
        assert_eq!(
            several.to_string(),
            "invalid argument:\n  field labels (--label): key \"a b\" may only hold a-z\n  \
             field shoe_size: must be positive"
        );
        let bare = CliError::from_status(Status::invalid_argument("no details"));
        assert_eq!(bare.to_string(), "invalid argument: no details");
    }

    #[test]
    fn timeouts_from_either_side_are_deadlines() {
        assert!(is_deadline_exceeded(&Status::deadline_exceeded("late")));
        // What tonic's server and client answer when a grpc-timeout runs out.
        let tonic_timeout = Status::from_error(Box::new(TimeoutExpired(())));
        assert_eq!(tonic_timeout.code(), Code::Cancelled);
        assert!(is_deadline_exceeded(&tonic_timeout));
        assert!(!is_deadline_exceeded(&Status::cancelled(
            "the client went away"
        )));
        assert!(!is_deadline_exceeded(&Status::internal("Timeout expired")));
    }

    #[test]
    fn a_broken_connection_is_unavailable_in_plain_words() {
        // What tonic makes of a transport failure: a local error as the
        // source, whatever the code.
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        let lost = CliError::from_task_status(Status::from_error(Box::new(reset)), Some("42"));
        assert_eq!(
            lost.to_string(),
            "the connection to the server was lost: connection reset by peer"
        );
        assert_eq!(lost.exit_status(), ExitStatus::Unavailable);
        let mut with_cause = Status::internal("h2 protocol error: error reading a body");
        with_cause.set_source(std::sync::Arc::new(io::Error::other("line one\nline two")));
        let lost = CliError::from_status(with_cause);
        assert_eq!(
            lost.to_string(),
            "the connection to the server was lost: line one line two"
        );

        // Our own deadline has a source too, and is not a lost connection.
        let timeout = Status::from_error(Box::new(TimeoutExpired(())));
        assert!(connection_lost(&timeout).is_none());
        // What the server says, it says: no source.
        let shutting_down = CliError::from_status(Status::unavailable("shutting down"));
        assert_eq!(
            shutting_down.to_string(),
            "server unavailable: shutting down"
        );
        let failed = CliError::from_status(Status::internal("handler panicked"));
        assert_eq!(failed.exit_status(), ExitStatus::OtherError);
    }

    #[test]
    fn a_full_queue_says_when_to_retry() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "the queue is full: 3 tasks are waiting; retry in 1000ms",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        );
        let error = CliError::from_status(status);
        assert_eq!(
            error.to_string(),
            "the server is busy: the queue is full: 3 tasks are waiting; retry in 1s"
        );
        assert_eq!(error.exit_status(), ExitStatus::ServerBusy);
        // Without RetryInfo (a request over the size limit): not busy, and
        // no advice to retry.
        let too_big = CliError::from_status(Status::resource_exhausted(
            "the request message is 9 bytes, more than this server's limit of 8 bytes",
        ));
        assert_ne!(too_big.exit_status(), ExitStatus::ServerBusy);
        assert!(!too_big.to_string().contains("retry"), "{too_big}");
        assert!(
            too_big.to_string().contains("limit of 8 bytes"),
            "{too_big}"
        );
    }

    #[test]
    fn refusals_are_told_in_words_once() {
        let reused = CliError::from_create_status(
            Status::already_exists("request_id \"k\" was already used with different parameters"),
            Some("k"),
        );
        let text = reused.to_string();
        assert!(
            text.starts_with("--request-id \"k\" was already used"),
            "{text}"
        );
        assert!(text.contains("choose a new --request-id"), "{text}");

        let finished = CliError::from_task_status(
            Status::failed_precondition("task 42 is already completed and cannot be cancelled"),
            Some("42"),
        );
        assert_eq!(
            finished.to_string(),
            "task 42 is already completed and cannot be cancelled"
        );
        let terse = CliError::from_task_status(Status::failed_precondition(""), Some("42"));
        assert_eq!(
            terse.to_string(),
            "task 42 has already finished and cannot be cancelled"
        );
        let running = CliError::from_delete_status(
            Status::failed_precondition("task 42 is running, not finished"),
            "42",
        );
        assert_eq!(
            running.to_string(),
            "task 42 has not finished, so it cannot be deleted; cancel it first \
             (taskctl cancel 42) or wait until it ends"
        );
        assert_eq!(running.exit_status(), finished.exit_status());
        let missing = CliError::from_delete_status(Status::not_found("no"), "42");
        assert_eq!(missing.exit_status(), ExitStatus::NotFound);

        for code in [
            Code::Internal,
            Code::Unimplemented,
            Code::Cancelled,
            Code::AlreadyExists,
        ] {
            let text = CliError::from_status(Status::new(code, "details")).to_string();
            assert!(!text.contains(&format!("{code:?}")), "{text}");
            assert!(text.ends_with(": details"), "{text}");
        }
    }
}
