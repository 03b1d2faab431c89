//! One connection's life: connect, `hello`, then run assignments until the
//! stream ends, and say how it ended so the worker knows whether to
//! reconnect, stop, or give up.
//!
//! The loop owns the stream's state (which runs are going, their
//! cancellation) and is the only sender of outcomes and `drain`; handlers
//! send only progress. It never waits for a handler: each runs in its own
//! task and comes back through a `JoinSet`.

use std::{any::Any, collections::HashMap, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use serde_json::Value as JsonValue;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, codec::Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Handler, Job, JobError,
    builder::Settings,
    job::{Cancellation, JobControl, new_job},
};
use crate::{
    api::json::{json_from_proto, json_to_proto},
    errors::error_chain,
    pb::{
        self, WorkRequest, WorkResponse, work_outcome::Outcome, work_request::Message,
        work_response::Message as ServerMessage, worker_service_client::WorkerServiceClient,
    },
};

/// Messages to the server that may wait for the connection, besides one
/// per running task: progress waits for room here, and so slows its
/// handler rather than piling up.
const OUTGOING_SLACK: usize = 32;

/// The largest message the worker accepts: an assignment carries the
/// task's `data`, which the server already bounds (`max_data_bytes`).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A stream that lasted this long was a good connection even without an
/// assignment, so the next reconnect starts from the shortest wait.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How a session ended.
pub(super) enum SessionEnd {
    /// The worker stopped on purpose: shutdown was signalled, and the stream
    /// drained (or the grace period ran out and it was closed).
    Stopped,
    /// The server refused the worker in a way no reconnect fixes.
    Refused(Box<Status>),
    /// The stream ended, or never started, without the worker asking.
    Lost {
        reason: String,
        /// Whether the connection worked (the next wait starts short).
        healthy: bool,
    },
}

/// One run on this stream: the task id and its attempt.
type RunKey = (String, u32);

/// Connects, says hello and runs assignments until the stream ends or
/// `stop` fires and the stream has drained.
pub(super) async fn run_session(settings: &Settings, stop: &CancellationToken) -> SessionEnd {
    let connected = tokio::select! {
        biased;
        () = stop.cancelled() => return SessionEnd::Stopped,
        connected = settings.endpoint.connect() => connected,
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(error) => {
            return SessionEnd::Lost {
                reason: format!("cannot connect: {}", error_chain(&error)),
                healthy: false,
            };
        }
    };
    let capacity = OUTGOING_SLACK + settings.hello.max_concurrent as usize;
    let (outgoing, outgoing_receiver) = mpsc::channel(capacity);
    let hello = WorkRequest {
        message: Some(Message::Hello(settings.hello.clone())),
    };
    // The receiver is right here and the channel empty: this cannot fail.
    let _ = outgoing.try_send(hello);
    // Handlers hold senders (for progress) that may outlive the session;
    // `closing` ends the request stream anyway, so the server learns at once
    // that the worker is gone and gives its running tasks back.
    let closing = CancellationToken::new();
    let requests =
        ReceiverStream::new(outgoing_receiver).take_until(closing.clone().cancelled_owned());
    let mut request = Request::new(requests);
    if let Some(authorization) = &settings.authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
    }
    let mut client = WorkerServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let answered = tokio::select! {
        biased;
        () = stop.cancelled() => return SessionEnd::Stopped,
        answered = client.work(request) => answered,
    };
    let incoming = match answered {
        Ok(response) => response.into_inner(),
        Err(status) => return ended_by(status, false),
    };
    info!(server = %settings.address, "connected; waiting for tasks");
    let mut session = Session {
        settings,
        outgoing,
        running: HashMap::new(),
        runs: JoinSet::new(),
        connected_at: Instant::now(),
        assigned: false,
    };
    let end = session.run(incoming, stop).await;
    closing.cancel();
    session.stop_runs().await;
    end
}

