//! Printing answers in the form `-o` asks for: tables and key/value views
//! for people, proto3 JSON or YAML for programs (see `proto_json`).
//!
//! The text of tables is built by pure functions of the task and "now", so
//! tests can check it without a clock; only [`Printer`] writes to stdout.

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use task_processor::{api::json::json_from_proto, pb};

use crate::{
    cli::OutputFormat,
    errors::CliError,
    proto_json::{self, JsonLayout, ProtoJson},
    yaml,
};

/// Names longer than this are cut in tables (never in `get`).
pub const MAX_NAME_COLUMN: usize = 40;

/// Writes answers to stdout in one output format.
#[derive(Debug, Clone)]
pub struct Printer {
    pub format: OutputFormat,
    proto_json: ProtoJson,
}

/// The answer of one health check.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub service: String,
    /// `SERVING`, `NOT_SERVING`, …
    pub status: String,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Result<Self, CliError> {
        Ok(Self {
            format,
            proto_json: ProtoJson::new()?,
        })
    }

    /// One task: a key/value view, or one JSON/YAML object.
    pub fn print_task(&self, task: &pb::Task) -> Result<(), CliError> {
        self.print_message(task, proto_json::TASK, || {
            task_details(task, SystemTime::now())
        })
    }

    /// One answer: `table()` for people, else the message (whose full
    /// protobuf name is `full_name`) as one JSON object or YAML document.
    pub fn print_message(
        &self,
        message: &impl prost::Message,
        full_name: &str,
        table: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        let text = match self.format {
            OutputFormat::Table => table(),
            OutputFormat::Json => self.json_line(message, full_name, JsonLayout::Pretty)?,
            OutputFormat::Yaml => self.proto_json.to_yaml(message, full_name)?,
        };
        write_stdout(&text)
    }

    /// A list: a table, or one `ListTasksResponse` object (with every task
    /// when paged through with `--all`, and then no `nextPageToken`).
    pub fn print_task_list(&self, response: &pb::ListTasksResponse) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Table => {
                write_stdout(&task_table(&response.tasks, SystemTime::now()))?;
                if !response.next_page_token.is_empty() {
                    // On stderr, so the table stays clean for `grep`/`awk`.
                    eprintln!(
                        "more tasks: add --page-token {} for the next page, or --all",
                        response.next_page_token
                    );
                }
                Ok(())
            }
            OutputFormat::Json => write_stdout(&self.json_line(
                response,
                proto_json::LIST_TASKS_RESPONSE,
                JsonLayout::Pretty,
            )?),
            OutputFormat::Yaml => write_stdout(
                &self
                    .proto_json
                    .to_yaml(response, proto_json::LIST_TASKS_RESPONSE)?,
            ),
        }
    }

    /// One message of a watch stream as a machine-readable line (json) or
    /// document (yaml); table forms are drawn by `progress`.
    pub fn print_watch_message(&self, task: &pb::Task) -> Result<(), CliError> {
        let message = pb::WatchTaskResponse {
            task: Some(task.clone()),
        };
        match self.format {
            OutputFormat::Table => write_stdout(&(state_line(task, SystemTime::now()) + "\n")),
            OutputFormat::Json => write_stdout(&self.json_line(
                &message,
                proto_json::WATCH_TASK_RESPONSE,
                JsonLayout::Compact,
            )?),
            OutputFormat::Yaml => {
                let document = self
                    .proto_json
                    .to_yaml(&message, proto_json::WATCH_TASK_RESPONSE)?;
                write_stdout(&format!("---\n{document}"))
            }
        }
    }

    /// One message of a stream (whose full protobuf name is `full_name`)
    /// as a machine-readable line (json) or document (yaml).
    pub fn print_stream_message(
        &self,
        message: &impl prost::Message,
        full_name: &str,
    ) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Yaml => {
                let document = self.proto_json.to_yaml(message, full_name)?;
                write_stdout(&format!("---\n{document}"))
            }
            OutputFormat::Json | OutputFormat::Table => {
                write_stdout(&self.json_line(message, full_name, JsonLayout::Compact)?)
            }
        }
    }

    /// That one task was deleted: a line for people, or `DeleteTask`'s
    /// answer, an empty message, as grpcurl prints it (`{}`), one per line
    /// (json) or document (yaml), as for several messages of a stream.
    pub fn print_deleted(&self, task_id: &str) -> Result<(), CliError> {
        self.print_empty(&format!("deleted task {task_id}\n"))
    }

    /// An empty answer (`google.protobuf.Empty`): `line` for people, else
    /// `{}` on a line of its own (json) or a `{}` document (yaml).
    pub fn print_empty(&self, line: &str) -> Result<(), CliError> {
        let text = match self.format {
            OutputFormat::Table => line.to_owned(),
            OutputFormat::Json => self.json_line(&(), proto_json::EMPTY, JsonLayout::Compact)?,
            OutputFormat::Yaml => {
                format!("---\n{}", self.proto_json.to_yaml(&(), proto_json::EMPTY)?)
            }
        };
        write_stdout(&text)
    }

    pub fn print_health(&self, reports: &[HealthReport]) -> Result<(), CliError> {
        let text = match self.format {
            OutputFormat::Table => health_table(reports),
            // One `{"service": …, "status": …}` per line, like a stream.
            OutputFormat::Json => reports
                .iter()
                .map(|report| {
                    serde_json::json!({ "service": report.service, "status": report.status })
                        .to_string()
                        + "\n"
                })
                .collect(),
            OutputFormat::Yaml => reports
                .iter()
                .map(|report| {
                    format!(
                        "---\nservice: {}\nstatus: {}\n",
                        yaml::string_scalar(&report.service),
                        yaml::string_scalar(&report.status)
                    )
                })
                .collect(),
        };
        write_stdout(&text)
    }

    fn json_line(
        &self,
        message: &impl prost::Message,
        full_name: &str,
        layout: JsonLayout,
    ) -> Result<String, CliError> {
        Ok(self.proto_json.to_json(message, full_name, layout)? + "\n")
    }
}

