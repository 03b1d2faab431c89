//! The library against a scripted fake of the server's side of `Work`, to
//! pin down the protocol from the worker's side: the hello and its token,
//! one outcome per assignment (cancelled, panicking, stubborn or of an
//! unknown kind), `drain` before any later outcome, and which stream ends
//! reconnect and which are returned. The real server is in `tests/it`.

use std::{pin::Pin, sync::Arc, time::Duration};

use serde_json::{Value as JsonValue, json};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Job, JobError, Worker, WorkerError};
use crate::{
    api::json::{json_from_proto, json_to_proto},
    pb::{
        self, WorkRequest, WorkResponse,
        work_outcome::Outcome,
        work_request::Message,
        work_response::Message as ServerMessage,
        worker_service_server::{WorkerService, WorkerServiceServer},
    },
};

const DEADLINE: Duration = Duration::from_secs(10);

/// One `Work` call as the fake server received it.
struct Call {
    authorization: Option<String>,
    requests: Streaming<WorkRequest>,
    responses: mpsc::Sender<Result<WorkResponse, Status>>,
}

impl Call {
    /// The next message from the worker.
    async fn next(&mut self) -> Message {
        tokio::time::timeout(DEADLINE, self.requests.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a message, not an error")
            .message
            .expect("a message set")
    }

    /// The next message, skipping progress.
    async fn next_but_progress(&mut self) -> Message {
        loop {
            match self.next().await {
                Message::Progress(_) => continue,
                message => return message,
            }
        }
    }

    async fn assign(&self, id: &str, kind: &str, data: JsonValue) {
        let task = pb::Task {
            id: id.into(),
            kind: kind.into(),
            attempt: 1,
            data: Some(json_to_proto(&data)),
            ..Default::default()
        };
        let assignment = pb::WorkAssignment {
            task: Some(task),
            trace_context: Default::default(),
        };
        self.send(ServerMessage::Assignment(assignment)).await;
    }

    async fn cancel(&self, id: &str) {
        let cancellation = pb::WorkCancellation {
            task_id: id.into(),
            attempt: 1,
            reason: "cancelled by a client".into(),
            cause: pb::CancellationCause::Cancelled.into(),
        };
        self.send(ServerMessage::Cancellation(cancellation)).await;
    }

    async fn send(&self, message: ServerMessage) {
        let response = WorkResponse {
            message: Some(message),
        };
        self.responses
            .send(Ok(response))
            .await
            .expect("stream open");
    }
}

#[derive(Clone)]
struct FakeServer {
    calls: mpsc::Sender<Call>,
}

#[tonic::async_trait]
impl WorkerService for FakeServer {
    type WorkStream = Pin<Box<dyn Stream<Item = Result<WorkResponse, Status>> + Send>>;

    async fn work(
        &self,
        request: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (responses, receiver) = mpsc::channel(16);
        let call = Call {
            authorization,
            requests: request.into_inner(),
            responses,
        };
        self.calls
            .send(call)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Serves the fake on a free port; yields each `Work` call.
async fn fake_server() -> (String, mpsc::Receiver<Call>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (calls, received) = mpsc::channel(4);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(FakeServer { calls }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address.to_string(), received)
}

async fn next_call(calls: &mut mpsc::Receiver<Call>) -> Call {
    tokio::time::timeout(DEADLINE, calls.recv())
        .await
        .expect("a call in time")
        .expect("server alive")
}

/// `data.wait`: wait for cancellation (and return an error); `data.stubborn`:
/// never return; `data.panic`: panic; `data.gate`: wait for the test's
/// permit. Otherwise return the data.
#[derive(Clone, Default)]
struct Scripted {
    started: Arc<Notify>,
    gate: Arc<Notify>,
}

impl Scripted {
    async fn run(self, job: Job) -> Result<JsonValue, JobError> {
        self.started.notify_one();
        if job.data()["wait"] == true {
            job.cancelled().await;
            return Err(JobError::retryable("stopped"));
        }
        if job.data()["stubborn"] == true {
            std::future::pending::<()>().await;
        }
        if job.data()["panic"] == true {
            panic!("scripted panic");
        }
        if job.data()["gate"] == true {
            self.gate.notified().await;
        }
        job.progress(100, "done").await;
        Ok(job.data().clone())
    }
}

fn spawn_worker(
    address: &str,
    script: &Scripted,
    configure: impl FnOnce(super::WorkerBuilder) -> super::WorkerBuilder,
) -> (CancellationToken, JoinHandle<Result<(), WorkerError>>) {
    let script = script.clone();
    let builder = Worker::builder(address)
        .name("unit")
        .max_concurrent(3)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handle("resize", move |job| script.clone().run(job));
    let worker = configure(builder).build().expect("valid");
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run_until(stop.cancelled_owned()).await }
    });
    (stop, running)
}

async fn finished(running: JoinHandle<Result<(), WorkerError>>) -> Result<(), WorkerError> {
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("run_until returns in time")
        .expect("no panic")
}

fn outcome(message: Message) -> (String, Outcome) {
    match message {
        Message::Outcome(outcome) => (outcome.task_id, outcome.outcome.expect("outcome set")),
        other => panic!("expected an outcome, got {other:?}"),
    }
}

fn failure(outcome: Outcome) -> pb::WorkFailure {
    match outcome {
        Outcome::Failure(failure) => failure,
        Outcome::Result(value) => panic!("expected a failure, got {value:?}"),
    }
}