/// The state of one stream.
struct Session<'a> {
    settings: &'a Settings,
    outgoing: mpsc::Sender<WorkRequest>,
    /// The runs that have no outcome yet, to cancel them.
    running: HashMap<RunKey, JobControl>,
    runs: JoinSet<(RunKey, Outcome)>,
    connected_at: Instant,
    /// Whether the server handed out anything: then the connection worked.
    assigned: bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut incoming: Streaming<WorkResponse>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            // Biased, stop first: once shutdown is signalled, `drain` goes
            // out before any further outcome, so the server never hands a
            // freed slot to a worker that is stopping.
            tokio::select! {
                biased;
                () = stop.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + self.settings.shutdown_grace);
                    info!(running = self.running.len(), "stopping: draining");
                    let drain = WorkRequest { message: Some(Message::Drain(pb::WorkDrain {})) };
                    if self.outgoing.send(drain).await.is_err() {
                        return SessionEnd::Stopped;
                    }
                }
                () = until(drain_deadline), if drain_deadline.is_some() => {
                    warn!(
                        running = self.running.len(),
                        "shutdown grace over: closing the stream; the server runs these tasks again"
                    );
                    return SessionEnd::Stopped;
                }
                Some(joined) = self.runs.join_next(), if !self.runs.is_empty() => {
                    self.finish(joined).await;
                }
                message = incoming.message() => match message {
                    Ok(Some(response)) => self.receive(response),
                    // After a drain, OK is the server saying every outcome
                    // arrived: the end we asked for.
                    Ok(None) if drain_deadline.is_some() => return SessionEnd::Stopped,
                    Ok(None) => {
                        return SessionEnd::Lost {
                            reason: "the server ended the stream".into(),
                            healthy: self.healthy(),
                        };
                    }
                    Err(status) if drain_deadline.is_some() => {
                        warn!(code = ?status.code(), message = status.message(), "stream ended while draining");
                        return SessionEnd::Stopped;
                    }
                    Err(status) => return ended_by(status, self.healthy()),
                },
            }
        }
    }

    fn healthy(&self) -> bool {
        self.assigned || self.connected_at.elapsed() >= HEALTHY_AFTER
    }

    fn receive(&mut self, response: WorkResponse) {
        match response.message {
            Some(ServerMessage::Assignment(assignment)) => self.start(assignment),
            Some(ServerMessage::Cancellation(cancellation)) => {
                let key = (cancellation.task_id, cancellation.attempt);
                // Unknown: the run already ended and its outcome is on its way.
                if let Some(control) = self.running.get(&key) {
                    info!(task_id = %key.0, attempt = key.1, reason = %cancellation.reason, "run cancelled");
                    control.cancel(Cancellation {
                        reason: cancellation.reason,
                        cause: pb::CancellationCause::try_from(cancellation.cause)
                            .unwrap_or(pb::CancellationCause::Unspecified),
                    });
                }
            }
            // A message a newer server added: nothing this worker can do.
            None => debug!("ignored a message of an unknown type"),
        }
    }

    fn start(&mut self, assignment: pb::WorkAssignment) {
        let Some(task) = assignment.task else {
            warn!("ignored an assignment without a task");
            return;
        };
        self.assigned = true;
        let key: RunKey = (task.id.clone(), task.attempt);
        if self.running.contains_key(&key) {
            warn!(task_id = %key.0, attempt = key.1, "ignored a repeated assignment");
            return;
        }
        let span = info_span!("job", task_id = %task.id, kind = %task.kind, attempt = task.attempt);
        let handler = self.settings.handlers.get(&task.kind).cloned();
        let data = task.data.as_ref().map(json_from_proto).transpose();
        let outcome = match (handler, data) {
            (None, _) => Err(JobError::permanent(format!(
                "this worker has no handler for kind {:?}",
                task.kind
            ))),
            (Some(_), Err(error)) => Err(JobError::permanent(format!("unreadable data: {error}"))),
            (Some(handler), Ok(data)) => {
                let (job, control) = new_job(
                    task,
                    data.unwrap_or(JsonValue::Null),
                    assignment.trace_context,
                    self.outgoing.clone(),
                );
                let supervised =
                    supervise(handler, job, control.clone(), self.settings.cancel_grace);
                self.running.insert(key.clone(), control);
                self.runs
                    .spawn(async move { (key, supervised.await) }.instrument(span));
                return;
            }
        };
        self.runs
            .spawn(async move { (key, outcome_of(outcome)) }.instrument(span));
    }

    async fn finish(&mut self, joined: Result<(RunKey, Outcome), tokio::task::JoinError>) {
        let ((task_id, attempt), outcome) = match joined {
            Ok(finished) => finished,
            // Panics are caught in `supervise` and runs are aborted only
            // when the session is over, so this is not expected.
            Err(error) => {
                warn!(error = %error, "a run ended without an outcome");
                return;
            }
        };
        self.running.remove(&(task_id.clone(), attempt));
        let completed = matches!(outcome, Outcome::Result(_));
        debug!(%task_id, attempt, completed, "sending the outcome");
        let message = WorkRequest {
            message: Some(Message::Outcome(pb::WorkOutcome {
                task_id,
                attempt,
                outcome: Some(outcome),
            })),
        };
        // A closed stream loses the outcome, and the server gives the task
        // to another run: nothing to do here.
        let _ = self.outgoing.send(message).await;
    }

    /// Tells every handler left to stop, waits for them up to the cancel
    /// grace, then drops them. Their tasks are the server's again.
    async fn stop_runs(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        for control in self.running.values() {
            control.cancel(Cancellation {
                reason: String::new(),
                cause: pb::CancellationCause::Unspecified,
            });
        }
        let runs = &mut self.runs;
        let finished = async { while runs.join_next().await.is_some() {} };
        if tokio::time::timeout(self.settings.cancel_grace, finished)
            .await
            .is_err()
        {
            warn!(
                left = self.runs.len(),
                "handlers did not stop within the cancel grace; dropped"
            );
        }
        self.runs.shutdown().await;
        self.running.clear();
    }
}

