//! Prometheus metrics: what the service counts, and the text exposition
//! served on the admin port.
//!
//! Counters are bumped where things happen (the manager for tasks, the RPC
//! layer for calls); gauges of current state are read from the manager when
//! scraped, so they can never drift.

use std::{borrow::Cow, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::task::TaskStatus;

/// What the service holds right now, for the gauges: the caller (the
/// admin endpoint) reads it from the manager, so metrics need not know the
/// manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Tasks waiting for a slot.
    pub pending: usize,
    /// Tasks waiting for a retry's back-off to pass (then for a slot).
    pub retrying: usize,
    /// Slots in use.
    pub running: usize,
    /// Open watch streams.
    pub watchers: usize,
    /// Tasks held by this process, finished ones included.
    pub retained_tasks: usize,
    /// Bytes of tasks' data and results held in memory.
    pub held_bytes: u64,
    /// Per worker kind (`worker_kinds`): streams connected, and tasks
    /// waiting while none is.
    pub worker_kinds: Vec<WorkerKindOccupancy>,
}

/// The gauges of one worker kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerKindOccupancy {
    pub kind: String,
    /// Worker streams connected here that run the kind.
    pub connected: usize,
    /// Tasks of the kind waiting to start while no worker runs it (0 while
    /// one does).
    pub waiting_without_worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: Cow<'static, str>,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FiringLabels {
    outcome: &'static str,
}

/// What became of a schedule's due firing, for
/// `task_processor_schedule_firings_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiringOutcome {
    /// It created a task.
    Created,
    /// Skipped: the previous firing's task had not finished (overlap SKIP).
    Skipped,
    /// Held back: the server could not take the task (full queue or memory
    /// budget, a store that fails); it fires once it can.
    Refused,
}

impl FiringOutcome {
    fn label(self) -> &'static str {
        match self {
            FiringOutcome::Created => "created",
            FiringOutcome::Skipped => "skipped",
            FiringOutcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Cow<'static, str>,
}

/// Builds histograms with fixed buckets for a family.
#[derive(Clone, Copy)]
struct Buckets {
    start: f64,
    factor: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

/// The task metrics of one kind. Clones share the same series.
#[derive(Clone, Debug)]
pub struct KindMetrics {
    created: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    run_seconds: Histogram,
    retried: Counter,
    start_delay_seconds: Histogram,
    assigned: Counter,
}

impl KindMetrics {
    /// A run went to a remote worker.
    pub fn task_assigned(&self) {
        self.assigned.inc();
    }

    pub fn task_created(&self) {
        self.created.inc();
    }

    /// A run failed and the task will run again (`RETRYING`).
    pub fn task_retried(&self) {
        self.retried.inc();
    }

    /// A run started `delay` after the task became ready (its creation,
    /// its `run_after`, or the end of a retry's back-off).
    pub fn task_started(&self, delay: Duration) {
        self.start_delay_seconds.observe(delay.as_secs_f64());
    }

