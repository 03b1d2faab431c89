//! Processors outside the server: the worker streams of `WorkerService`.
//!
//! The [`WorkerHub`] knows every worker stream connected to this process,
//! the kinds each runs, and which runs each holds. The manager starts a run
//! of a worker kind like any other, on one of its own slots, and the hub
//! hands it to a stream with room ([`WorkerHub::reserve`], then
//! [`Reservation::dispatch`]); the run's future waits for the worker's
//! outcome. The edge (`api::workers`) owns each stream's messages and talks
//! to the hub through a [`Connection`].
//!
//! Room is counted per stream, apart from the manager's slots: a stream's
//! slot is taken from the assignment until the worker sends an outcome for
//! it, also when the run stopped long before (cancelled, timed out), as the
//! contract says. The manager reads the room before it starts a run of a
//! worker kind (`room`), and wakes on [`WorkerHub::room_grew`] when a stream
//! connects or frees a slot.
//!
//! The hub is shared by the manager's task and the stream tasks, so its
//! state sits behind a `std` mutex, held only for map updates and never
//! across an `.await`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use serde_json::Value as JsonValue;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{ProcessorError, ProgressReporter, TaskContext};
use crate::task::{Progress, Task, TaskId};

/// Why the server stops a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A client cancelled the task.
    Cancelled,
    /// The run took longer than the task's timeout.
    TimedOut { seconds: u32 },
    /// The server is shutting down.
    ShuttingDown,
    /// The task is no longer this run's: another replica took it over or
    /// changed it.
    TakenOver,
}

impl fmt::Display for StopReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Cancelled => formatter.write_str("cancelled by client request"),
            StopReason::TimedOut { seconds } => write!(formatter, "timed out after {seconds}s"),
            StopReason::ShuttingDown => formatter.write_str("shutting down"),
            StopReason::TakenOver => formatter.write_str("taken over by another replica"),
        }
    }
}

/// What the hub asks a stream to send its worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Run this task (`RUNNING`, with its data).
    Assign(Arc<Task>),
    /// Stop this run.
    Cancel {
        task_id: TaskId,
        attempt: u32,
        reason: StopReason,
    },
    /// The stream drained: every assignment has its outcome.
    Drained,
}

/// How a worker says a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkOutcome {
    Result(JsonValue),
    Failure { message: String, permanent: bool },
}

/// What a worker said in its hello, once the edge checked it.
#[derive(Clone, Debug)]
pub struct WorkerHello {
    pub kinds: Vec<String>,
    pub max_concurrent: usize,
    pub name: String,
    /// The worker's address as this server sees it, if known.
    pub peer: Option<String>,
}

/// One connected worker stream, as `ListWorkers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub name: String,
    pub kinds: Vec<String>,
    pub max_concurrent: usize,
    pub in_flight: usize,
    pub peer: Option<String>,
    pub connected_at: SystemTime,
    pub draining: bool,
}

/// What an outcome or a progress report concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The run it names is on this stream.
    Delivered,
    /// No such run on this stream (never assigned, or already answered):
    /// ignored, as the contract says.
    Unknown,
    /// The run had stopped (cancelled, timed out): the outcome only freed
    /// its slot.
    Discarded,
}

/// The worker streams of this process; cheap to clone.
#[derive(Clone)]
pub struct WorkerHub {
    shared: Arc<Shared>,
}

struct Shared {
    /// The configured worker kinds, sorted.
    kinds: Vec<String>,
    state: Mutex<HubState>,
    /// Signalled when room may have grown; one waiter (the manager), so a
    /// signal while it is busy is kept for its next wait.
    room_grew: Notify,
}

#[derive(Default)]
struct HubState {
    /// Keyed by a number that grows with each connection, so iteration is
    /// in connection order.
    streams: BTreeMap<u64, Stream>,
    next_key: u64,
}

struct Stream {
    info: WorkerInfo,
    to_worker: mpsc::UnboundedSender<ToWorker>,
    /// Assignments without an outcome. The sender is gone once the run
    /// stopped waiting; the entry stays, holding the slot, until the
    /// worker answers.
    in_flight: HashMap<(TaskId, u32), InFlight>,
}

struct InFlight {
    outcome: Option<oneshot::Sender<WorkOutcome>>,
    progress: ProgressReporter,
    /// The worker was told to stop this run: its outcome only frees the
    /// slot, whenever it comes (also before the run noticed the stop).
    stopped: bool,
}

