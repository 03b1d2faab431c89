//! `taskctl create --from-file FILE`: one task per line of a JSON Lines
//! file (or stdin, `-`), each line a `CreateTaskRequest` in proto3 JSON,
//! sent with `BatchCreateTasks`.
//!
//! Every line is read and checked before anything is sent, so a typo on
//! line 900 creates nothing. The lines then go in calls of at most 1000
//! requests (the server's limit) and [`MAX_CALL_BYTES`], in file order;
//! each call is all or nothing, the file as a whole is not. What the
//! server refuses is told in the file's terms: `requests[i].<field>` of a
//! call becomes the line it came from, and a failed call says which lines
//! it held, which were created before it and which were never sent.
//!
//! Not here: the flags (`cli`), the connection and deadlines (`commands`'
//! `Session`), how tasks are printed (`output`, `proto_json`).

use std::{
    fmt,
    io::{BufRead, BufReader},
    ops::Range,
    path::Path,
    time::SystemTime,
};

use prost::Message;
use task_processor::pb;

use crate::{
    commands::{Outcome, Session},
    errors::{CliError, FieldViolation},
    output,
    proto_json::{self, ProtoJson},
};

/// The most requests one `BatchCreateTasks` may carry (the contract's).
pub const MAX_CALL_REQUESTS: usize = 1000;

/// The most bytes of requests one call carries. The server takes messages
/// of up to its `max_data_bytes` plus 1 MiB, so 1 MiB fits every server
/// whatever its settings, while 1000 tasks with a few KiB of data each
/// would not. A single line larger than this is sent alone, and judged by
/// the server like any create.
pub const MAX_CALL_BYTES: usize = 1024 * 1024;

/// One task of the file: the request and the line it was on.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLine {
    /// 1-based, counting blank lines too, as an editor does.
    pub line: usize,
    pub request: pb::CreateTaskRequest,
}

/// Runs `create --from-file`: reads and checks every line, then creates
/// the tasks call by call and prints those created, also when a later
/// call fails.
pub async fn create_tasks(session: &Session, path: &Path) -> Result<Outcome, CliError> {
    let source = Source::of(path);
    let task_lines = read_task_lines(&source, path)?;
    let calls = split_into_calls(&task_lines);
    let mut client = session.tasks().await?;
    let mut created: Vec<pb::Task> = Vec::with_capacity(task_lines.len());
    for call in &calls {
        let in_call = &task_lines[call.clone()];
        let request = pb::BatchCreateTasksRequest {
            requests: in_call.iter().map(|line| line.request.clone()).collect(),
        };
        let answer = session
            .unary(
                client.batch_create_tasks(session.request(request)),
                |status| CliError::from_create_status(status, None),
            )
            .await;
        let failure = match answer {
            Ok(response) if response.tasks.len() == in_call.len() => {
                created.extend(response.tasks);
                continue;
            }
            Ok(response) => CliError::Protocol(format!(
                "BatchCreateTasks answered {} tasks for the {} requests of {}",
                response.tasks.len(),
                in_call.len(),
                LineSpan::of(in_call)
            )),
            Err(cause) => cause,
        };
        // What the earlier calls created is real: shown before the error.
        print_created(session, created)?;
        return Err(CliError::BatchFailed(Box::new(BatchFailure::new(
            &source,
            &task_lines,
            call.clone(),
            failure,
        ))));
    }
    print_created(session, created)?;
    Ok(Outcome::Success)
}

/// The tasks as `list` prints several: a table, or one message holding
/// them all (`BatchCreateTasksResponse`, as for one call). Nothing when
/// none was created.
fn print_created(session: &Session, tasks: Vec<pb::Task>) -> Result<(), CliError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let response = pb::BatchCreateTasksResponse { tasks };
    session
        .printer
        .print_message(&response, proto_json::BATCH_CREATE_TASKS_RESPONSE, || {
            output::task_table(&response.tasks, SystemTime::now())
        })
}

