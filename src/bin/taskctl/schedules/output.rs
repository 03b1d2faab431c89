//! How schedules are printed: a key/value view of one and a table of
//! many for people, or the messages as proto3 JSON or YAML through the
//! shared `Printer`. Times are shown as everywhere in taskctl: RFC 3339
//! in UTC with how long ago or ahead in the view, only the distance in
//! the table.
//!
//! The text is built by pure functions of the schedule and "now", so
//! tests can check it without a clock.

use std::time::SystemTime;

use task_processor::pb;

use crate::{
    cli::OutputFormat,
    errors::CliError,
    output::{
        MAX_NAME_COLUMN, Printer, columns, json_text, key_value_view, labels_text, or_dash,
        relative, scheduling_rows, shorten, system_time, timeout_text, timestamp_text,
    },
    proto_json,
};

/// One schedule: a key/value view, or one JSON/YAML object.
pub fn print_schedule(printer: &Printer, schedule: &pb::Schedule) -> Result<(), CliError> {
    printer.print_message(schedule, proto_json::SCHEDULE, || {
        schedule_details(schedule, SystemTime::now())
    })
}

/// A list: a table, or one `ListSchedulesResponse` object (with every
/// schedule when paged through with `--all`, and then no
/// `nextPageToken`).
pub fn print_schedule_list(
    printer: &Printer,
    response: &pb::ListSchedulesResponse,
) -> Result<(), CliError> {
    printer.print_message(response, proto_json::LIST_SCHEDULES_RESPONSE, || {
        schedule_table(&response.schedules, SystemTime::now())
    })?;
    if printer.format == OutputFormat::Table && !response.next_page_token.is_empty() {
        // On stderr, so the table stays clean for `grep`/`awk`.
        eprintln!(
            "more schedules: add --page-token {} for the next page, or --all",
            response.next_page_token
        );
    }
    Ok(())
}

/// That the schedule was deleted: a line for people, or `DeleteSchedule`'s
/// empty answer.
pub fn print_deleted(printer: &Printer, schedule_id: &str) -> Result<(), CliError> {
    printer.print_empty(&format!("deleted schedule {schedule_id}\n"))
}

/// Every field of a schedule, one per line: what it creates and when,
/// then where it stands. The task's scheduling fields appear only where
/// they say more than the defaults, as in a task's view.
pub fn schedule_details(schedule: &pb::Schedule, now: SystemTime) -> String {
    let template = schedule.task.clone().unwrap_or_default();
    let mut rows: Vec<(String, String)> = [
        ("ID", schedule.id.clone()),
        ("CRON", schedule.cron.clone()),
        ("TIME ZONE", schedule.time_zone.clone()),
        ("OVERLAP", overlap_name(schedule.overlap)),
        ("TASK NAME", template.name.clone()),
        ("TASK DESCRIPTION", or_dash(&template.description)),
        ("TASK KIND", template.kind.clone()),
        ("TASK DATA", json_text(template.data.as_ref())),
        ("TASK TIMEOUT", timeout_text(template.timeout_seconds)),
        ("TASK LABELS", labels_text(&template.labels)),
    ]
    .map(|(key, value)| (key.to_owned(), value))
    .into();
    // The template's fields as a task's, to show them the same way.
    let template_scheduling = pb::Task {
        retry_policy: template.retry_policy,
        priority: template.priority,
        queue_timeout_seconds: template.queue_timeout_seconds,
        ..Default::default()
    };
    rows.extend(
        scheduling_rows(&template_scheduling, now)
            .into_iter()
            .map(|(key, value)| (format!("TASK {key}"), value)),
    );
    rows.extend(
        [
            ("PAUSED", yes_or_no(schedule.paused)),
            ("NEXT FIRE", time_text(schedule.next_fire_at.as_ref(), now)),
            ("LAST FIRE", time_text(schedule.last_fire_at.as_ref(), now)),
            ("LAST TASK", or_dash(&schedule.last_task_id)),
            ("REVISION", schedule.revision.to_string()),
            ("CREATED", timestamp_text(schedule.created_at.as_ref(), now)),
        ]
        .map(|(key, value)| (key.to_owned(), value)),
    );
    key_value_view(&rows)
}