impl Stream {
    fn free(&self) -> usize {
        if self.info.draining {
            0
        } else {
            self.info
                .max_concurrent
                .saturating_sub(self.in_flight.len())
        }
    }

    fn serves(&self, kind: &str) -> bool {
        self.info.kinds.iter().any(|served| served == kind)
    }
}

impl fmt::Debug for WorkerHub {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("WorkerHub")
            .field("kinds", &self.shared.kinds)
            .finish_non_exhaustive()
    }
}

impl WorkerHub {
    /// A hub for the worker kinds `kinds`, with no stream yet.
    pub fn new(kinds: impl IntoIterator<Item = String>) -> Self {
        let mut kinds: Vec<String> = kinds.into_iter().collect();
        kinds.sort_unstable();
        kinds.dedup();
        Self {
            shared: Arc::new(Shared {
                kinds,
                state: Mutex::new(HubState::default()),
                room_grew: Notify::new(),
            }),
        }
    }

    /// The configured worker kinds, sorted.
    pub fn kinds(&self) -> &[String] {
        &self.shared.kinds
    }

    /// Whether `kind` is a worker kind.
    pub fn serves(&self, kind: &str) -> bool {
        self.shared.kinds.iter().any(|served| served == kind)
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // Nothing panics while holding it; if something did, the maps are
        // still consistent (each update is one insert or remove).
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes when room for a run may have grown (a stream connected,
    /// or one freed a slot) since the last time it completed.
    pub async fn room_grew(&self) {
        self.shared.room_grew.notified().await;
    }

    fn signal_room(&self) {
        self.shared.room_grew.notify_one();
    }

    /// How many runs of `kind` the streams could take now.
    pub fn room(&self, kind: &str) -> usize {
        self.state()
            .streams
            .values()
            .filter(|stream| stream.serves(kind))
            .map(Stream::free)
            .sum()
    }

    /// The free slots of every stream, each counted for one of the kinds
    /// its stream runs (round robin over them, starting at `rotation`), so
    /// that taking at most this many of each kind never takes more tasks
    /// than the streams can hold, however their kinds overlap. A claim on
    /// PostgreSQL asks for no more (`room` counts a slot for every kind of
    /// its stream); rotating the start shares the slots of a stream of
    /// several kinds between them from one claim to the next.
    pub fn slots_by_kind(&self, rotation: usize) -> HashMap<String, usize> {
        let mut slots: HashMap<String, usize> = HashMap::new();
        for stream in self.state().streams.values() {
            let kinds = &stream.info.kinds;
            if kinds.is_empty() {
                continue;
            }
            for slot in 0..stream.free() {
                let kind = &kinds[(rotation + slot) % kinds.len()];
                *slots.entry(kind.clone()).or_default() += 1;
            }
        }
        slots
    }

    /// The most kinds one stream with free slots runs (0 with none).
    pub fn most_kinds_of_a_free_stream(&self) -> usize {
        self.state()
            .streams
            .values()
            .filter(|stream| stream.free() > 0)
            .map(|stream| stream.info.kinds.len())
            .max()
            .unwrap_or(0)
    }

    /// How many streams serve `kind`, draining or not.
    pub fn streams_serving(&self, kind: &str) -> usize {
        self.state()
            .streams
            .values()
            .filter(|stream| stream.serves(kind))
            .count()
    }

    /// Every connected stream, in connection order.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.state()
            .streams
            .values()
            .map(|stream| WorkerInfo {
                in_flight: stream.in_flight.len(),
                ..stream.info.clone()
            })
            .collect()
    }

    /// Registers a stream that said `hello`. What the hub wants sent to the
    /// worker comes out of the receiver; the stream leaves the hub when the
    /// [`Connection`] is dropped, and its runs are then cut short.
    pub fn connect(&self, hello: WorkerHello) -> (Connection, mpsc::UnboundedReceiver<ToWorker>) {
        let (to_worker, receiver) = mpsc::unbounded_channel();
        let info = WorkerInfo {
            id: Uuid::now_v7(),
            name: hello.name,
            kinds: hello.kinds,
            max_concurrent: hello.max_concurrent,
            in_flight: 0,
            peer: hello.peer,
            connected_at: SystemTime::now(),
            draining: false,
        };
        let id = info.id;
        let key = {
            let mut state = self.state();
            let key = state.next_key;
            state.next_key += 1;
            state.streams.insert(
                key,
                Stream {
                    info,
                    to_worker,
                    in_flight: HashMap::new(),
                },
            );
            key
        };
        self.signal_room();
        let connection = Connection {
            hub: self.clone(),
            key,
            id,
        };
        (connection, receiver)
    }

    /// Takes a slot for a run of `kind` on the stream with the most room
    /// (among equals, the one that runs the fewest kinds, so a slot that
    /// only another kind could use stays free for it; then the first
    /// connected), or `None` when no stream has room. The slot is the run's once it is dispatched, and given back if
    /// the reservation is dropped first.
    pub fn reserve(&self, kind: &str, task_id: TaskId, attempt: u32) -> Option<Reservation> {
        let mut state = self.state();
        let (key, stream) = state
            .streams
            .iter_mut()
            .filter(|(_, stream)| stream.serves(kind) && stream.free() > 0)
            .max_by_key(|(key, stream)| {
                (
                    stream.free(),
                    std::cmp::Reverse(stream.info.kinds.len()),
                    std::cmp::Reverse(**key),
                )
            })?;
        let (sender, receiver) = oneshot::channel();
        stream.in_flight.insert(
            (task_id, attempt),
            InFlight {
                outcome: Some(sender),
                // Replaced by the run's own reporter at dispatch.
                progress: ProgressReporter::detached(),
                stopped: false,
            },
        );
        Some(Reservation {
            hub: self.clone(),
            key: *key,
            task_id,
            attempt,
            worker_name: stream.info.name.clone(),
            outcome: Some(receiver),
            dispatched: false,
        })
    }

    /// Tells the worker running `task_id`'s `attempt` to stop. Its slot
    /// stays taken until the worker answers.
    pub fn cancel(&self, task_id: TaskId, attempt: u32, reason: StopReason) {
        let to_worker = self.state().streams.values_mut().find_map(|stream| {
            let in_flight = stream.in_flight.get_mut(&(task_id, attempt))?;
            in_flight.stopped = true;
            Some(stream.to_worker.clone())
        });
        // A closed receiver means the stream is ending: its runs are cut
        // short anyway.
        if let Some(to_worker) = to_worker {
            let _ = to_worker.send(ToWorker::Cancel {
                task_id,
                attempt,
                reason,
            });
        }
    }

    fn release(&self, key: u64, task_id: TaskId, attempt: u32) {
        let removed = self
            .state()
            .streams
            .get_mut(&key)
            .and_then(|stream| stream.in_flight.remove(&(task_id, attempt)));
        if removed.is_some() {
            self.signal_room();
        }
    }
}

/// A slot taken on one stream for one run, not yet sent to its worker.
pub struct Reservation {
    hub: WorkerHub,
    key: u64,
    task_id: TaskId,
    attempt: u32,
    worker_name: String,
    outcome: Option<oneshot::Receiver<WorkOutcome>>,
    /// Once sent, the slot is the run's, freed by the worker's outcome.
    dispatched: bool,
}

impl Reservation {
    /// The name the stream's worker gave in its hello.
    pub fn worker_name(&self) -> &str {
        &self.worker_name
    }