/// Where the lines come from, as errors name it: the flag as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    name: String,
}

impl Source {
    pub fn of(path: &Path) -> Self {
        let name = if path == Path::new("-") {
            "--from-file - (stdin)".to_owned()
        } else {
            format!("--from-file {}", path.display())
        };
        Self { name }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.name)
    }
}

/// Reads the file (or stdin for `-`) whole, and parses every line.
fn read_task_lines(source: &Source, path: &Path) -> Result<Vec<TaskLine>, CliError> {
    let cannot_read =
        |error: std::io::Error| CliError::Usage(format!("{source}: cannot read it: {error}"));
    if path == Path::new("-") {
        parse_task_lines(source, std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(cannot_read)?;
        parse_task_lines(source, BufReader::new(file))
    }
}

/// Every non-blank line as a `CreateTaskRequest`; the first line that is
/// not one is a usage error naming its number. At least one task.
pub fn parse_task_lines(source: &Source, reader: impl BufRead) -> Result<Vec<TaskLine>, CliError> {
    let proto_json = ProtoJson::new()?;
    let mut task_lines = Vec::new();
    for (index, text) in reader.lines().enumerate() {
        let line = index + 1;
        let text = text.map_err(|error| {
            CliError::Usage(format!("{source}, line {line}: cannot read it: {error}"))
        })?;
        // A last newline, or lines left blank to group tasks, are no tasks.
        if text.trim().is_empty() {
            continue;
        }
        let request = proto_json
            .read_json(&text, proto_json::CREATE_TASK_REQUEST)
            .map_err(|problem| {
                CliError::Usage(format!(
                    "{source}, line {line}: not a CreateTaskRequest in proto3 JSON: {problem}"
                ))
            })?;
        task_lines.push(TaskLine { line, request });
    }
    if task_lines.is_empty() {
        return Err(CliError::Usage(format!(
            "{source} holds no tasks: give one CreateTaskRequest in proto3 JSON a line, \
             e.g. {{\"name\": \"a\", \"kind\": \"echo\"}}"
        )));
    }
    Ok(task_lines)
}

/// Cuts the tasks, in order, into the index ranges of one call each: at
/// most [`MAX_CALL_REQUESTS`] requests and [`MAX_CALL_BYTES`] bytes, but
/// at least one request.
pub fn split_into_calls(task_lines: &[TaskLine]) -> Vec<Range<usize>> {
    let mut calls = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, task_line) in task_lines.iter().enumerate() {
        // As a `repeated` field entry: its tag and length prefix too.
        let size = task_line.request.encoded_len()
            + 1
            + prost::length_delimiter_len(task_line.request.encoded_len());
        let full = index - start == MAX_CALL_REQUESTS || bytes + size > MAX_CALL_BYTES;
        if index > start && full {
            calls.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += size;
    }
    calls.push(start..task_lines.len());
    calls
}

/// The lines of some tasks of the file: `line 7`, `lines 1-1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineSpan {
    first: usize,
    last: usize,
}

impl LineSpan {
    /// The span from the first task's line to the last's; `task_lines` is
    /// never empty where this is used (a call holds at least one task).
    fn of(task_lines: &[TaskLine]) -> Self {
        let line_of = |task_line: Option<&TaskLine>| task_line.map_or(0, |task| task.line);
        Self {
            first: line_of(task_lines.first()),
            last: line_of(task_lines.last()),
        }
    }
}

impl fmt::Display for LineSpan {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(formatter, "line {}", self.first)
        } else {
            write!(formatter, "lines {}-{}", self.first, self.last)
        }
    }
}