/// Writes all of `text` to stdout and flushes, so lines of a stream show
/// as they come even through a pipe.
pub fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::io("write to stdout"))
}

/// The status without its `TASK_STATUS_` prefix: `COMPLETED`.
pub fn status_name(status: i32) -> String {
    match pb::TaskStatus::try_from(status) {
        Ok(status) => status
            .as_str_name()
            .trim_start_matches("TASK_STATUS_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({status})"),
    }
}

/// Every field of a task, one per line, for `get`, `create` and `cancel`;
/// the scheduling fields only where they say more than the defaults.
pub fn task_details(task: &pb::Task, now: SystemTime) -> String {
    let progress = task.progress.clone().unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", task.id.clone()),
        ("NAME", task.name.clone()),
        ("DESCRIPTION", or_dash(&task.description)),
        ("KIND", task.kind.clone()),
        ("STATUS", status_name(task.status)),
        (
            "PROGRESS",
            format!("{}% {}", progress.percent, progress.message)
                .trim_end()
                .to_owned(),
        ),
        ("DATA", json_text(task.data.as_ref())),
        ("RESULT", json_text(task.result.as_ref())),
        ("ERROR", or_dash(&task.error)),
        ("TIMEOUT", timeout_text(task.timeout_seconds)),
        ("LABELS", labels_text(&task.labels)),
    ];
    rows.extend(scheduling_rows(task, now));
    rows.extend([
        ("ATTEMPT", task.attempt.to_string()),
        ("NODE", or_dash(&task.node)),
        ("REVISION", task.revision.to_string()),
        ("CREATED", timestamp_text(task.created_at.as_ref(), now)),
        ("STARTED", timestamp_text(task.started_at.as_ref(), now)),
        ("COMPLETED", timestamp_text(task.completed_at.as_ref(), now)),
        (
            "DURATION",
            run_time(task, now).map_or_else(|| "-".to_owned(), format_duration),
        ),
    ]);
    key_value_view(&rows)
}

/// `KEY:   value` lines, the values aligned.
pub fn key_value_view(rows: &[(impl AsRef<str>, String)]) -> String {
    let width = rows
        .iter()
        .map(|(key, _)| key.as_ref().len() + 1)
        .max()
        .unwrap_or_default();
    rows.iter()
        .map(|(key, value)| format!("{:<width$} {value}\n", format!("{}:", key.as_ref())))
        .collect()
}

/// `env=dev, team=media`, sorted so the same labels print the same; `-`
/// for none.
pub fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.sort();
    pairs.join(", ")
}

/// A task's timeout as `get` shows it: `60s`, or `none` for 0.
pub fn timeout_text(timeout_seconds: u32) -> String {
    if timeout_seconds == 0 {
        "none".to_owned()
    } else {
        format!("{timeout_seconds}s")
    }
}