/// Runs `handler` on `job` and turns whatever it does into an outcome: a
/// value, an error, a panic, or not stopping within `cancel_grace` of its
/// cancellation (then it is dropped, so the slot frees).
async fn supervise(
    handler: Arc<dyn Handler>,
    job: Job,
    control: JobControl,
    cancel_grace: Duration,
) -> Outcome {
    let running = AssertUnwindSafe(async move { handler.call(job).await }).catch_unwind();
    let overdue = async {
        control.cancelled().await;
        tokio::time::sleep(cancel_grace).await;
    };
    let result = tokio::select! {
        finished = running => finished.unwrap_or_else(|panic| {
            Err(JobError::retryable(format!("the handler panicked: {}", panic_message(&*panic))))
        }),
        () = overdue => Err(JobError::retryable(format!(
            "the handler did not stop within {cancel_grace:?} of its cancellation"
        ))),
    };
    if let Err(error) = &result {
        info!(permanent = error.is_permanent(), error = %error, "run failed");
    }
    outcome_of(result)
}

fn outcome_of(result: Result<JsonValue, JobError>) -> Outcome {
    match result {
        Ok(value) => Outcome::Result(json_to_proto(&value)),
        Err(error) => Outcome::Failure(pb::WorkFailure {
            permanent: error.is_permanent(),
            message: error.message().to_owned(),
        }),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Whether a status ends the worker or only this stream.
fn ended_by(status: Status, healthy: bool) -> SessionEnd {
    match status.code() {
        // Configuration the server refuses: a kind it does not hand out, a
        // bad hello, a wrong token or role. Every reconnect would get the
        // same answer.
        Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied => {
            SessionEnd::Refused(Box::new(status))
        }
        code => SessionEnd::Lost {
            reason: format!("{code:?}: {}", status.message()),
            healthy,
        },
    }
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