    /// Sends `task` (the run's task, `RUNNING`) to the worker, and returns
    /// the run: it ends with the worker's outcome, is cut short when the
    /// stream goes away first, and returns at once when `context`'s
    /// cancellation fires (the manager has then told the worker why, and
    /// ignores what a stopped run returns).
    pub fn dispatch(
        mut self,
        task: Arc<Task>,
        context: TaskContext,
    ) -> impl Future<Output = Result<JsonValue, ProcessorError>> + Send + 'static {
        let outcome = self.outcome.take();
        let sent = {
            let mut state = self.hub.state();
            state.streams.get_mut(&self.key).is_some_and(|stream| {
                if let Some(in_flight) = stream.in_flight.get_mut(&(self.task_id, self.attempt)) {
                    in_flight.progress = context.progress.clone();
                }
                stream.to_worker.send(ToWorker::Assign(task)).is_ok()
            })
        };
        let worker = std::mem::take(&mut self.worker_name);
        self.dispatched = true;
        async move {
            let Some(outcome) = outcome.filter(|_| sent) else {
                return Err(ProcessorError::cut_short(format!(
                    "worker {worker:?} went away before it got the task"
                )));
            };
            tokio::select! {
                biased;
                outcome = outcome => match outcome {
                    Ok(WorkOutcome::Result(result)) => Ok(result),
                    Ok(WorkOutcome::Failure { message, permanent: true }) => {
                        Err(ProcessorError::permanent(message))
                    }
                    Ok(WorkOutcome::Failure { message, permanent: false }) => {
                        Err(ProcessorError::new(message))
                    }
                    Err(_) => Err(ProcessorError::cut_short(format!(
                        "worker {worker:?} went away while running the task"
                    ))),
                },
                () = context.cancellation.cancelled() => {
                    Err(ProcessorError::new("stopped"))
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.dispatched {
            self.hub.release(self.key, self.task_id, self.attempt);
        }
    }
}

/// A connected stream's side of the hub: what its worker says goes in
/// here. Dropping it disconnects the stream.
pub struct Connection {
    hub: WorkerHub,
    key: u64,
    id: Uuid,
}

impl fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Connection")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The stream's id, as `ListWorkers` shows it.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Progress of a run on this stream, passed on to the manager. Waits
    /// only when the manager is far behind, which slows this worker's
    /// stream, never the manager.
    pub async fn progress(&self, task_id: TaskId, attempt: u32, progress: Progress) -> Delivery {
        let reporter = self
            .hub
            .state()
            .streams
            .get(&self.key)
            .and_then(|stream| stream.in_flight.get(&(task_id, attempt)))
            .filter(|in_flight| {
                !in_flight.stopped
                    && in_flight
                        .outcome
                        .as_ref()
                        .is_some_and(|waiting| !waiting.is_closed())
            })
            .map(|in_flight| in_flight.progress.clone());
        match reporter {
            Some(reporter) => {
                reporter.report(task_id, attempt, progress).await;
                Delivery::Delivered
            }
            None => Delivery::Unknown,
        }
    }

    /// The outcome of a run on this stream: frees its slot, and decides the
    /// run if it still waits for one.
    pub fn outcome(&self, task_id: TaskId, attempt: u32, outcome: WorkOutcome) -> Delivery {
        let (in_flight, drained) = {
            let mut state = self.hub.state();
            let Some(stream) = state.streams.get_mut(&self.key) else {
                return Delivery::Unknown;
            };
            let in_flight = stream.in_flight.remove(&(task_id, attempt));
            let drained = stream.info.draining && stream.in_flight.is_empty();
            if drained && in_flight.is_some() {
                let _ = stream.to_worker.send(ToWorker::Drained);
            }
            (in_flight, drained)
        };
        let Some(in_flight) = in_flight else {
            return Delivery::Unknown;
        };
        if !drained {
            self.hub.signal_room();
        }
        // A run told to stop (cancelled, timed out) has its status already:
        // the outcome is discarded, whether or not the run still waits.
        if in_flight.stopped {
            return Delivery::Discarded;
        }
        match in_flight.outcome.map(|sender| sender.send(outcome)) {
            Some(Ok(())) => Delivery::Delivered,
            _ => Delivery::Discarded,
        }
    }

    /// How many assignments of this stream have no outcome yet.
    pub fn in_flight(&self) -> usize {
        self.hub
            .state()
            .streams
            .get(&self.key)
            .map_or(0, |stream| stream.in_flight.len())
    }

    /// The worker takes no more tasks. Answers whether it is drained
    /// already (nothing in flight).
    pub fn drain(&self) -> bool {
        let mut state = self.hub.state();
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return true;
        };
        stream.info.draining = true;
        stream.in_flight.is_empty()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping the stream drops the outcome senders of its runs: each
        // waiting run is cut short, and runs again.
        let removed = self.hub.state().streams.remove(&self.key);
        drop(removed);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::task::NewTask;

    fn hello(kinds: &[&str], max_concurrent: usize) -> WorkerHello {
        WorkerHello {
            kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
            max_concurrent,
            name: "w".into(),
            peer: None,
        }
    }

    fn task(kind: &str) -> Arc<Task> {
        let new_task = NewTask {
            tenant: String::new(),
            name: "t".into(),
            description: String::new(),
            kind: kind.into(),
            data: None,
            timeout_seconds: 60,
            labels: BTreeMap::new(),
            request_id: None,
            scheduling: Default::default(),
            trace_context: Default::default(),
        };
        Arc::new(Task::new(TaskId::generate(), new_task, SystemTime::now()))
    }

    fn context(task: &Task, cancellation: &CancellationToken) -> TaskContext {
        let (updates, _) = mpsc::channel(8);
        TaskContext::new(
            task.id,
            1,
            None,
            cancellation.clone(),
            ProgressReporter::new(updates),
        )
    }

    #[test]
    fn each_free_slot_counts_for_one_kind_of_its_stream_in_turn() {
        let hub = WorkerHub::new(["a".to_owned(), "b".to_owned()]);
        let (_both, _) = hub.connect(hello(&["a", "b"], 1));
        let (_only_a, _) = hub.connect(hello(&["a"], 1));
        // `room` counts the shared slot for both kinds...
        assert_eq!((hub.room("a"), hub.room("b")), (2, 1));
        // ...a claim may count it for one only, taking turns.
        let even = hub.slots_by_kind(0);
        let odd = hub.slots_by_kind(1);
        assert_eq!(even.values().sum::<usize>(), 2);
        assert_eq!(odd.values().sum::<usize>(), 2);
        assert_ne!(even, odd, "the shared slot goes to each kind in turn");
        assert_eq!(hub.most_kinds_of_a_free_stream(), 2);
    }

    #[test]
    fn a_reservation_prefers_the_stream_of_fewer_kinds_among_equals() {
        let hub = WorkerHub::new(["a".to_owned(), "b".to_owned()]);
        let (_both, _) = hub.connect(hello(&["a", "b"], 1));
        let (_only_a, _) = hub.connect(hello(&["a"], 1));
        let first = hub.reserve("a", TaskId::generate(), 1).expect("room for a");
        // The slot only `b` can use is still free for it.
        let second = hub.reserve("b", TaskId::generate(), 1).expect("room for b");
        assert_eq!((hub.room("a"), hub.room("b")), (0, 0));
        drop((first, second));
        assert_eq!(
            (hub.room("a"), hub.room("b")),
            (2, 1),
            "undispatched: given back"
        );
    }

    #[tokio::test]
    async fn an_outcome_after_a_stop_is_discarded_and_only_then_frees_the_slot() {
        let hub = WorkerHub::new(["a".to_owned()]);
        let (connection, mut to_worker) = hub.connect(hello(&["a"], 1));
        let task = task("a");
        let cancellation = CancellationToken::new();
        let reservation = hub.reserve("a", task.id, 1).expect("room");
        let run = reservation.dispatch(Arc::clone(&task), context(&task, &cancellation));
        assert!(matches!(to_worker.recv().await, Some(ToWorker::Assign(_))));
        hub.cancel(task.id, 1, StopReason::Cancelled);
        assert!(matches!(
            to_worker.recv().await,
            Some(ToWorker::Cancel {
                reason: StopReason::Cancelled,
                ..
            })
        ));
        assert_eq!(
            hub.room("a"),
            0,
            "the slot is the stopped run's until it answers"
        );
        // The run has not noticed its stop yet: the outcome still does not
        // decide it.
        let outcome = connection.outcome(task.id, 1, WorkOutcome::Result(JsonValue::Null));
        assert_eq!(outcome, Delivery::Discarded);
        assert_eq!(hub.room("a"), 1);
        cancellation.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the run ends");
        assert!(ended.is_err(), "a stopped run returns no result: {ended:?}");
        assert_eq!(
            connection.outcome(task.id, 1, WorkOutcome::Result(JsonValue::Null)),
            Delivery::Unknown,
            "a second outcome is for no run"
        );
    }

    #[tokio::test]
    async fn a_stream_that_goes_away_cuts_its_runs_short() {
        let hub = WorkerHub::new(["a".to_owned()]);
        let (connection, _to_worker) = hub.connect(hello(&["a"], 2));
        let task = task("a");
        let cancellation = CancellationToken::new();
        let run = hub
            .reserve("a", task.id, 1)
            .expect("room")
            .dispatch(Arc::clone(&task), context(&task, &cancellation));
        drop(connection);
        let ended = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the run ends");
        let error = ended.expect_err("no outcome came");
        assert!(error.is_cut_short(), "{error:?}");
        assert_eq!(hub.room("a"), 0);
        assert!(hub.list().is_empty());
    }
}