/// The rows of `task_details` for the scheduling fields that carry
/// information: a priority other than 0, a start time, a queue timeout,
/// and a retry policy that allows a retry.
pub fn scheduling_rows(task: &pb::Task, now: SystemTime) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    if task.priority != 0 {
        rows.push(("PRIORITY", task.priority.to_string()));
    }
    if let Some(run_after) = task.run_after.as_ref().and_then(system_time) {
        rows.push((
            "RUN AFTER",
            format!(
                "{} ({})",
                humantime::format_rfc3339_millis(run_after),
                relative(run_after, now)
            ),
        ));
    }
    if task.queue_timeout_seconds != 0 {
        rows.push(("QUEUE TIMEOUT", format!("{}s", task.queue_timeout_seconds)));
    }
    if let Some(policy) = task
        .retry_policy
        .as_ref()
        .filter(|policy| policy.max_attempts > 1)
    {
        rows.push(("RETRY POLICY", retry_policy_text(policy)));
    }
    rows
}

/// `3 attempts; back-off 1s, ×2 per retry, at most 5m`.
fn retry_policy_text(policy: &pb::RetryPolicy) -> String {
    let shown = |duration: Option<&prost_types::Duration>| {
        duration
            .and_then(|duration| Duration::try_from(*duration).ok())
            .map_or_else(
                || "-".to_owned(),
                |duration| humantime::format_duration(duration).to_string(),
            )
    };
    format!(
        "{} attempts; back-off {}, ×{} per retry, at most {}",
        policy.max_attempts,
        shown(policy.initial_backoff.as_ref()),
        policy.backoff_multiplier,
        shown(policy.max_backoff.as_ref())
    )
}

/// Aligned columns, one task per row, for `list`.
pub fn task_table(tasks: &[pb::Task], now: SystemTime) -> String {
    let header = [
        "ID", "NAME", "KIND", "STATUS", "PROGRESS", "AGE", "DURATION",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut rows = vec![header];
    for task in tasks {
        rows.push(vec![
            task.id.clone(),
            shorten(&task.name, MAX_NAME_COLUMN),
            task.kind.clone(),
            status_name(task.status),
            format!("{}%", shown_percent(task)),
            task.created_at
                .as_ref()
                .and_then(system_time)
                .map_or_else(|| "-".to_owned(), |created_at| age(created_at, now)),
            run_time(task, now).map_or_else(|| "-".to_owned(), format_duration),
        ]);
    }
    columns(&rows)
}

fn health_table(reports: &[HealthReport]) -> String {
    let mut rows = vec![vec!["SERVICE".to_owned(), "STATUS".to_owned()]];
    for report in reports {
        let service = if report.service.is_empty() {
            "\"\" (server)".to_owned()
        } else {
            report.service.clone()
        };
        rows.push(vec![service, report.status.clone()]);
    }
    columns(&rows)
}

/// One line for one state of a watched task: `RUNNING    40%  step 2`.
pub fn state_line(task: &pb::Task, now: SystemTime) -> String {
    format!(
        "{:<9} {:>3}%  {}",
        status_name(task.status),
        shown_percent(task),
        state_message(task, now)
    )
    .trim_end()
    .to_owned()
}

/// What a watch shows after the status and percent: while `RETRYING`, why
/// the last run failed and when the next may start; while `PENDING` with a
/// start time ahead, that time; otherwise the progress message.
pub fn state_message(task: &pb::Task, now: SystemTime) -> String {
    let run_after = task.run_after.as_ref().and_then(system_time);
    match pb::TaskStatus::try_from(task.status) {
        Ok(pb::TaskStatus::Retrying) => {
            let next = run_after.map_or_else(
                || "soon".to_owned(),
                |time| format!("at {}", clock_time(time, now)),
            );
            let until = run_after.map(|time| until(time, now)).unwrap_or_default();
            format!(
                "attempt {} failed ({}); next attempt {next}{until}",
                task.attempt, task.error
            )
        }
        Ok(pb::TaskStatus::Pending) if run_after.is_some_and(|time| time > now) => {
            let time = run_after.unwrap_or(now);
            format!("starts at {}{}", clock_time(time, now), until(time, now))
        }
        _ => task
            .progress
            .as_ref()
            .map(|progress| progress.message.clone())
            .unwrap_or_default(),
    }
}

/// `16:40:12Z` on the same (UTC) day as `now`, else the whole
/// `2026-12-03T18:00:00Z`.
fn clock_time(time: SystemTime, now: SystemTime) -> String {
    let full = humantime::format_rfc3339_seconds(time).to_string();
    let today = humantime::format_rfc3339_seconds(now).to_string();
    match (full.split_once('T'), today.split_once('T')) {
        (Some((day, clock)), Some((this_day, _))) if day == this_day => clock.to_owned(),
        _ => full,
    }
}

/// ` (in 0.8s)`, or ` (due)` once the time has come.
fn until(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) if !ahead.is_zero() => format!(" (in {})", format_duration(ahead)),
        _ => " (due)".to_owned(),
    }
}

