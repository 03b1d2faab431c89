//! The `WorkerService` edge: one task per `Work` stream carries the hub's
//! assignments and cancellations to the worker and the worker's progress
//! and outcomes to the hub, and checks the protocol on the way.

use std::{pin::Pin, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::{ApiError, json::json_from_proto};
use crate::{
    auth::PeerInfo,
    manager::{ManagerHandle, Scope, WorkerRow, worker_row},
    metrics::Metrics,
    pb::{self, worker_service_server::WorkerService},
    processor::remote::{
        Connection, Delivery, StopReason, ToWorker, WorkOutcome, WorkerHello, WorkerHub,
    },
    task::{Progress, Task, TaskId},
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// The most runs one stream may hold at once.
pub const MAX_WORKER_CONCURRENCY: u32 = 10_000;

/// The longest `worker_name`, in characters.
const MAX_WORKER_NAME_CHARS: usize = 200;

/// Messages for the worker waiting to be written to its stream: beyond
/// them the stream's task waits for the worker to read.
const RESPONSE_BUFFER: usize = 16;

/// The stream type of `Work`.
pub type WorkStream =
    Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send + 'static>>;

/// The `WorkerService` implementation.
#[derive(Clone, Debug)]
pub struct WorkerApi {
    /// Without worker kinds, a hub of none: every hello is refused.
    workers: WorkerHub,
    /// For the workers of other replicas (PostgreSQL).
    manager: ManagerHandle,
    /// This server's node name, shown with each worker.
    node: String,
    metrics: Metrics,
    /// Fires once running tasks were told to stop at shutdown: streams end
    /// `UNAVAILABLE`.
    shutdown: CancellationToken,
}

impl WorkerApi {
    pub fn new(
        workers: WorkerHub,
        manager: ManagerHandle,
        node: String,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            workers,
            manager,
            node,
            metrics,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type WorkStream = WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        // Our listener's connections carry `PeerInfo` (tonic's own
        // `remote_addr` knows only its TCP listener's).
        // A worker runs tasks of every tenant: a principal bound to one
        // must not see the others' data.
        if let Scope::Tenant(tenant) = super::scope_of(&request) {
            return Err(Status::permission_denied(format!(
                "a worker runs the tasks of every tenant, and this principal is bound to tenant \
                 {tenant:?}: give workers a principal without a tenant"
            )));
        }
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(PeerInfo::remote_addr)
            .or_else(|| request.remote_addr())
            .map(|address| address.to_string());
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => first,
            () = self.shutdown.cancelled() => return Err(shutting_down()),
        };
        let first = match first {
            Ok(Ok(first)) => first,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(ApiError::invalid(
                    "hello",
                    format!("no hello came within {}s", HELLO_TIMEOUT.as_secs()),
                )
                .into());
            }
        };
        let hello = hello_of(first, &self.workers, peer)?;
        let (connection, to_worker) = self.workers.connect(hello.clone());
        info!(
            worker = %hello.name,
            stream = %connection.id(),
            kinds = ?hello.kinds,
            max_concurrent = hello.max_concurrent,
            peer = hello.peer.as_deref().unwrap_or("unknown"),
            "worker connected"
        );
        let (sender, receiver) = mpsc::channel(RESPONSE_BUFFER);
        let stream = WorkerStream {
            connection,
            name: hello.name,
            to_worker,
            sender,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(stream.serve(inbound, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        // This replica's own, live; the others' from the shared table.
        let mut workers: Vec<pb::Worker> = self
            .workers
            .list()
            .into_iter()
            .map(|info| worker_message(worker_row(info, &self.node)))
            .collect();
        let elsewhere = self
            .manager
            .workers_of_other_replicas(&self.node)
            .await
            .map_err(|error| Status::from(ApiError::from(error)))?;
        workers.extend(
            elsewhere
                .unwrap_or_default()
                .into_iter()
                .map(worker_message),
        );
        workers.sort_by(|a, b| {
            let key = |worker: &pb::Worker| {
                worker
                    .connected_at
                    .as_ref()
                    .map(|at| (at.seconds, at.nanos))
            };
            key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; connect again (to another replica)")
}

/// One `Work` stream after its hello.
struct WorkerStream {
    connection: Connection,
    name: String,
    to_worker: mpsc::UnboundedReceiver<ToWorker>,
    sender: mpsc::Sender<Result<pb::WorkResponse, Status>>,
    metrics: Metrics,
}

/// How a stream ends.
enum End {
    /// Drained, or the worker closed its side: `OK`.
    Done,
    /// The worker broke the protocol, or the server stops.
    Refused(Status),
    /// The worker is gone (its connection, or the call, ended).
    Gone,
}

impl WorkerStream {
    async fn serve(mut self, mut inbound: Streaming<pb::WorkRequest>, shutdown: CancellationToken) {
        let end = loop {
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // What the hub still has for the worker (the
                    // cancellations of shutdown) goes out first.
                    while let Ok(message) = self.to_worker.try_recv() {
                        if self.send_to_worker(Some(message)).await.is_err() {
                            break;
                        }
                    }
                    Err(End::Refused(shutting_down()))
                }
                message = self.to_worker.recv() => self.send_to_worker(message).await,
                message = inbound.message() => self.take_from_worker(message).await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        let in_flight = self.connection.in_flight();
        match end {
            End::Done => debug!(worker = %self.name, "worker stream ended"),
            End::Refused(status) => {
                info!(worker = %self.name, code = ?status.code(), message = status.message(), "worker stream ended by the server");
                let _ = self.sender.send(Err(status)).await;
            }
            End::Gone => info!(worker = %self.name, in_flight, "worker went away"),
        }
        if in_flight > 0 {
            warn!(worker = %self.name, in_flight, "worker stream ended with runs in flight; they run again");
            self.metrics
                .worker_outcomes("cut_short", u64::try_from(in_flight).unwrap_or(u64::MAX));
        }
        // Dropping the connection takes the stream out of the hub and cuts
        // its runs short.
    }

    /// Passes on what the hub wants the worker told.
    async fn send_to_worker(&mut self, message: Option<ToWorker>) -> Result<(), End> {
        let response = match message {
            Some(ToWorker::Assign(task)) => {
                pb::work_response::Message::Assignment(assignment(&task))
            }
            Some(ToWorker::Cancel {
                task_id,
                attempt,
                reason,
            }) => pb::work_response::Message::Cancellation(pb::WorkCancellation {
                task_id: task_id.to_string(),
                attempt,
                reason: reason.to_string(),
                cause: cause_of(&reason).into(),
            }),
            Some(ToWorker::Drained) | None => return Err(End::Done),
        };
        let response = pb::WorkResponse {
            message: Some(response),
        };
        self.sender.send(Ok(response)).await.map_err(|_| End::Gone)
    }

    /// Takes one message of the worker.
    async fn take_from_worker(
        &mut self,
        message: Result<Option<pb::WorkRequest>, Status>,
    ) -> Result<(), End> {
        use pb::work_request::Message;
        let request = match message {
            Ok(Some(request)) => request,
            // The worker closed its side: it can send no outcome now.
            Ok(None) => return Err(End::Done),
            Err(status) => {
                debug!(worker = %self.name, error = %status, "worker stream broke");
                return Err(End::Gone);
            }
        };
        match request.message {
            Some(Message::Hello(_)) => Err(refuse(ApiError::invalid(
                "hello",
                "sent twice: a stream says hello once, first",
            ))),
            Some(Message::Progress(progress)) => {
                let task_id = task_id_of("progress", &progress.task_id)?;
                let Some(reported) = progress.progress else {
                    return Ok(());
                };
                let reported = Progress {
                    percent: reported.percent.min(100),
                    message: reported.message,
                };
                let delivery = self
                    .connection
                    .progress(task_id, progress.attempt, reported)
                    .await;
                if delivery != Delivery::Delivered {
                    debug!(task_id = %task_id, attempt = progress.attempt, "progress for a run that is not running here ignored");
                }
                Ok(())
            }
            Some(Message::Outcome(outcome)) => self.take_outcome(outcome),
            Some(Message::Drain(_)) => {
                info!(worker = %self.name, in_flight = self.connection.in_flight(), "worker drains");
                if self.connection.drain() {
                    return Err(End::Done);
                }
                Ok(())
            }
            None => Err(refuse(ApiError::invalid(
                "message",
                "an empty WorkRequest: set hello, progress, outcome or drain",
            ))),
        }
    }

    fn take_outcome(&mut self, outcome: pb::WorkOutcome) -> Result<(), End> {
        use pb::work_outcome::Outcome;
        let task_id = task_id_of("outcome", &outcome.task_id)?;
        let (decided, label) = match outcome.outcome {
            Some(Outcome::Result(result)) => {
                let result = json_from_proto(&result).map_err(|error| {
                    refuse(ApiError::invalid("outcome.result", error.to_string()))
                })?;
                (WorkOutcome::Result(result), "completed")
            }
            Some(Outcome::Failure(failure)) => (
                WorkOutcome::Failure {
                    message: failure.message,
                    permanent: failure.permanent,
                },
                "failed",
            ),
            None => {
                return Err(refuse(ApiError::invalid(
                    "outcome.outcome",
                    "set result or failure",
                )));
            }
        };
        let label = match self.connection.outcome(task_id, outcome.attempt, decided) {
            Delivery::Delivered => label,
            Delivery::Discarded => "ignored",
            Delivery::Unknown => {
                debug!(task_id = %task_id, attempt = outcome.attempt, "outcome for a run this stream does not hold ignored");
                "ignored"
            }
        };
        self.metrics.worker_outcomes(label, 1);
        Ok(())
    }
}

/// The `task_id` of a worker's `progress` or `outcome`.
fn task_id_of(message: &str, task_id: &str) -> Result<TaskId, End> {
    task_id.parse().map_err(|_| {
        refuse(ApiError::invalid(
            format!("{message}.task_id"),
            format!("{task_id:?} is not a UUID"),
        ))
    })
}

fn refuse(error: ApiError) -> End {
    End::Refused(error.into())
}

/// Checks the first message of a stream: a hello naming worker kinds of
/// this server, with a sane `max_concurrent` and name.
fn hello_of(
    first: Option<pb::WorkRequest>,
    workers: &WorkerHub,
    peer: Option<String>,
) -> Result<WorkerHello, ApiError> {
    let hello = match first.and_then(|request| request.message) {
        Some(pb::work_request::Message::Hello(hello)) => hello,
        Some(_) => {
            return Err(ApiError::invalid(
                "hello",
                "the first message of a stream must be a hello",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "hello",
                "the stream ended (or sent an empty message) before its hello",
            ));
        }
    };
    let configured = workers.kinds();
    if hello.kinds.is_empty() {
        return Err(ApiError::invalid(
            "hello.kinds",
            "must name at least one kind",
        ));
    }
    for (index, kind) in hello.kinds.iter().enumerate() {
        let field = format!("hello.kinds[{index}]");
        if !configured.contains(kind) {
            let known = if configured.is_empty() {
                "this server has no worker kinds (setting worker_kinds)".to_owned()
            } else {
                format!("worker kinds: {}", configured.join(", "))
            };
            return Err(ApiError::invalid(
                field,
                format!("{kind:?} is not a worker kind of this server; {known}"),
            ));
        }
        if hello.kinds[..index].contains(kind) {
            return Err(ApiError::invalid(field, format!("{kind:?} is named twice")));
        }
    }
    if hello.max_concurrent == 0 || hello.max_concurrent > MAX_WORKER_CONCURRENCY {
        return Err(ApiError::invalid(
            "hello.max_concurrent",
            format!(
                "must be 1 to {MAX_WORKER_CONCURRENCY}, got {}",
                hello.max_concurrent
            ),
        ));
    }
    let name = hello.worker_name.trim();
    if name.chars().count() > MAX_WORKER_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "hello.worker_name",
            format!(
                "must be at most {MAX_WORKER_NAME_CHARS} characters, without control characters"
            ),
        ));
    }
    Ok(WorkerHello {
        kinds: hello.kinds,
        max_concurrent: usize::try_from(hello.max_concurrent).unwrap_or(usize::MAX),
        name: if name.is_empty() {
            "worker".to_owned()
        } else {
            name.to_owned()
        },
        peer,
    })
}

fn assignment(task: &Task) -> pb::WorkAssignment {
    let mut trace_context = std::collections::HashMap::new();
    if !task.trace_context.traceparent.is_empty() {
        trace_context.insert(
            "traceparent".to_owned(),
            task.trace_context.traceparent.clone(),
        );
        if !task.trace_context.tracestate.is_empty() {
            trace_context.insert(
                "tracestate".to_owned(),
                task.trace_context.tracestate.clone(),
            );
        }
    }
    pb::WorkAssignment {
        task: Some(pb::Task::from(task)),
        trace_context,
    }
}

fn cause_of(reason: &StopReason) -> pb::CancellationCause {
    match reason {
        StopReason::Cancelled => pb::CancellationCause::Cancelled,
        StopReason::TimedOut { .. } => pb::CancellationCause::TimedOut,
        StopReason::ShuttingDown => pb::CancellationCause::ShuttingDown,
        StopReason::TakenOver => pb::CancellationCause::TakenOver,
    }
}

/// A worker stream as `ListWorkers` shows it (this replica's, or another's
/// from the shared table).
fn worker_message(row: WorkerRow) -> pb::Worker {
    pb::Worker {
        id: row.id.to_string(),
        worker_name: row.name,
        kinds: row.kinds,
        max_concurrent: u32::try_from(row.max_concurrent).unwrap_or(u32::MAX),
        in_flight: u32::try_from(row.in_flight).unwrap_or(u32::MAX),
        node: row.node,
        peer: row.peer,
        connected_at: Some(prost_types::Timestamp::from(row.connected_at)),
    }
}