    /// A task reached `status`; `run_time` is set when it had started.
    pub fn task_finished(&self, status: TaskStatus, run_time: Option<Duration>) {
        match status {
            TaskStatus::Completed => self.completed.inc(),
            TaskStatus::Failed => self.failed.inc(),
            TaskStatus::Cancelled => self.cancelled.inc(),
            // Not terminal: nothing finished.
            TaskStatus::Pending | TaskStatus::Running | TaskStatus::Retrying => return,
        };
        if let Some(run_time) = run_time {
            self.run_seconds.observe(run_time.as_secs_f64());
        }
    }
}

/// Reads a count that something else keeps, at each scrape.
type CountReader = Arc<dyn Fn() -> u64 + Send + Sync>;

/// `log_lines_dropped`: the log writer counts the lines it drops itself
/// (see `telemetry`), so the counter is read from it when scraped; without
/// a writer (a server in a test, a bench) it stays 0 but is still there.
struct DroppedLogLines {
    read: Option<CountReader>,
}

impl std::fmt::Debug for DroppedLogLines {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DroppedLogLines")
    }
}

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.read.as_ref().map_or(0, |read| read()));
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log writer had too many waiting (stdout read too \
             slowly); logging never makes a call or the manager wait",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Every metric of the process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    tasks_created: Family<KindLabels, Counter>,
    tasks_finished: Family<FinishedLabels, Counter>,
    task_run_seconds: Family<KindLabels, Histogram, Buckets>,
    task_retries: Family<KindLabels, Counter>,
    task_start_delay_seconds: Family<KindLabels, Histogram, Buckets>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration_seconds: Family<MethodLabels, Histogram, Buckets>,
    queue_depth: Gauge,
    retrying_tasks: Gauge,
    running_tasks: Gauge,
    active_watchers: Gauge,
    retained_tasks: Gauge,
    held_bytes: Gauge,
    store_commit_seconds: Histogram,
    store_commit_writes: Histogram,
    store_commit_failures: Counter,
    grpc_accept_errors: Family<AcceptLabels, Counter>,
    schedule_firings: Family<FiringLabels, Counter>,
    worker_assignments: Family<KindLabels, Counter>,
    worker_outcomes: Family<OutcomeLabels, Counter>,
    workers_connected: Family<KindLabels, Gauge>,
    tasks_waiting_for_worker: Family<KindLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(None)
    }

    /// Like [`new`](Self::new), with the count of log lines the log writer
    /// dropped, read from `dropped_log_lines` at each scrape.
    pub fn with_dropped_log_lines(
        dropped_log_lines: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        Self::build(Some(Arc::new(dropped_log_lines)))
    }

    fn build(dropped_log_lines: Option<CountReader>) -> Self {
        let mut registry = Registry::with_prefix("task_processor");
        let tasks_created = Family::<KindLabels, Counter>::default();
        registry.register(
            "tasks_created",
            "Tasks accepted, by kind",
            tasks_created.clone(),
        );
        let tasks_finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "tasks_finished",
            "Tasks that reached a terminal status, by kind and status",
            tasks_finished.clone(),
        );
        // 1 ms to about 4.4 minutes.
        let run_buckets = Buckets {
            start: 0.001,
            factor: 4.0,
            count: 10,
        };
        let task_run_seconds = Family::new_with_constructor(run_buckets);
        registry.register(
            "task_run_seconds",
            "Run time of finished tasks, from start to terminal status, by kind",
            task_run_seconds.clone(),
        );
        let task_retries = Family::<KindLabels, Counter>::default();
        registry.register(
            "task_retries",
            "Failed runs after which the task runs again (RUNNING -> RETRYING), by kind",
            task_retries.clone(),
        );
        let task_start_delay_seconds = Family::new_with_constructor(run_buckets);
        registry.register(
            "task_start_delay_seconds",
            "Time from when a task became ready (its creation, its run_after, or the end of a \
             retry's back-off) to the start of its run, by kind: queue wait, and how late \
             delayed tasks start",
            task_start_delay_seconds.clone(),
        );
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls, by method and status code",
            rpc_requests.clone(),
        );
        // 50 µs to about 13 seconds.
        let rpc_buckets = Buckets {
            start: 0.000_05,
            factor: 4.0,
            count: 10,
        };
        let rpc_duration_seconds = Family::new_with_constructor(rpc_buckets);
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency (streams: until the stream ends), by method",
            rpc_duration_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Tasks waiting to run", queue_depth.clone());
        let retrying_tasks = Gauge::default();
        registry.register(
            "retrying_tasks",
            "Tasks waiting for a retry's back-off to pass, then to run again",
            retrying_tasks.clone(),
        );
        let running_tasks = Gauge::default();
        registry.register(
            "running_tasks",
            "Worker slots in use",
            running_tasks.clone(),
        );
        let active_watchers = Gauge::default();
        registry.register(
            "active_watchers",
            "Open WatchTask streams",
            active_watchers.clone(),
        );
        let retained_tasks = Gauge::default();
        registry.register(
            "retained_tasks",
            "Tasks held in memory, finished or not",
            retained_tasks.clone(),
        );
        let held_bytes = Gauge::default();
        registry.register(
            "held_bytes",
            "Bytes of tasks' data and results held in memory (as compact JSON), against max_held_bytes",
            held_bytes.clone(),
        );
        // 100 µs to about 26 seconds.
        let store_commit_seconds = Histogram::new(exponential_buckets(0.000_1, 4.0, 10));
        registry.register(
            "store_commit_seconds",
            "Time to commit one batch of task changes to the store (durable stores only)",
            store_commit_seconds.clone(),
        );
        // 1 to 16 384 writes: how much one commit carried.
        let store_commit_writes = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register(
            "store_commit_writes",
            "Task writes per committed batch: more than one means commits are grouped",
            store_commit_writes.clone(),
        );
        let store_commit_failures = Counter::default();
        registry.register(
            "store_commit_failures",
            "Batches the store refused; their changes are tried again, their creates refused",
            store_commit_failures.clone(),
        );
        let grpc_accept_errors = Family::<AcceptLabels, Counter>::default();
        registry.register(
            "grpc_accept_errors",
            "Failed accepts on the gRPC listener, by reason (emfile, enfile, enobufs, enomem: \
             backed off; connection: skipped; other)",
            grpc_accept_errors.clone(),
        );
        let schedule_firings = Family::<FiringLabels, Counter>::default();
        registry.register(
            "schedule_firings",
            "Due firings of schedules, by outcome (created: a task; skipped: the previous \
             firing's task still ran; refused: the server could not take the task yet)",
            schedule_firings.clone(),
        );
        let worker_assignments = Family::<KindLabels, Counter>::default();
        registry.register(
            "worker_assignments",
            "Runs sent to remote workers (WorkerService), by kind",
            worker_assignments.clone(),
        );
        let worker_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "worker_outcomes",
            "Outcomes remote workers sent, by result (completed, failed; ignored: for a run \
             that had stopped or that the stream never had; cut_short: runs whose stream \
             ended first, which run again)",
            worker_outcomes.clone(),
        );
        let workers_connected = Family::<KindLabels, Gauge>::default();
        registry.register(
            "workers_connected",
            "Remote worker streams connected to this server, by kind they run",
            workers_connected.clone(),
        );
        let tasks_waiting_for_worker = Family::<KindLabels, Gauge>::default();
        registry.register(
            "tasks_waiting_for_worker",
            "Tasks of a worker kind waiting to start while no worker for the kind is \
             connected to this server",
            tasks_waiting_for_worker.clone(),
        );
        registry.register_collector(Box::new(DroppedLogLines {
            read: dropped_log_lines,
        }));
        Self {
            inner: Arc::new(Inner {
                registry,
                tasks_created,
                tasks_finished,
                task_run_seconds,
                task_retries,
                task_start_delay_seconds,
                rpc_requests,
                rpc_duration_seconds,
                queue_depth,
                retrying_tasks,
                running_tasks,
                active_watchers,
                retained_tasks,
                held_bytes,
                store_commit_seconds,
                store_commit_writes,
                store_commit_failures,
                grpc_accept_errors,
                schedule_firings,
                worker_assignments,
                worker_outcomes,
                workers_connected,
                tasks_waiting_for_worker,
            }),
        }
    }

    /// The task metrics of `kind`, looked up once so the manager can bump
    /// them for every task without building label sets.
    pub fn for_kind(&self, kind: &str) -> KindMetrics {
        let inner = &self.inner;
        let kind_labels = KindLabels {
            kind: kind.to_owned(),
        };
        let finished = |status: TaskStatus| {
            inner.tasks_finished.get_or_create_owned(&FinishedLabels {
                kind: kind.to_owned(),
                status: status.to_string(),
            })
        };
        KindMetrics {
            created: inner.tasks_created.get_or_create_owned(&kind_labels),
            completed: finished(TaskStatus::Completed),
            failed: finished(TaskStatus::Failed),
            cancelled: finished(TaskStatus::Cancelled),
            run_seconds: inner.task_run_seconds.get_or_create_owned(&kind_labels),
            retried: inner.task_retries.get_or_create_owned(&kind_labels),
            start_delay_seconds: inner
                .task_start_delay_seconds
                .get_or_create_owned(&kind_labels),
            assigned: inner.worker_assignments.get_or_create_owned(&kind_labels),
        }
    }

    /// A call ended. `method` is borrowed for the methods we know, so the
    /// common case builds its label sets without allocating.
    pub fn rpc_finished(&self, method: Cow<'static, str>, code: tonic::Code, latency: Duration) {
        let labels = RpcLabels {
            method: method.clone(),
            code: code_name(code),
        };
        self.inner.rpc_requests.get_or_create(&labels).inc();
        let labels = MethodLabels { method };
        self.inner
            .rpc_duration_seconds
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// A batch of `writes` task changes was committed (or refused) in
    /// `duration`.
    /// A schedule's due firing had this outcome.
    pub fn schedule_fired(&self, outcome: FiringOutcome) {
        self.inner
            .schedule_firings
            .get_or_create(&FiringLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn store_committed(&self, writes: usize, duration: Duration, succeeded: bool) {
        if succeeded {
            self.inner
                .store_commit_seconds
                .observe(duration.as_secs_f64());
            self.inner.store_commit_writes.observe(writes as f64);
        } else {
            self.inner.store_commit_failures.inc();
        }
    }

    /// A remote worker sent an outcome (`completed`, `failed` or
    /// `ignored`), or its stream ended before one (`cut_short`), `count`
    /// times.
    pub fn worker_outcomes(&self, result: &'static str, count: u64) {
        self.inner
            .worker_outcomes
            .get_or_create(&OutcomeLabels { result })
            .inc_by(count);
    }

    /// An accept on the gRPC listener failed for `reason`.
    pub fn accept_failed(&self, reason: &'static str) {
        self.inner
            .grpc_accept_errors
            .get_or_create(&AcceptLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition, with gauges set from `occupancy`.
    pub fn render(&self, occupancy: &Occupancy) -> String {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.inner.queue_depth.set(gauge(occupancy.pending));
        self.inner.retrying_tasks.set(gauge(occupancy.retrying));
        self.inner.running_tasks.set(gauge(occupancy.running));
        self.inner.active_watchers.set(gauge(occupancy.watchers));
        self.inner
            .retained_tasks
            .set(gauge(occupancy.retained_tasks));
        self.inner
            .held_bytes
            .set(i64::try_from(occupancy.held_bytes).unwrap_or(i64::MAX));
        for figures in &occupancy.worker_kinds {
            let labels = KindLabels {
                kind: figures.kind.clone(),
            };
            self.inner
                .workers_connected
                .get_or_create(&labels)
                .set(gauge(figures.connected));
            self.inner
                .tasks_waiting_for_worker
                .get_or_create(&labels)
                .set(gauge(figures.waiting_without_worker));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        if encode(&mut text, &self.inner.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// The name of a gRPC code as the `code` label shows it (`NotFound`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_log_lines_are_read_at_each_scrape_and_zero_without_a_writer() {
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(3));
        let source = Arc::clone(&dropped);
        let metrics = Metrics::with_dropped_log_lines(move || {
            source.load(std::sync::atomic::Ordering::Relaxed)
        });
        let text = metrics.render(&Occupancy::default());
        assert!(
            text.contains("\ntask_processor_log_lines_dropped_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE task_processor_log_lines_dropped counter"),
            "{text}"
        );
        dropped.store(5, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.render(&Occupancy::default());
        assert!(
            text.contains("\ntask_processor_log_lines_dropped_total 5\n"),
            "{text}"
        );
        let text = Metrics::new().render(&Occupancy::default());
        assert!(
            text.contains("\ntask_processor_log_lines_dropped_total 0\n"),
            "{text}"
        );
    }
}