/// The closing line of a watch: how the task ended, and its result or
/// error.
pub fn final_line(task: &pb::Task, now: SystemTime) -> String {
    let took = run_time(task, now)
        .map(|duration| format!(" after {}", format_duration(duration)))
        .unwrap_or_default();
    let ending = match pb::TaskStatus::try_from(task.status) {
        Ok(pb::TaskStatus::Completed) => {
            format!("completed{took}: {}", json_text(task.result.as_ref()))
        }
        Ok(pb::TaskStatus::Failed) => format!("failed{took}: {}", task.error),
        Ok(pb::TaskStatus::Cancelled) => format!("cancelled{took}: {}", task.error),
        _ => format!("is {}", status_name(task.status)),
    };
    format!("task {} {ending}", task.id)
}

/// The percent tables and bars show: a completed task is done, whether or
/// not its processor reported progress (`echo` never does). `get` shows
/// the field as it is.
pub fn shown_percent(task: &pb::Task) -> u32 {
    if task.status == i32::from(pb::TaskStatus::Completed) {
        return 100;
    }
    task.progress
        .as_ref()
        .map_or(0, |progress| progress.percent.min(100))
}

/// Pads every column to its widest cell; the last column is not padded.
pub fn columns(rows: &[Vec<String>]) -> String {
    let column_count = rows.iter().map(Vec::len).max().unwrap_or_default();
    let widths: Vec<usize> = (0..column_count)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or_default()
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                let padding = widths[column] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(padding + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub fn shorten(text: &str, most: usize) -> String {
    if text.chars().count() <= most {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(most - 1).collect();
    short.push('…');
    short
}

pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Compact JSON of `data` or `result`; `-` when unset.
pub fn json_text(value: Option<&prost_types::Value>) -> String {
    match value.map(json_from_proto) {
        None => "-".to_owned(),
        Some(Ok(json)) => json.to_string(),
        Some(Err(error)) => format!("(cannot show: {error})"),
    }
}

pub fn system_time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp).ok()
}

/// `2024-06-01T12:00:00.123Z (3s ago)`, or `-` when unset.
pub fn timestamp_text(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match timestamp.and_then(system_time) {
        None => "-".to_owned(),
        Some(time) => format!(
            "{} ({})",
            humantime::format_rfc3339_millis(time),
            age(time, now)
        ),
    }
}

/// How long the task ran: until it ended, or until now while it runs;
/// nothing while it waits to retry, since no run is going on and the
/// failed run's end is not kept.
fn run_time(task: &pb::Task, now: SystemTime) -> Option<Duration> {
    if task.status == i32::from(pb::TaskStatus::Retrying) {
        return None;
    }
    let started_at = system_time(task.started_at.as_ref()?)?;
    let until = task
        .completed_at
        .as_ref()
        .and_then(system_time)
        .unwrap_or(now);
    Some(until.duration_since(started_at).unwrap_or_default())
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`; a time in the future (clocks
/// apart) counts as `0s ago`.
pub fn age(time: SystemTime, now: SystemTime) -> String {
    let seconds = now.duration_since(time).unwrap_or_default().as_secs();
    format!("{} ago", rough_amount(seconds))
}

/// [`age`] for a time in the past, `in 5m` for one ahead (a start time),
/// rounded up so that what is 9m59.9s ahead of `--in 10m` reads `in 10m`.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) if !ahead.is_zero() => {
            let seconds = ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0);
            format!("in {}", rough_amount(seconds))
        }
        _ => age(time, now),
    }
}

/// `3s`, `5m`, `2h`, `4d`.
fn rough_amount(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `350ms`, `1.2s`, `2m05s`, `1h04m`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3_600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3_600, seconds % 3_600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn time(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn ages_and_durations_read_naturally() {
        assert_eq!(age(time(100), time(103)), "3s ago");
        assert_eq!(age(time(100), time(100 + 300)), "5m ago");
        assert_eq!(age(time(100), time(100 + 7_300)), "2h ago");
        assert_eq!(age(time(100), time(100 + 86_400 * 4)), "4d ago");
        assert_eq!(age(time(200), time(100)), "0s ago");
        assert_eq!(format_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(format_duration(Duration::from_millis(1_250)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3_840)), "1h04m");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let task = pb::Task {
            id: "0190b4a4-5d3e-7f00-8000-000000000000".into(),
            name: "a rather long name".into(),
            kind: "demo".into(),
            status: pb::TaskStatus::Running.into(),
            progress: Some(pb::TaskProgress {
                percent: 40,
                message: "step 2".into(),
            }),
            created_at: at(100),
            started_at: at(101),
            ..Default::default()
        };
        let table = task_table(&[task], time(103));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  "), "{table}");
        let status_column = lines[0].find("STATUS").expect("STATUS");
        assert_eq!(&lines[1][status_column..status_column + 7], "RUNNING");
        assert!(lines[1].contains("40%"), "{table}");
        assert!(lines[1].contains("3s ago"), "{table}");
        assert!(lines[1].ends_with("2.0s"), "{table}");
    }

    #[test]
    fn details_show_every_field() {
        let details = task_details(&pb::Task::default(), time(0));
        for key in [
            "ID:",
            "NAME:",
            "DESCRIPTION:",
            "KIND:",
            "STATUS:",
            "PROGRESS:",
            "DATA:",
            "RESULT:",
            "ERROR:",
            "TIMEOUT:",
            "LABELS:",
            "ATTEMPT:",
            "NODE:",
            "REVISION:",
            "CREATED:",
            "STARTED:",
            "COMPLETED:",
            "DURATION:",
        ] {
            assert!(details.contains(key), "{key} in {details}");
        }
    }

    #[test]
    fn details_show_scheduling_fields_that_say_something() {
        let plain = pb::Task {
            retry_policy: Some(pb::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let details = task_details(&plain, time(0));
        for key in ["PRIORITY:", "RUN AFTER:", "QUEUE TIMEOUT:", "RETRY POLICY:"] {
            assert!(!details.contains(key), "no {key} in {details}");
        }
        let scheduled = pb::Task {
            priority: -5,
            run_after: at(1_800),
            queue_timeout_seconds: 120,
            retry_policy: Some(pb::RetryPolicy {
                max_attempts: 3,
                initial_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                backoff_multiplier: 2.0,
            }),
            ..Default::default()
        };
        let details = task_details(&scheduled, time(1_500));
        assert_eq!(detail(&details, "PRIORITY"), "-5");
        assert_eq!(
            detail(&details, "RUN AFTER"),
            "1970-01-01T00:30:00.000Z (in 5m)"
        );
        assert_eq!(
            relative(time(600), time(0) + Duration::from_millis(1)),
            "in 10m"
        );
        assert_eq!(detail(&details, "QUEUE TIMEOUT"), "120s");
        assert_eq!(
            detail(&details, "RETRY POLICY"),
            "3 attempts; back-off 1s 500ms, ×2 per retry, at most 5m"
        );
    }

    fn detail<'a>(view: &'a str, key: &str) -> &'a str {
        view.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}:")))
            .map_or("", str::trim)
    }

    #[test]
    fn a_retrying_task_says_why_and_when_it_runs_again() {
        let now = time(86_400 + 3_600);
        let retrying = pb::Task {
            status: pb::TaskStatus::Retrying.into(),
            attempt: 1,
            error: "flaky failure 1".into(),
            run_after: Some(prost_types::Timestamp {
                seconds: 86_400 + 3_612,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            state_line(&retrying, now),
            "RETRYING    0%  attempt 1 failed (flaky failure 1); next attempt at 01:00:12Z (in 12.0s)"
        );
        // Another day: the whole date; a time passed: due.
        let later = pb::Task {
            run_after: at(3 * 86_400),
            ..retrying.clone()
        };
        assert!(
            state_message(&later, now)
                .ends_with("next attempt at 1970-01-04T00:00:00Z (in 47h00m)"),
            "{}",
            state_message(&later, now)
        );
        assert!(state_message(&retrying, time(2 * 86_400)).ends_with("(due)"));
        // Started, but no run is going on: no duration that keeps growing.
        let waiting = pb::Task {
            started_at: at(86_400),
            ..retrying.clone()
        };
        assert!(task_table(&[waiting], now).ends_with("  -\n"));
        let delayed = pb::Task {
            status: pb::TaskStatus::Pending.into(),
            run_after: at(86_400 + 3_900),
            ..Default::default()
        };
        assert_eq!(
            state_message(&delayed, now),
            "starts at 01:05:00Z (in 5m00s)"
        );
        let running = pb::Task {
            status: pb::TaskStatus::Running.into(),
            progress: Some(pb::TaskProgress {
                percent: 10,
                message: "step 1".into(),
            }),
            ..delayed
        };
        assert_eq!(state_message(&running, now), "step 1");
    }

    #[test]
    fn final_lines_say_how_the_task_ended() {
        let task = pb::Task {
            id: "x".into(),
            status: pb::TaskStatus::Failed.into(),
            error: "boom".into(),
            ..Default::default()
        };
        assert_eq!(final_line(&task, time(0)), "task x failed: boom");
    }
}