/// A call of `create --from-file` that failed, in the file's terms: the
/// lines it held, the line the server refused if it named one, what the
/// calls before it created, and the lines never sent.
#[derive(Debug)]
pub struct BatchFailure {
    source: Source,
    call: LineSpan,
    /// The line whose request broke a rule, and the rule, its field named
    /// as in the file (`timeoutSeconds`), not as `requests[i].<field>`.
    refused_line: Option<(usize, FieldViolation)>,
    /// The lines the earlier calls created, and how many tasks.
    created_before: Option<(LineSpan, usize)>,
    not_sent: Option<LineSpan>,
    /// Why the call failed; it decides the exit status.
    cause: CliError,
}

impl BatchFailure {
    /// The failure of the call that held `task_lines[call]`.
    fn new(source: &Source, task_lines: &[TaskLine], call: Range<usize>, cause: CliError) -> Self {
        let in_call = &task_lines[call.clone()];
        let before = &task_lines[..call.start];
        let after = &task_lines[call.end..];
        Self {
            source: source.clone(),
            call: LineSpan::of(in_call),
            refused_line: refused_line(in_call, &cause),
            created_before: (!before.is_empty()).then(|| (LineSpan::of(before), before.len())),
            not_sent: (!after.is_empty()).then(|| LineSpan::of(after)),
            cause,
        }
    }

    pub fn cause(&self) -> &CliError {
        &self.cause
    }

    /// Whether the server's answer says the call created nothing: not so
    /// when no answer came (a deadline, a lost connection), since the
    /// call may have been carried out all the same.
    fn nothing_created(&self) -> bool {
        !matches!(
            self.cause,
            CliError::DeadlineExceeded { .. } | CliError::ConnectionLost { .. }
        )
    }
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = &self.source;
        match &self.refused_line {
            Some((line, violation)) => write!(
                formatter,
                "{source}, line {line}: invalid argument: field {}: {}",
                violation.field, violation.description
            )?,
            None => write!(formatter, "{source}, {}: {}", self.call, self.cause)?,
        }
        if self.nothing_created() {
            write!(
                formatter,
                "\n  nothing was created from {} (one call, all or nothing)",
                self.call
            )?;
        } else {
            write!(
                formatter,
                "\n  {} (one call, all or nothing) got no answer: its tasks may or may not \
                 have been created",
                self.call
            )?;
        }
        if let Some((lines, count)) = self.created_before {
            let tasks = if count == 1 { "task" } else { "tasks" };
            write!(
                formatter,
                "\n  created by the calls before: {lines}, {count} {tasks} (printed)"
            )?;
        }
        if let Some(lines) = self.not_sent {
            write!(formatter, "\n  not sent: {lines}")?;
        }
        Ok(())
    }
}

/// The line of the request the server named (`requests[i].<field>`), with
/// the field as the file spells it, when `cause` names one of this call.
fn refused_line(in_call: &[TaskLine], cause: &CliError) -> Option<(usize, FieldViolation)> {
    let CliError::InvalidArgument {
        field_violations, ..
    } = cause
    else {
        return None;
    };
    field_violations.iter().find_map(|violation| {
        let rest = violation.field.strip_prefix("requests[")?;
        let (index, field) = rest.split_once("].")?;
        let task_line = in_call.get(index.parse::<usize>().ok()?)?;
        Some((
            task_line.line,
            FieldViolation {
                field: json_field_path(field),
                description: violation.description.clone(),
            },
        ))
    })
}

