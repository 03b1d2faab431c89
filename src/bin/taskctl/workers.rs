//! `taskctl workers`: the remote workers connected to the server that
//! answers (`WorkerService/ListWorkers`), as a table for people or the
//! `ListWorkersResponse` as proto3 JSON or YAML.
//!
//! Workers are per replica: each lists only the streams connected to it,
//! so the table shows the replica (`NODE`) of each worker. The text is
//! built by a pure function of the workers and "now", so tests can check
//! it without a clock; times show as in `list`, as an age.

use std::time::SystemTime;

use task_processor::pb;

use crate::{
    cli::OutputFormat,
    commands::{Outcome, Session},
    errors::CliError,
    output::{MAX_NAME_COLUMN, age, columns, or_dash, shorten, system_time},
};

/// The full protobuf name of `ListWorkers`' answer, for `-o json|yaml`.
const LIST_WORKERS_RESPONSE: &str = "taskprocessor.v1.ListWorkersResponse";

/// Lists the workers connected to the server and prints them.
pub async fn list(session: &Session) -> Result<Outcome, CliError> {
    let mut client = session.workers().await?;
    let request = session.request(pb::ListWorkersRequest {});
    let response = session
        .unary(client.list_workers(request), CliError::from_status)
        .await?;
    session
        .printer
        .print_message(&response, LIST_WORKERS_RESPONSE, || {
            worker_table(&response.workers, SystemTime::now())
        })?;
    if session.printer.format == OutputFormat::Table && response.workers.is_empty() {
        // On stderr, as `list`'s next-page hint, so stdout stays the table.
        eprintln!("no workers are connected (with PostgreSQL: to any replica)");
    }
    Ok(Outcome::Success)
}

/// Aligned columns, one worker per row, in the order they connected.
pub fn worker_table(workers: &[pb::Worker], now: SystemTime) -> String {
    let header = [
        "NAME",
        "KINDS",
        "IN FLIGHT/MAX",
        "NODE",
        "PEER",
        "CONNECTED",
        "ID",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut rows = vec![header];
    for worker in workers {
        rows.push(vec![
            shorten(&or_dash(&worker.worker_name), MAX_NAME_COLUMN),
            // No spaces, so each cell stays one word for `awk`.
            or_dash(&worker.kinds.join(",")),
            format!("{}/{}", worker.in_flight, worker.max_concurrent),
            or_dash(&worker.node),
            or_dash(&worker.peer),
            worker
                .connected_at
                .as_ref()
                .and_then(system_time)
                .map_or_else(|| "-".to_owned(), |connected_at| age(connected_at, now)),
            worker.id.clone(),
        ]);
    }
    columns(&rows)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn time(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn worker(name: &str, kinds: &[&str], in_flight: u32, max_concurrent: u32) -> pb::Worker {
        pb::Worker {
            id: format!("0190b4a4-5d3e-7f00-8000-00000000000{}", name.len()),
            worker_name: name.into(),
            kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
            max_concurrent,
            in_flight,
            node: "node-a".into(),
            peer: "127.0.0.1:40000".into(),
            connected_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn the_table_shows_kinds_capacity_replica_and_age() {
        let workers = [
            worker("resizer", &["thumbnail", "email"], 1, 4),
            worker("mailer-2", &["email"], 0, 16),
        ];
        let table = worker_table(&workers, time(160));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let cells: Vec<&str> = lines[0]
            .split("  ")
            .filter(|cell| !cell.is_empty())
            .collect();
        let header: Vec<&str> = cells.iter().map(|cell| cell.trim()).collect();
        assert_eq!(
            header,
            [
                "NAME",
                "KINDS",
                "IN FLIGHT/MAX",
                "NODE",
                "PEER",
                "CONNECTED",
                "ID"
            ],
            "{table}"
        );
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "resizer",
                "thumbnail,email",
                "1/4",
                "node-a",
                "127.0.0.1:40000",
                "1m",
                "ago",
                "0190b4a4-5d3e-7f00-8000-000000000007"
            ],
            "{table}"
        );
        let column = lines[0].find("IN FLIGHT/MAX").expect("the column");
        assert!(lines[2][column..].starts_with("0/16 "), "{table}");
    }

    #[test]
    fn unknown_fields_show_as_dashes_and_no_workers_is_a_header() {
        let bare = pb::Worker {
            id: "id".into(),
            max_concurrent: 1,
            ..Default::default()
        };
        let table = worker_table(&[bare], time(0));
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(row, ["-", "-", "0/1", "-", "-", "-", "id"], "{table}");
        assert_eq!(worker_table(&[], time(0)).lines().count(), 1);
    }
}
