//! `GET /api/v1/tasks/{id}/watch` and `GET /api/v1/watch` as Server-Sent
//! Events: one `data:` line of JSON per `WatchTaskResponse` or
//! `WatchTasksResponse`, under the RPC's rules, read as a browser's
//! EventSource reads them.

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value as JsonValue;
use task_processor::pb;
use tonic::Code;

use super::{Http, id_of};
use crate::support::{DEADLINE, TestServer, wait_for_status};

/// One event of the stream.
#[derive(Debug)]
struct Event {
    /// `event:`; none for a message.
    name: Option<String>,
    data: String,
}

/// One block of the stream: an event, or a comment line.
enum Block {
    Event(Event),
    Comment(String),
}

/// The events of one response body, as they arrive.
struct Events {
    body: Incoming,
    buffer: String,
}

impl Events {
    /// Opens the watch of `id`; fails the test unless it is an event stream.
    async fn open(http: &Http, id: &str) -> Self {
        Self::open_path(http, &format!("/api/v1/tasks/{id}/watch")).await
    }

    /// Opens the event stream at `path`.
    async fn open_path(http: &Http, path: &str) -> Self {
        let request = http.request(
            Method::GET,
            path,
            &[("accept", "text/event-stream")],
            Bytes::new(),
        );
        let response = http.open(request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{response:?}"
        );
        assert!(response.headers().contains_key("x-request-id"));
        Self {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.next_block().await? {
                Block::Event(event) => return Some(event),
                Block::Comment(_) => continue,
            }
        }
    }

    /// The next event or comment, or `None` when the stream ends.
    async fn next_block(&mut self) -> Option<Block> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(comment) = block.strip_prefix(':') {
                    return Some(Block::Comment(comment.trim().to_owned()));
                }
                let mut event = Event {
                    name: None,
                    data: String::new(),
                };
                let mut data_lines = 0;
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                        data_lines += 1;
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.name = Some(name.to_owned());
                    }
                }
                assert_eq!(data_lines, 1, "one data line per message: {block:?}");
                return Some(Block::Event(event));
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                None => {
                    assert!(self.buffer.is_empty(), "cut short: {:?}", self.buffer);
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.expect("the stream goes on").into_data() {
                        self.buffer
                            .push_str(std::str::from_utf8(&data).expect("UTF-8"));
                    }
                }
            }
        }
    }

    /// Every remaining message's task, until the stream ends.
    async fn tasks_until_the_end(&mut self) -> Vec<JsonValue> {
        let mut tasks = Vec::new();
        while let Some(event) = self.next().await {
            assert_eq!(event.name, None, "{event:?}");
            let message: JsonValue = serde_json::from_str(&event.data).expect("JSON");
            tasks.push(message["task"].clone());
        }
        tasks
    }
}

fn revision(task: &JsonValue) -> u64 {
    task["revision"]
        .as_str()
        .and_then(|revision| revision.parse().ok())
        .expect("a revision")
}

#[tokio::test]
async fn a_watch_streams_every_state_in_order_until_the_terminal_one() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let id = id_of(&http.create(r#"{"name": "watched", "kind": "gate"}"#).await);
    wait_for_status(&client, &id, pb::TaskStatus::Running).await;

    let mut events = Events::open(&http, &id).await;
    let first = events.next().await.expect("the current state first");
    let first: JsonValue = serde_json::from_str(&first.data).expect("JSON");
    assert_eq!(first["task"]["status"], "TASK_STATUS_RUNNING");
    server.gate.release(1);

    let rest = events.tasks_until_the_end().await;
    let last = rest.last().expect("the terminal state");
    assert_eq!(last["status"], "TASK_STATUS_COMPLETED");
    assert_eq!(last["id"], id.as_str());
    let mut seen = revision(&first["task"]);
    for task in &rest {
        assert!(revision(task) > seen, "revisions go up: {rest:?}");
        seen = revision(task);
    }

    // A finished task: its one state, then the end.
    let mut again = Events::open(&http, &id).await;
    let tasks = again.tasks_until_the_end().await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["status"], "TASK_STATUS_COMPLETED");
}

