//! `WorkerService` (contract v1.1, "Workers in any language"): remote
//! workers run tasks of the configured worker kinds over one bidirectional
//! stream. The tests drive the stream by hand (`RawWorker`), message by
//! message, so every rule of the protocol can be broken on purpose.

mod contract;
mod liveness;
mod logs;
mod replicas;

use std::time::Duration;

use serde_json::Value as JsonValue;
use task_processor::{config::Config, pb, pb::worker_service_client::WorkerServiceClient};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::support::{DEADLINE, TestServer, test_config};

/// The worker kinds of the servers under test.
pub const KINDS: [&str; 2] = ["remote", "other-remote"];

/// A server with the worker kinds of [`KINDS`].
pub fn worker_config() -> Config {
    Config {
        worker_kinds: KINDS.iter().map(|kind| (*kind).to_owned()).collect(),
        ..test_config()
    }
}

pub async fn worker_server() -> TestServer {
    TestServer::start_with(worker_config()).await
}

/// One `Work` stream, driven by hand.
pub struct RawWorker {
    to_server: Option<mpsc::Sender<pb::WorkRequest>>,
    from_server: Streaming<pb::WorkResponse>,
}

pub fn hello(kinds: &[&str], max_concurrent: u32, name: &str) -> pb::WorkRequest {
    pb::WorkRequest {
        message: Some(pb::work_request::Message::Hello(pb::WorkerHello {
            kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
            max_concurrent,
            worker_name: name.into(),
        })),
    }
}

impl RawWorker {
    /// Opens a stream on `channel` whose first message is `first`; the
    /// server's answer to it (an error, for a bad hello) is the `Err`.
    pub async fn open(channel: Channel, first: pb::WorkRequest) -> Result<Self, Status> {
        let (to_server, outgoing) = mpsc::channel(64);
        to_server
            .send(first)
            .await
            .expect("queue the first message");
        let from_server = WorkerServiceClient::new(channel)
            .work(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        Ok(Self {
            to_server: Some(to_server),
            from_server,
        })
    }

    /// A stream that said hello for `kinds`, `max_concurrent` at once.
    pub async fn connect(
        server: &TestServer,
        kinds: &[&str],
        max_concurrent: u32,
        name: &str,
    ) -> Self {
        Self::open(server.channel().await, hello(kinds, max_concurrent, name))
            .await
            .expect("hello accepted")
    }

    pub async fn send(&self, message: pb::work_request::Message) {
        self.to_server
            .as_ref()
            .expect("stream open")
            .send(pb::WorkRequest {
                message: Some(message),
            })
            .await
            .expect("stream open");
    }

    /// Ends the stream from the worker's side (a clean close).
    pub fn close(&mut self) {
        self.to_server = None;
    }

    /// The server's next message; panics if none comes within the deadline.
    pub async fn next(&mut self) -> pb::work_response::Message {
        match tokio::time::timeout(DEADLINE, self.from_server.next()).await {
            Ok(Some(Ok(response))) => response.message.expect("a message"),
            Ok(Some(Err(status))) => panic!("the stream ended with {status:?}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => panic!("no message within {DEADLINE:?}"),
        }
    }

    /// How the stream ends: `Ok(())` for OK, else its status. Messages
    /// before the end are returned too.
    pub async fn end(&mut self) -> (Vec<pb::work_response::Message>, Result<(), Status>) {
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout(DEADLINE, self.from_server.next()).await {
                Ok(Some(Ok(response))) => messages.extend(response.message),
                Ok(Some(Err(status))) => return (messages, Err(status)),
                Ok(None) => return (messages, Ok(())),
                Err(_) => panic!("the stream did not end within {DEADLINE:?}"),
            }
        }
    }

    /// Nothing comes from the server for `quiet` (the stream stays open).
    pub async fn expect_nothing_for(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.from_server.next()).await {
            panic!("expected nothing, got {message:?}");
        }
    }

    pub async fn next_assignment(&mut self) -> pb::Task {
        match self.next().await {
            pb::work_response::Message::Assignment(assignment) => {
                assignment.task.expect("an assignment has its task")
            }
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn next_cancellation(&mut self) -> pb::WorkCancellation {
        match self.next().await {
            pb::work_response::Message::Cancellation(cancellation) => cancellation,
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    pub async fn progress(&self, task: &pb::Task, percent: u32, message: &str) {
        self.send(pb::work_request::Message::Progress(pb::WorkProgress {
            task_id: task.id.clone(),
            attempt: task.attempt,
            progress: Some(pb::TaskProgress {
                percent,
                message: message.into(),
            }),
        }))
        .await;
    }

    pub async fn complete(&self, task_id: &str, attempt: u32, result: JsonValue) {
        self.send(pb::work_request::Message::Outcome(pb::WorkOutcome {
            task_id: task_id.into(),
            attempt,
            outcome: Some(pb::work_outcome::Outcome::Result(
                task_processor::api::json::json_to_proto(&result),
            )),
        }))
        .await;
    }

    pub async fn fail(&self, task_id: &str, attempt: u32, message: &str, permanent: bool) {
        self.send(pb::work_request::Message::Outcome(pb::WorkOutcome {
            task_id: task_id.into(),
            attempt,
            outcome: Some(pb::work_outcome::Outcome::Failure(pb::WorkFailure {
                message: message.into(),
                permanent,
            })),
        }))
        .await;
    }

    pub async fn drain(&self) {
        self.send(pb::work_request::Message::Drain(pb::WorkDrain {}))
            .await;
    }
}

/// Asserts a stream ended `INVALID_ARGUMENT` naming `field`.
pub fn assert_refused(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    crate::support::assert_invalid_argument(status, field);
}
