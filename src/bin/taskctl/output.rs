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
const MAX_NAME_COLUMN: usize = 40;

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
        let text = match self.format {
            OutputFormat::Table => task_details(task, SystemTime::now()),
            OutputFormat::Json => self.json_line(task, proto_json::TASK, JsonLayout::Pretty)?,
            OutputFormat::Yaml => self.proto_json.to_yaml(task, proto_json::TASK)?,
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
            OutputFormat::Table => write_stdout(&(state_line(task) + "\n")),
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

/// Every field of a task, one per line, for `get`, `create` and `cancel`.
pub fn task_details(task: &pb::Task, now: SystemTime) -> String {
    let progress = task.progress.clone().unwrap_or_default();
    let labels = if task.labels.is_empty() {
        "-".to_owned()
    } else {
        let mut pairs: Vec<String> = task
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        pairs.sort();
        pairs.join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
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
        (
            "TIMEOUT",
            if task.timeout_seconds == 0 {
                "none".to_owned()
            } else {
                format!("{}s", task.timeout_seconds)
            },
        ),
        ("LABELS", labels),
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
    ];
    let width = rows
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or_default();
    rows.into_iter()
        .map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:")))
        .collect()
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
pub fn state_line(task: &pb::Task) -> String {
    let progress = task.progress.clone().unwrap_or_default();
    format!(
        "{:<9} {:>3}%  {}",
        status_name(task.status),
        shown_percent(task),
        progress.message
    )
    .trim_end()
    .to_owned()
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
fn columns(rows: &[Vec<String>]) -> String {
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

fn shorten(text: &str, most: usize) -> String {
    if text.chars().count() <= most {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(most - 1).collect();
    short.push('…');
    short
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Compact JSON of `data` or `result`; `-` when unset.
fn json_text(value: Option<&prost_types::Value>) -> String {
    match value.map(json_from_proto) {
        None => "-".to_owned(),
        Some(Ok(json)) => json.to_string(),
        Some(Err(error)) => format!("(cannot show: {error})"),
    }
}

fn system_time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp).ok()
}

/// `2024-06-01T12:00:00.123Z (3s ago)`, or `-` when unset.
fn timestamp_text(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match timestamp.and_then(system_time) {
        None => "-".to_owned(),
        Some(time) => format!(
            "{} ({})",
            humantime::format_rfc3339_millis(time),
            age(time, now)
        ),
    }
}

/// How long the task ran: until it ended, or until now while it runs.
fn run_time(task: &pb::Task, now: SystemTime) -> Option<Duration> {
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
    let amount = match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    };
    format!("{amount} ago")
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
