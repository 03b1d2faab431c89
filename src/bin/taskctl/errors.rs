//! What can go wrong in `taskctl`, and the exit code each outcome and error
//! maps to. The table of exit codes lives here, once: `--help` prints it
//! and `main` uses it, so the two cannot drift apart.
//!
//! Errors are written for the person at the terminal: each says what
//! happened in words they can act on, never a bare gRPC code.

use std::{fmt, io};

use tonic::{Code, Status};
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
    /// The command line was wrong (clap's own code for usage errors).
    Usage = 2,
    /// The task ended `FAILED` (`watch`, `create --wait`).
    TaskFailed = 3,
    /// The task ended `CANCELLED` (`watch`, `create --wait`).
    TaskCancelled = 4,
    /// No task (or health service) has that id or name.
    NotFound = 5,
    /// The server refused the request as invalid.
    InvalidArgument = 6,
    /// No server answers, it is shutting down, or it is not serving.
    Unavailable = 7,
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
        "usage error: bad flags, arguments or --data",
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
        "not found: no such task, or health service unknown",
    ),
    (
        ExitStatus::InvalidArgument,
        "invalid argument: the server refused a field",
    ),
    (
        ExitStatus::Unavailable,
        "unavailable: cannot connect, server shutting down, or not serving",
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

    #[error("health service {service:?} is not known to the server")]
    HealthServiceNotFound { service: String },

    #[error("invalid argument: {message}{}", Violations(field_violations))]
    InvalidArgument {
        message: String,
        field_violations: Vec<FieldViolation>,
    },

    #[error("server unavailable: {message}")]
    Unavailable { message: String },

    #[error("{service:?} is {status}, not SERVING")]
    NotServing { service: String, status: String },

    #[error("no answer within {timeout} (raise it with --call-timeout)")]
    DeadlineExceeded { timeout: String },

    #[error("task {task_id} has already finished: {message}")]
    TaskAlreadyFinished { task_id: String, message: String },

    #[error("the server refused: {code:?}: {message}")]
    Refused { code: Code, message: String },

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
            Self::TaskNotFound { .. } | Self::HealthServiceNotFound { .. } => ExitStatus::NotFound,
            Self::InvalidArgument { .. } => ExitStatus::InvalidArgument,
            Self::ConnectionRefused { .. }
            | Self::CannotConnect { .. }
            | Self::Unavailable { .. }
            | Self::NotServing { .. } => ExitStatus::Unavailable,
            Self::DeadlineExceeded { .. }
            | Self::TaskAlreadyFinished { .. }
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

    pub fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }

    /// Turns a status from a task RPC into an error a person can act on;
    /// `task_id` is the id the call was about, if any.
    pub fn from_task_status(status: Status, task_id: Option<&str>) -> Self {
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

    /// The mapping of gRPC status codes that do not depend on what was
    /// asked.
    pub fn from_status(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument {
                field_violations: field_violations(&status),
                message: status.message().to_owned(),
            },
            Code::Unavailable => Self::Unavailable {
                message: unavailable_message(&status),
            },
            code => Self::Refused {
                code,
                message: status.message().to_owned(),
            },
        }
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

/// Prints field violations one per line under the message.
struct Violations<'a>(&'a [FieldViolation]);

impl fmt::Display for Violations<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for violation in self.0 {
            write!(
                formatter,
                "\n  field {}: {}",
                violation.field, violation.description
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_status_is_in_the_table_once_and_in_the_help() {
        let help = exit_codes_help();
        for code in 0..=7u8 {
            let rows = EXIT_CODES
                .iter()
                .filter(|(status, _)| status.code() == code)
                .count();
            assert_eq!(rows, 1, "exit code {code}");
            assert!(help.contains(&format!("\n  {code}  ")), "{help}");
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let error = CliError::InvalidArgument {
            message: "name: must not be empty".into(),
            field_violations: vec![FieldViolation {
                field: "name".into(),
                description: "must not be empty".into(),
            }],
        };
        assert_eq!(
            error.to_string(),
            "invalid argument: name: must not be empty\n  field name: must not be empty"
        );
        assert_eq!(error.exit_status(), ExitStatus::InvalidArgument);
    }
}