#[tokio::test]
async fn a_demo_task_streams_its_progress_and_every_status() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let id = id_of(&http.create(r#"{"name": "progress", "kind": "demo"}"#).await);
    let mut events = Events::open(&http, &id).await;
    let tasks = events.tasks_until_the_end().await;
    let statuses: Vec<&str> = tasks
        .iter()
        .map(|task| task["status"].as_str().expect("a status"))
        .collect();
    let mut distinct = statuses.clone();
    distinct.dedup();
    // PENDING may be over before the watch began; every later status shows.
    let expected = ["TASK_STATUS_RUNNING", "TASK_STATUS_COMPLETED"];
    assert!(
        distinct == expected || distinct == ["TASK_STATUS_PENDING", expected[0], expected[1]],
        "{statuses:?}"
    );
    assert!(
        tasks
            .iter()
            .any(|task| task["progress"]["percent"].as_u64().is_some_and(|p| p > 0)),
        "{tasks:?}"
    );
}

#[tokio::test]
async fn a_watch_open_at_shutdown_ends_with_an_unavailable_error_event() {
    let mut server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let id = id_of(&http.create(r#"{"name": "held", "kind": "gate"}"#).await);
    wait_for_status(&client, &id, pb::TaskStatus::Running).await;
    let mut events = Events::open(&http, &id).await;
    events.next().await.expect("the current state");

    let stopped = server.begin_shutdown();
    let error = loop {
        let event = events.next().await.expect("an error event before the end");
        if event.name.is_some() {
            break event;
        }
    };
    assert_eq!(error.name.as_deref(), Some("error"));
    let body: JsonValue = serde_json::from_str(&error.data).expect("JSON");
    assert_eq!(body["code"], Code::Unavailable as i32, "{body}");
    assert!(events.next().await.is_none(), "the stream ends after it");
    stopped.await.expect("stopped");
}

#[tokio::test]
async fn a_quiet_watch_gets_a_keep_alive_comment_every_15_seconds() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let id = id_of(&http.create(r#"{"name": "quiet", "kind": "gate"}"#).await);
    wait_for_status(&client, &id, pb::TaskStatus::Running).await;
    let mut events = Events::open(&http, &id).await;
    events.next().await.expect("the current state");

    let started = tokio::time::Instant::now();
    match events.next_block().await.expect("the stream goes on") {
        Block::Comment(text) => assert_eq!(text, "keep-alive"),
        Block::Event(event) => panic!("nothing happened, yet {event:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(14),
        "a keep-alive after {waited:?} of quiet, not 15 s"
    );
    server.gate.release(1);
    let tasks = events.tasks_until_the_end().await;
    assert_eq!(
        tasks.last().expect("the end")["status"],
        "TASK_STATUS_COMPLETED"
    );
}

/// The next `WatchTasksResponse` of a stream, as JSON.
async fn next_message(events: &mut Events) -> JsonValue {
    let event = events.next().await.expect("the stream goes on");
    assert_eq!(event.name, None, "{event:?}");
    let message: JsonValue = serde_json::from_str(&event.data).expect("JSON");
    assert!(
        message["resumeToken"]
            .as_str()
            .is_some_and(|token| !token.is_empty()),
        "every message has a token: {message}"
    );
    message
}

#[tokio::test]
async fn watching_many_tasks_streams_the_list_then_changes_and_resumes_from_a_token() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let client = server.client().await;
    let mut ours = Vec::new();
    for (name, team) in [("a1", "a"), ("b1", "b"), ("a2", "a")] {
        let body =
            format!(r#"{{"name": "{name}", "kind": "echo", "labels": {{"team": "{team}"}}}}"#);
        let id = id_of(&http.create(&body).await);
        wait_for_status(&client, &id, pb::TaskStatus::Completed).await;
        if team == "a" {
            ours.push(id);
        }
    }
    let filter = "label=team%3Da&kind=echo&status=pending&status=running&status=completed";
    let mut events =
        Events::open_path(&http, &format!("/api/v1/watch?{filter}&sendInitial=true")).await;
    for id in &ours {
        let message = next_message(&mut events).await;
        assert_eq!(message["task"]["id"], id.as_str(), "{message}");
        assert_eq!(message["initialDone"], false);
    }
    let done = next_message(&mut events).await;
    assert_eq!(done["initialDone"], true, "{done}");
    assert!(done.get("task").is_none_or(JsonValue::is_null), "{done}");
    let token = done["resumeToken"].as_str().expect("a token").to_owned();

    let body = r#"{"name": "a3", "kind": "echo", "labels": {"team": "a"}}"#;
    let new_id = id_of(&http.create(body).await);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let message = next_message(&mut events).await;
        assert_eq!(message["task"]["id"], new_id.as_str(), "{message}");
        statuses.push(
            message["task"]["status"]
                .as_str()
                .expect("a status")
                .to_owned(),
        );
    }
    assert_eq!(
        statuses,
        [
            "TASK_STATUS_PENDING",
            "TASK_STATUS_RUNNING",
            "TASK_STATUS_COMPLETED"
        ]
    );
    drop(events);

    // The same filter from the token: the changes after it, again.
    let mut resumed = Events::open_path(
        &http,
        &format!("/api/v1/watch?{filter}&resumeToken={token}"),
    )
    .await;
    let first = next_message(&mut resumed).await;
    assert_eq!(first["task"]["id"], new_id.as_str(), "{first}");
    assert_eq!(first["task"]["status"], "TASK_STATUS_PENDING");

    // Refusals come before the stream, as JSON errors.
    http.get(&format!("/api/v1/watch?label=team%3Db&resumeToken={token}"))
        .await
        .assert_error(400, Code::InvalidArgument, "resume_token");
    http.get(&format!("/api/v1/watch?{filter}&resumeToken=garbage"))
        .await
        .assert_error(400, Code::InvalidArgument, "resume_token");
    http.get("/api/v1/watch?sendInitial=maybe")
        .await
        .assert_error(400, Code::InvalidArgument, "sendInitial");
}