/// Aligned columns, one schedule per row, for `schedule list`.
pub fn schedule_table(schedules: &[pb::Schedule], now: SystemTime) -> String {
    let header = [
        "ID",
        "NAME",
        "KIND",
        "CRON",
        "TIME ZONE",
        "OVERLAP",
        "PAUSED",
        "NEXT FIRE",
        "LAST FIRE",
        "LAST TASK",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut rows = vec![header];
    for schedule in schedules {
        let template = schedule.task.clone().unwrap_or_default();
        rows.push(vec![
            schedule.id.clone(),
            shorten(&template.name, MAX_NAME_COLUMN),
            template.kind,
            schedule.cron.clone(),
            schedule.time_zone.clone(),
            overlap_name(schedule.overlap),
            yes_or_no(schedule.paused),
            distance(schedule.next_fire_at.as_ref(), now),
            distance(schedule.last_fire_at.as_ref(), now),
            or_dash(&schedule.last_task_id),
        ]);
    }
    columns(&rows)
}

/// The policy without its `OVERLAP_POLICY_` prefix: `SKIP`.
fn overlap_name(overlap: i32) -> String {
    match pb::OverlapPolicy::try_from(overlap) {
        Ok(overlap) => overlap
            .as_str_name()
            .trim_start_matches("OVERLAP_POLICY_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({overlap})"),
    }
}

fn yes_or_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// `2026-12-03T18:00:00.000Z (in 5m)` or `(3s ago)`; `-` when unset.
fn time_text(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match timestamp.and_then(system_time) {
        None => "-".to_owned(),
        Some(time) => format!(
            "{} ({})",
            humantime::format_rfc3339_millis(time),
            relative(time, now)
        ),
    }
}

/// `in 5m` or `3s ago`; `-` when unset.
fn distance(timestamp: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    timestamp
        .and_then(system_time)
        .map_or_else(|| "-".to_owned(), |time| relative(time, now))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn time(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn fired() -> pb::Schedule {
        pb::Schedule {
            id: "0190b4a4-5d3e-7f00-8000-000000000001".into(),
            cron: "*/5 * * * *".into(),
            time_zone: "Europe/Berlin".into(),
            task: Some(pb::CreateTaskRequest {
                name: "sync".into(),
                kind: "echo".into(),
                timeout_seconds: 60,
                retry_policy: Some(pb::RetryPolicy {
                    max_attempts: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            overlap: pb::OverlapPolicy::Skip.into(),
            next_fire_at: at(600),
            last_fire_at: at(300),
            last_task_id: "0190b4a4-5d3e-7f00-8000-000000000002".into(),
            created_at: at(0),
            revision: 2,
            ..Default::default()
        }
    }

    fn detail<'a>(view: &'a str, key: &str) -> &'a str {
        view.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}:")))
            .map_or_else(|| panic!("no {key}: in {view}"), str::trim)
    }

    #[test]
    fn details_show_when_it_fires_and_what_it_creates() {
        let view = schedule_details(&fired(), time(420));
        assert_eq!(detail(&view, "CRON"), "*/5 * * * *");
        assert_eq!(detail(&view, "TIME ZONE"), "Europe/Berlin");
        assert_eq!(detail(&view, "OVERLAP"), "SKIP");
        assert_eq!(detail(&view, "PAUSED"), "no");
        assert_eq!(
            detail(&view, "NEXT FIRE"),
            "1970-01-01T00:10:00.000Z (in 3m)"
        );
        assert_eq!(
            detail(&view, "LAST FIRE"),
            "1970-01-01T00:05:00.000Z (2m ago)"
        );
        assert_eq!(
            detail(&view, "LAST TASK"),
            "0190b4a4-5d3e-7f00-8000-000000000002"
        );
        assert_eq!(detail(&view, "TASK NAME"), "sync");
        assert_eq!(detail(&view, "TASK KIND"), "echo");
        assert_eq!(detail(&view, "TASK DATA"), "-");
        assert_eq!(detail(&view, "TASK TIMEOUT"), "60s");
        // Defaults say nothing, as in a task's view.
        assert!(!view.contains("TASK RETRY POLICY:"), "{view}");
        assert!(!view.contains("TASK PRIORITY:"), "{view}");
        // Aligned: every value starts in the same column.
        let value_columns: std::collections::BTreeSet<usize> = view
            .lines()
            .map(|line| {
                let after_key = &line[line.find(':').expect("KEY:") + 1..];
                line.len() - after_key.trim_start().len()
            })
            .collect();
        assert_eq!(value_columns.len(), 1, "{view}");
    }

    #[test]
    fn a_paused_schedule_has_no_next_firing_and_priorities_show() {
        let paused = pb::Schedule {
            paused: true,
            next_fire_at: None,
            last_fire_at: None,
            last_task_id: String::new(),
            task: Some(pb::CreateTaskRequest {
                name: "digest".into(),
                priority: -5,
                ..Default::default()
            }),
            ..fired()
        };
        let view = schedule_details(&paused, time(0));
        assert_eq!(detail(&view, "PAUSED"), "yes");
        assert_eq!(detail(&view, "NEXT FIRE"), "-");
        assert_eq!(detail(&view, "LAST FIRE"), "-");
        assert_eq!(detail(&view, "LAST TASK"), "-");
        assert_eq!(detail(&view, "TASK PRIORITY"), "-5");
        let table = schedule_table(&[paused], time(0));
        let row = table.lines().nth(1).expect("a row");
        let last_cells: Vec<&str> = row.split_whitespace().rev().take(4).collect();
        assert_eq!(last_cells, ["-", "-", "-", "yes"], "{table}");
    }

    #[test]
    fn the_table_aligns_its_columns_and_shows_distances() {
        let table = schedule_table(&[fired()], time(420));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        for column in ["CRON", "TIME ZONE", "NEXT FIRE", "LAST FIRE", "LAST TASK"] {
            assert!(lines[0].contains(column), "{table}");
        }
        let next_column = lines[0].find("NEXT FIRE").expect("NEXT FIRE");
        assert!(lines[1][next_column..].starts_with("in 3m "), "{table}");
        let last_column = lines[0].find("LAST FIRE").expect("LAST FIRE");
        assert!(lines[1][last_column..].starts_with("2m ago "), "{table}");
        assert!(
            lines[1].ends_with("0190b4a4-5d3e-7f00-8000-000000000002"),
            "{table}"
        );
        assert_eq!(overlap_name(pb::OverlapPolicy::Allow.into()), "ALLOW");
        assert_eq!(overlap_name(9), "UNKNOWN(9)");
    }
}