#[tokio::test]
async fn hello_then_exactly_one_outcome_per_assignment() {
    let (address, mut calls) = fake_server().await;
    let script = Scripted::default();
    let (stop, running) = spawn_worker(&address, &script, |builder| {
        builder
            .token("s3cret")
            .cancel_grace(Duration::from_millis(50))
    });
    let mut call = next_call(&mut calls).await;
    assert_eq!(call.authorization.as_deref(), Some("Bearer s3cret"));
    let Message::Hello(hello) = call.next().await else {
        panic!("hello first");
    };
    assert_eq!(hello.kinds, ["resize"]);
    assert_eq!(
        (hello.max_concurrent, hello.worker_name.as_str()),
        (3, "unit")
    );

    call.assign("a", "resize", json!({ "x": 1 })).await;
    let Message::Progress(progress) = call.next().await else {
        panic!("progress first");
    };
    assert_eq!((progress.task_id.as_str(), progress.attempt), ("a", 1));
    let (id, result) = outcome(call.next().await);
    let Outcome::Result(value) = result else {
        panic!("a result");
    };
    assert_eq!(id, "a");
    assert_eq!(json_from_proto(&value).expect("json"), json!({ "x": 1 }));

    // Cancelled, stubborn (dropped after the cancel grace), panicking, and
    // of a kind this worker has no handler for: one failure each.
    call.assign("b", "resize", json!({ "wait": true })).await;
    call.assign("c", "resize", json!({ "stubborn": true }))
        .await;
    call.cancel("b").await;
    call.cancel("c").await;
    call.assign("d", "resize", json!({ "panic": true })).await;
    call.assign("e", "crop", json!({})).await;
    let mut failures = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let (id, outcome) = outcome(call.next_but_progress().await);
        assert!(
            failures.insert(id, failure(outcome)).is_none(),
            "one outcome each"
        );
    }
    assert_eq!(failures["b"].message, "stopped");
    assert!(
        failures["c"].message.contains("did not stop"),
        "{:?}",
        failures["c"]
    );
    assert!(
        failures["d"].message.contains("scripted panic"),
        "{:?}",
        failures["d"]
    );
    assert!(!failures["d"].permanent);
    assert!(failures["e"].permanent, "no handler for crop: permanent");

    stop.cancel();
    assert!(matches!(call.next().await, Message::Drain(_)));
    drop(call); // the server ends the stream with OK
    finished(running).await.expect("clean stop");
}

/// The handler ends and the signal comes in the same stretch of the test
/// (no await between), so on this single-threaded runtime the loop sees
/// both in one poll: the stop must win, or a server would hand the freed
/// slot to a stopping worker.
#[tokio::test]
async fn drain_goes_out_before_an_outcome_that_comes_with_the_signal() {
    let (address, mut calls) = fake_server().await;
    let script = Scripted::default();
    let (stop, running) = spawn_worker(&address, &script, |builder| builder);
    let mut call = next_call(&mut calls).await;
    call.next().await; // hello
    call.assign("a", "resize", json!({ "gate": true })).await;
    tokio::time::timeout(DEADLINE, script.started.notified())
        .await
        .expect("the handler started");
    script.gate.notify_one();
    stop.cancel();
    // The handler's progress may come first: it sends that itself.
    assert!(matches!(call.next_but_progress().await, Message::Drain(_)));
    let (id, result) = outcome(call.next_but_progress().await);
    assert_eq!(id, "a");
    assert!(matches!(result, Outcome::Result(_)));
    drop(call);
    finished(running).await.expect("clean stop");
}

#[tokio::test]
async fn unavailable_reconnects_and_invalid_argument_is_returned() {
    let (address, mut calls) = fake_server().await;
    let script = Scripted::default();
    let (_stop, running) = spawn_worker(&address, &script, |builder| builder);
    let mut call = next_call(&mut calls).await;
    call.next().await; // hello
    call.responses
        .send(Err(Status::unavailable("shutting down")))
        .await
        .expect("open");
    let mut again = next_call(&mut calls).await;
    assert!(
        matches!(again.next().await, Message::Hello(_)),
        "hello again"
    );
    again
        .responses
        .send(Err(Status::invalid_argument(
            "hello.kinds: not a worker kind",
        )))
        .await
        .expect("open");
    let error = finished(running).await.expect_err("refused");
    assert_eq!(error.code(), Some(Code::InvalidArgument));
    assert!(error.to_string().contains("hello.kinds"), "{error}");
}

#[tokio::test]
async fn a_lost_stream_stops_its_handlers_before_reconnecting() {
    let (address, mut calls) = fake_server().await;
    let script = Scripted::default();
    // A cancel grace past the deadline: only a cancellation ends the run in
    // time.
    let (stop, running) = spawn_worker(&address, &script, |builder| {
        builder.cancel_grace(DEADLINE * 6)
    });
    let mut call = next_call(&mut calls).await;
    call.next().await; // hello
    call.assign("a", "resize", json!({ "wait": true })).await;
    tokio::time::timeout(DEADLINE, script.started.notified())
        .await
        .expect("the handler started");
    call.responses
        .send(Err(Status::unavailable("gone")))
        .await
        .expect("open");
    // The handler waits for its cancellation only: the worker reconnects
    // once it has stopped it.
    let mut again = next_call(&mut calls).await;
    assert!(matches!(again.next().await, Message::Hello(_)));
    // A run on the new stream, so the worker is past connecting.
    again.assign("b", "resize", json!({})).await;
    let (id, _) = outcome(again.next_but_progress().await);
    assert_eq!(id, "b");
    stop.cancel();
    assert!(matches!(again.next().await, Message::Drain(_)));
    drop(again);
    finished(running).await.expect("clean stop");
}
