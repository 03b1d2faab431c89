//! `taskctl workers` against the real server: worker streams connected by
//! hand show in the table (name, kinds, tasks in flight out of the most,
//! replica, peer, age, id) and in proto3 JSON and YAML; a server with none
//! prints only the header, saying why on stderr; and refusals exit as
//! elsewhere: no server 7, a role without `read` or a server without
//! `WorkerService` 1.

use super::*;
use crate::{
    security::{Files, principals_yaml, start_with_principals},
    workers::RawWorker,
};

const LIST_WORKERS_RESPONSE: &str = "taskprocessor.v1.ListWorkersResponse";

/// The header of the table.
const HEADER: [&str; 7] = [
    "NAME",
    "KINDS",
    "IN FLIGHT/MAX",
    "NODE",
    "PEER",
    "CONNECTED",
    "ID",
];

async fn server_with_remote_kinds() -> TestServer {
    TestServer::start_with(Config {
        worker_kinds: vec!["remote".into(), "other-remote".into()],
        ..test_config()
    })
    .await
}

/// The cells of each row of a `taskctl workers` table, the header
/// checked and left out. Cells are cut at the header's columns, since
/// `CONNECTED` reads `3s ago`.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = HEADER
        .iter()
        .map(|name| {
            header
                .find(name)
                .unwrap_or_else(|| panic!("{name} in {header:?}"))
        })
        .collect();
    assert!(starts.is_sorted(), "columns in order: {header:?}");
    lines
        .map(|line| {
            (0..starts.len())
                .map(|column| {
                    let end = starts.get(column + 1).copied().unwrap_or(line.len());
                    line[starts[column]..end].trim().to_owned()
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn workers_shows_each_connected_stream() {
    let server = server_with_remote_kinds().await;
    let _resizer = RawWorker::connect(&server, &["remote"], 3, "resizer").await;
    let mut mailer = RawWorker::connect(&server, &["remote", "other-remote"], 1, "mailer").await;
    let mut client = server.client().await;
    let task = create(&mut client, "send", "other-remote", None).await;
    assert_eq!(mailer.next_assignment().await.id, task.id);

    let shown = taskctl(&server, &["workers"]).await;
    shown.expect_code(0);
    assert_eq!(shown.stderr, "", "{shown:?}");
    let rows = table_rows(&shown.stdout);
    let summary: Vec<[&str; 4]> = rows
        .iter()
        .map(|row| [&row[0], &row[1], &row[2], &row[3]].map(String::as_str))
        .collect();
    assert_eq!(
        summary,
        [
            ["resizer", "remote", "0/3", "test-node"],
            ["mailer", "remote,other-remote", "1/1", "test-node"],
        ],
        "{}",
        shown.stdout
    );
    for row in &rows {
        assert!(row[4].starts_with("127.0.0.1:"), "peer: {row:?}");
        assert!(row[5].ends_with("s ago"), "connected: {row:?}");
    }

    // The same workers as proto3 JSON and YAML, ids included.
    let json = taskctl(&server, &["workers", "-o", "json"]).await;
    json.expect_code(0);
    let listed: pb::ListWorkersResponse = from_json(LIST_WORKERS_RESPONSE, &json.stdout);
    let names: Vec<&str> = listed
        .workers
        .iter()
        .map(|worker| worker.worker_name.as_str())
        .collect();
    assert_eq!(names, ["resizer", "mailer"]);
    let resizer = &listed.workers[0];
    assert_eq!(resizer.kinds, ["remote"]);
    assert_eq!((resizer.in_flight, resizer.max_concurrent), (0, 3));
    assert_eq!(resizer.node, "test-node");
    assert!(resizer.connected_at.is_some(), "{}", json.stdout);
    assert_eq!(listed.workers[1].in_flight, 1);
    let ids: Vec<&str> = listed
        .workers
        .iter()
        .map(|worker| worker.id.as_str())
        .collect();
    let shown_ids: Vec<&str> = rows.iter().map(|row| row[6].as_str()).collect();
    assert_eq!(shown_ids, ids, "{}", shown.stdout);
    let value: JsonValue = serde_json::from_str(&json.stdout).expect("one JSON object");
    assert_eq!(value["workers"][0]["workerName"], "resizer");
    assert_eq!(value["workers"][0]["maxConcurrent"], 3);

    let yaml = taskctl(&server, &["workers", "-o", "yaml"]).await;
    yaml.expect_code(0);
    let from_yaml: pb::ListWorkersResponse = from_yaml(LIST_WORKERS_RESPONSE, &yaml.stdout);
    assert_eq!(from_yaml.workers.len(), 2, "{}", yaml.stdout);
    assert_eq!(from_yaml.workers[1].kinds, ["remote", "other-remote"]);
}

#[tokio::test]
async fn workers_without_any_prints_the_header_and_says_so() {
    let server = TestServer::start().await;
    let shown = taskctl(&server, &["workers"]).await;
    shown.expect_code(0);
    assert!(table_rows(&shown.stdout).is_empty(), "{shown:?}");
    assert_eq!(
        shown.stderr.trim(),
        "no workers are connected (with PostgreSQL: to any replica)"
    );

    let json = taskctl(&server, &["workers", "-o", "json"]).await;
    json.expect_code(0);
    assert_eq!(
        json.stdout.trim(),
        "{}",
        "proto3 JSON leaves out the empty list"
    );
    let listed: pb::ListWorkersResponse = from_json(LIST_WORKERS_RESPONSE, &json.stdout);
    assert!(listed.workers.is_empty());
    assert_eq!(json.stderr, "", "nothing but the answer for programs");
}

#[tokio::test]
async fn workers_refusals_exit_like_the_other_commands() {
    let nowhere = closed_port_address().await;
    let unreachable = run(command(&nowhere, &["workers"])).await;
    unreachable.expect_code(7);
    assert!(
        unreachable.stderr.starts_with("taskctl: no server at "),
        "{unreachable:?}"
    );

    // A server that has no WorkerService (an older one).
    let (address, serving) = start_scripted(Some((Code::Unavailable, "unused"))).await;
    let older = run(command(&address, &["workers"])).await;
    older.expect_code(1);
    assert!(
        older
            .stderr
            .starts_with("taskctl: the server does not offer this call"),
        "{older:?}"
    );
    serving.abort();

    // ListWorkers needs the role `read`: the token is sent, and a writer
    // is refused.
    let files = Files::new();
    let yaml = principals_yaml(&[
        ("reader", Some("reader-token"), &["read"]),
        ("writer", Some("writer-token"), &["write"]),
    ]);
    let server = start_with_principals(&files, &yaml, false).await;
    let reader = taskctl(&server, &["workers", "--token", "reader-token"]).await;
    reader.expect_code(0);
    let writer = taskctl(&server, &["workers", "--token", "writer-token"]).await;
    writer.expect_code(1);
    assert!(
        writer.stderr.starts_with("taskctl: permission denied"),
        "{writer:?}"
    );
}