/// A field path as the server names it (`retry_policy.max_attempts`,
/// `labels["a_b"]`) in proto3 JSON's lowerCamelCase (`retryPolicy.maxAttempts`),
/// leaving what is in brackets (a map key) as it is.
fn json_field_path(field: &str) -> String {
    let mut path = String::with_capacity(field.len());
    let mut in_brackets = false;
    let mut upper_next = false;
    for character in field.chars() {
        match character {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            '_' if !in_brackets => {
                upper_next = true;
                continue;
            }
            _ => {}
        }
        if upper_next && !in_brackets {
            path.extend(character.to_uppercase());
        } else {
            path.push(character);
        }
        upper_next = false;
    }
    path
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use task_processor::api::json::json_from_proto;

    use super::*;

    fn source() -> Source {
        Source::of(Path::new("tasks.jsonl"))
    }

    fn parse(text: &str) -> Result<Vec<TaskLine>, CliError> {
        parse_task_lines(&source(), text.as_bytes())
    }

    fn lines_of(count: usize, data_bytes: usize) -> Vec<TaskLine> {
        (1..=count)
            .map(|line| TaskLine {
                line,
                request: pb::CreateTaskRequest {
                    name: format!("task {line}"),
                    description: "x".repeat(data_bytes),
                    ..Default::default()
                },
            })
            .collect()
    }

    #[test]
    fn every_line_is_a_create_request_in_proto3_json() {
        let task_lines = parse(concat!(
            r#"{"name": "a", "kind": "echo", "data": {"n": [1, "x"]}, "labels": {"team": "ops"}}"#,
            "\n\n   \n",
            r#"{"name": "b", "timeoutSeconds": 30, "retry_policy": {"maxAttempts": 3}, "runAfter": "2026-12-03T18:00:00Z"}"#,
            "\r\n",
        ))
        .expect("valid");
        assert_eq!(
            task_lines.iter().map(|task| task.line).collect::<Vec<_>>(),
            [1, 4],
            "blank lines are skipped but counted"
        );
        let first = &task_lines[0].request;
        assert_eq!((first.name.as_str(), first.kind.as_str()), ("a", "echo"));
        assert_eq!(
            first
                .data
                .as_ref()
                .map(json_from_proto)
                .and_then(Result::ok),
            Some(json!({"n": [1, "x"]}))
        );
        assert_eq!(first.labels.get("team").map(String::as_str), Some("ops"));
        let second = &task_lines[1].request;
        assert_eq!(second.timeout_seconds, 30);
        assert_eq!(
            second
                .retry_policy
                .as_ref()
                .map(|policy| policy.max_attempts),
            Some(3)
        );
        assert_eq!(
            second.run_after,
            Some(prost_types::Timestamp {
                seconds: 1_796_320_800,
                nanos: 0
            })
        );
    }

    #[test]
    fn a_bad_line_is_a_usage_error_naming_its_number() {
        for (text, line, problem) in [
            ("{\"name\": \"a\"}\n{\"name\": \"b\"", 2, "EOF"),
            ("{\"name\": \"a\"}\n\n{\"nmae\": \"b\"}", 3, "nmae"),
            ("{\"name\": \"a\"} {\"name\": \"b\"}", 1, "trailing"),
            ("[1, 2]", 1, "invalid type"),
            ("{\"name\": 7}", 1, "invalid type"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(matches!(error, CliError::Usage(_)), "{error}");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!(
                    "--from-file tasks.jsonl, line {line}: not a CreateTaskRequest"
                )),
                "{message}"
            );
            assert!(message.contains(problem), "{problem} in {message}");
            assert!(!message.contains("at line 1"), "{message}");
        }
        let empty = parse("\n  \n").expect_err("no tasks");
        assert!(empty.to_string().contains("holds no tasks"), "{empty}");
        let stdin = Source::of(Path::new("-"));
        let error = parse_task_lines(&stdin, "{".as_bytes()).expect_err("bad");
        assert!(
            error
                .to_string()
                .starts_with("--from-file - (stdin), line 1: "),
            "{error}"
        );
    }

    #[test]
    fn calls_hold_at_most_1000_requests_and_a_mebibyte() {
        let spans = |calls: Vec<Range<usize>>| {
            calls
                .into_iter()
                .map(|call| (call.start, call.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(split_into_calls(&lines_of(3, 0))), [(0, 3)]);
        assert_eq!(
            spans(split_into_calls(&lines_of(2500, 0))),
            [(0, 1000), (1000, 2000), (2000, 2500)]
        );
        assert_eq!(spans(split_into_calls(&lines_of(1000, 0))), [(0, 1000)]);
        // 4 KiB each: 255 fit in a mebibyte with their names and framing.
        let big = split_into_calls(&lines_of(600, 4096));
        assert_eq!(spans(big.clone()), [(0, 255), (255, 510), (510, 600)]);
        let task_lines = lines_of(600, 4096);
        for call in big {
            let request = pb::BatchCreateTasksRequest {
                requests: task_lines[call]
                    .iter()
                    .map(|task| task.request.clone())
                    .collect(),
            };
            assert!(request.encoded_len() <= MAX_CALL_BYTES);
        }
        // One line over the budget goes alone.
        let huge = split_into_calls(&lines_of(3, MAX_CALL_BYTES));
        assert_eq!(spans(huge), [(0, 1), (1, 2), (2, 3)]);
    }

    fn refused(field: &str) -> CliError {
        CliError::InvalidArgument {
            message: format!("{field}: must not be empty"),
            field_violations: vec![FieldViolation {
                field: field.to_owned(),
                description: "must not be empty".to_owned(),
            }],
        }
    }

    #[test]
    fn a_refused_request_is_told_as_its_line() {
        let mut task_lines = lines_of(2500, 0);
        task_lines[1500].line = 1502; // two blank lines before it
        task_lines[2499].line = 2502;
        let failure = BatchFailure::new(
            &source(),
            &task_lines,
            1000..2000,
            refused("requests[500].retry_policy.max_attempts"),
        );
        assert_eq!(
            failure.cause().exit_status(),
            crate::errors::ExitStatus::InvalidArgument
        );
        assert_eq!(
            failure.to_string(),
            "--from-file tasks.jsonl, line 1502: invalid argument: field \
             retryPolicy.maxAttempts: must not be empty\n  \
             nothing was created from lines 1001-2000 (one call, all or nothing)\n  \
             created by the calls before: lines 1-1000, 1000 tasks (printed)\n  \
             not sent: lines 2001-2502"
        );

        let only = BatchFailure::new(
            &source(),
            &lines_of(3, 0),
            0..3,
            refused("requests[1].name"),
        );
        assert_eq!(
            only.to_string(),
            "--from-file tasks.jsonl, line 2: invalid argument: field name: must not be empty\n  \
             nothing was created from lines 1-3 (one call, all or nothing)"
        );

        // A field the server does not name per request keeps its own words.
        let whole = BatchFailure::new(&source(), &lines_of(3, 0), 0..3, refused("requests"));
        assert!(
            whole.to_string().starts_with(
                "--from-file tasks.jsonl, lines 1-3: invalid argument: field requests"
            ),
            "{whole}"
        );
    }

    #[test]
    fn a_call_without_an_answer_may_have_created_its_tasks() {
        let failure = BatchFailure::new(
            &source(),
            &lines_of(1001, 0),
            1000..1001,
            CliError::DeadlineExceeded {
                timeout: "30s".into(),
            },
        );
        let text = failure.to_string();
        assert!(
            text.starts_with("--from-file tasks.jsonl, line 1001: no answer within 30s"),
            "{text}"
        );
        assert!(
            text.contains("line 1001 (one call, all or nothing) got no answer"),
            "{text}"
        );
        assert!(text.contains("before: lines 1-1000, 1000 tasks"), "{text}");
        assert!(!text.contains("not sent"), "{text}");
    }

    #[test]
    fn field_paths_are_spelled_as_in_proto3_json() {
        for (field, path) in [
            ("name", "name"),
            ("timeout_seconds", "timeoutSeconds"),
            ("retry_policy.initial_backoff", "retryPolicy.initialBackoff"),
            ("labels[\"a_b\"]", "labels[\"a_b\"]"),
            ("data", "data"),
        ] {
            assert_eq!(json_field_path(field), path, "{field}");
        }
    }
}
