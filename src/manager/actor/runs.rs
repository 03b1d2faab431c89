//! The run machinery every shape shares: a run is spawned on a free slot,
//! reports progress, is timed out, told to stop and, if it does not, aborted
//! a second later; its end goes through the door.

use std::{sync::Arc, time::Duration};

use futures_util::future::Either;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, warn};

use super::{Manager, RunOutput, RunSlot, Shape, Timer, held};
use crate::{
    manager::FORCED_STOP_AFTER,
    processor::{
        ProgressReporter, ProgressUpdate, TaskContext,
        remote::{Reservation, StopReason},
    },
    task::{Failure, Task, TaskEvent, TaskId, TaskStatus, cut_short_too_often},
};

impl<S: Shape> Manager<S> {
    pub(super) fn handle_progress(&mut self, update: ProgressUpdate) {
        let is_current_run = self
            .running
            .get(&update.task_id)
            .is_some_and(|slot| slot.attempt == update.attempt && !slot.interrupted);
        if is_current_run && self.status_of(update.task_id) == Some(TaskStatus::Running) {
            self.transition(update.task_id, TaskEvent::Progress(update.progress));
        }
    }

    pub(super) fn handle_run_finished(
        &mut self,
        finished: Result<(tokio::task::Id, RunOutput), JoinError>,
    ) {
        let run_id = match &finished {
            Ok((run_id, _)) => *run_id,
            Err(error) => error.id(),
        };
        let Some(task_id) = self.run_owners.remove(&run_id) else {
            return;
        };
        // Reports the run sent before it returned come first. They are
        // among those queued now; taking only those keeps this bounded
        // however fast other runs keep reporting.
        for _ in 0..self.progress_updates.len() {
            match self.progress_updates.try_recv() {
                Ok(update) => self.handle_progress(update),
                Err(_) => break,
            }
        }
        let Some(slot) = self.running.remove(&task_id) else {
            return;
        };
        // A kind's count stays at zero rather than going: kinds are few.
        if let Some(count) = self.running_by_kind.get_mut(&slot.kind) {
            *count = count.saturating_sub(1);
        }
        for timer in [slot.timeout_timer, slot.forced_stop_timer]
            .into_iter()
            .flatten()
        {
            self.timers.remove(&timer);
        }
        // Only the current run may finish its task; the result of a run that
        // was cancelled or timed out is discarded.
        let is_current_run = !slot.interrupted
            && self.tasks.get(&task_id).is_some_and(|task| {
                task.status == TaskStatus::Running && task.attempt == slot.attempt
            });
        let mut result_bytes = 0;
        let event = match finished {
            Ok((_, Ok((result, bytes)))) => {
                result_bytes = bytes;
                TaskEvent::Complete(Arc::new(result))
            }
            Ok((_, Err(error))) if error.is_cut_short() => {
                if is_current_run {
                    info!(task_id = %task_id, reason = %error, "run cut short; the task runs again");
                    S::run_cut_short(self, task_id, slot.attempt, &slot.kind);
                }
                return;
            }
            Ok((_, Err(error))) if error.is_permanent() => {
                TaskEvent::Fail(Failure::permanent(error.to_string()))
            }
            Ok((_, Err(error))) => TaskEvent::Fail(Failure::retryable(error.to_string())),
            Err(error) if error.is_panic() => {
                let message = panic_message(error.into_panic());
                warn!(task_id = %task_id, panic = %message, "processor panicked");
                TaskEvent::Fail(Failure::retryable(format!("processor panicked: {message}")))
            }
            // Aborted by us after a cancel or timeout: the task already
            // has its terminal state.
            Err(_) => return,
        };
        if !is_current_run {
            debug!(task_id = %task_id, "late result of a stopped run discarded");
            return;
        }
        record_outcome(&slot.span, &event);
        // Counted before the transition, which may make room for it.
        S::result_arrives(self, task_id, result_bytes);
        self.transition(task_id, event);
    }

    pub(super) fn handle_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Timeout(task_id) => {
                let Some(slot) = self.running.get_mut(&task_id) else {
                    return;
                };
                slot.timeout_timer = None;
                let span = slot.span.clone();
                let timeout_seconds = self
                    .tasks
                    .get(&task_id)
                    .map_or(0, |task| task.timeout_seconds);
                if self.status_of(task_id) == Some(TaskStatus::Running) {
                    let error = format!("timed out after {timeout_seconds}s");
                    info!(task_id = %task_id, timeout_seconds, "task timed out");
                    record_failure(&span, &error);
                    self.transition(task_id, TaskEvent::Fail(Failure::retryable(error)));
                }
                self.stop_run(
                    task_id,
                    StopReason::TimedOut {
                        seconds: timeout_seconds,
                    },
                );
            }
            Timer::ForcedStop(task_id) => {
                if let Some(slot) = self.running.get_mut(&task_id) {
                    slot.forced_stop_timer = None;
                    warn!(task_id = %task_id, "processor ignored its stop signal; aborting it");
                    slot.abort.abort();
                }
            }
        }
    }

    /// Runs a task that just became `RUNNING` for this node (started,
    /// restarted after its server died, or claimed), unless its runs were
    /// cut short too often in a row: then it fails, so that one task cannot
    /// crash-loop every server that takes it.
    pub(super) fn start_run(&mut self, task: Arc<Task>) {
        self.start_run_on(task, None);
    }

    /// [`start_run`](Self::start_run), on a worker stream's slot taken
    /// before the start (so the start already named the worker).
    pub(super) fn start_run_on(&mut self, task: Arc<Task>, reserved: Option<Reservation>) {
        if let Some(error) =
            cut_short_too_often(task.cut_short_runs, self.config.max_cut_short_runs)
        {
            warn!(task_id = %task.id, cut_short_runs = task.cut_short_runs, "task failed: its runs were cut short too often");
            self.transition(task.id, TaskEvent::Fail(Failure::permanent(error)));
            return;
        }
        // A run cut short starts again at once: it was not waiting.
        if task.cut_short_runs == 0
            && let Some(delay) = task
                .started_at
                .and_then(|started| started.duration_since(task.ready_at()).ok())
        {
            self.metrics_of(&task.kind).task_started(delay);
        }
        self.spawn_run(task, reserved);
    }

    /// Runs a task that is `RUNNING` for this node on a free slot: in this
    /// process, or on a remote worker's stream when its kind is a worker
    /// kind.
    fn spawn_run(&mut self, task: Arc<Task>, reserved: Option<Reservation>) {
        let task_id = task.id;
        let cancellation = CancellationToken::new();
        let context = TaskContext::new(
            task_id,
            task.attempt,
            task.data.clone(),
            cancellation.clone(),
            ProgressReporter::new(self.progress_sender.clone()),
        );
        let (task, processing) = if let Some(workers) = self.registry.workers_for(&task.kind) {
            // A slot taken before the start was named by it already.
            let named_at_start = reserved.is_some();
            let reserved = reserved.or_else(|| workers.reserve(&task.kind, task_id, task.attempt));
            let Some(reservation) = reserved else {
                // The room was counted just before this start; a stream
                // that left since took it. Not the task's fault.
                info!(task_id = %task_id, kind = %task.kind, "no worker has room after all; the task runs again");
                S::run_cut_short(self, task_id, task.attempt, &task.kind);
                return;
            };
            let task = if named_at_start {
                task
            } else {
                let worker = reservation.worker_name().to_owned();
                self.transition(task_id, TaskEvent::Assigned { worker })
                    .unwrap_or(task)
            };
            self.metrics_of(&task.kind).task_assigned();
            let run = reservation.dispatch(Arc::clone(&task), context);
            (task, Either::Left(run))
        } else if let Some(processor) = self.registry.get(&task.kind) {
            (
                task,
                Either::Right(async move { processor.process(context).await }),
            )
        } else {
            // Kinds are checked on create and the registry never shrinks,
            // so this is a bug; fail the task rather than lose it.
            warn!(task_id = %task_id, kind = %task.kind, "no processor for kind");
            let error = format!("no processor is registered for kind {:?}", task.kind);
            self.transition(task_id, TaskEvent::Fail(Failure::permanent(error)));
            return;
        };
        let span = self.run_span(&task);
        let run = async move {
            let result = processing.await?;
            // Sized here, in the run's task, so the actor never walks it.
            let bytes = held::json_bytes(&result);
            Ok((result, bytes))
        };
        let abort = self.runs.spawn(run.instrument(span.clone()));
        self.run_owners.insert(abort.id(), task_id);
        let timeout_timer = (task.timeout_seconds > 0).then(|| {
            let timeout = Duration::from_secs(u64::from(task.timeout_seconds));
            self.timers.insert(Timer::Timeout(task_id), timeout)
        });
        debug!(task_id = %task_id, kind = %task.kind, attempt = task.attempt, "task started");
        match self.running_by_kind.get_mut(&task.kind) {
            Some(count) => *count += 1,
            None => {
                self.running_by_kind.insert(task.kind.clone(), 1);
            }
        }
        self.running.insert(
            task_id,
            RunSlot {
                attempt: task.attempt,
                kind: task.kind.clone(),
                cancellation,
                abort,
                timeout_timer,
                forced_stop_timer: None,
                interrupted: false,
                span,
            },
        );
    }

    /// The span of one run, `task.run`, which the processor runs in. At
    /// debug, like a call's span, so it costs nothing unless something
    /// wants it (the trace exporter, or the log at debug). Its parent is
    /// the trace the task was created in (kept with the task, so on any
    /// server and after restarts), never what the actor happens to be
    /// doing; with none kept, the run starts a trace of its own.
    fn run_span(&self, task: &Task) -> Span {
        let span = tracing::debug_span!(
            parent: None,
            "task.run",
            task_id = %task.id,
            kind = %task.kind,
            attempt = task.attempt,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        if let Some(join_stored_trace) = self.config.join_stored_trace
            && !task.trace_context.is_empty()
        {
            join_stored_trace(&span, &task.trace_context);
        }
        span
    }

    /// A slot on a worker stream for the next run of a waiting task of a
    /// worker kind (`None` for other kinds, or when no stream has room).
    pub(super) fn reserve_worker_slot(&self, task_id: TaskId) -> Option<Reservation> {
        let task = self.tasks.get(&task_id)?;
        let workers = self.registry.workers_for(&task.kind)?;
        workers.reserve(&task.kind, task_id, task.attempt + 1)
    }

    /// Tells a run to stop, and arms the timer that aborts it if it does
    /// not. A remote worker is told why first.
    pub(super) fn stop_run(&mut self, task_id: TaskId, reason: StopReason) {
        let Some(slot) = self.running.get_mut(&task_id) else {
            return;
        };
        if let Some(workers) = self.registry.workers_for(&slot.kind) {
            workers.cancel(task_id, slot.attempt, reason);
        }
        slot.cancellation.cancel();
        if let Some(timer) = slot.timeout_timer.take() {
            self.timers.remove(&timer);
        }
        if slot.forced_stop_timer.is_none() {
            let timer = self
                .timers
                .insert(Timer::ForcedStop(task_id), FORCED_STOP_AFTER);
            slot.forced_stop_timer = Some(timer);
        }
    }

    /// Free slots, after `occupied_elsewhere` slots that are not runs here.
    pub(super) fn free_slots(&self, occupied_elsewhere: usize) -> usize {
        self.config
            .max_concurrent
            .saturating_sub(self.running.len() + occupied_elsewhere)
    }

    /// How many more tasks of `kind` may start, at most `free`: its own
    /// limit (`kinds.<kind>.max_concurrent`) less its runs here and
    /// `occupied_elsewhere` slots of the kind that are not runs here.
    /// A worker kind has no more room than its streams' free slots.
    pub(super) fn kind_room(&self, kind: &str, occupied_elsewhere: usize, free: usize) -> usize {
        let free = match self.registry.workers_for(kind) {
            Some(workers) => workers.room(kind).min(free),
            None => free,
        };
        match self.config.kind_limits.get(kind) {
            None => free,
            Some(limit) => {
                let running = self.running_by_kind.get(kind).copied().unwrap_or(0);
                limit.saturating_sub(running + occupied_elsewhere).min(free)
            }
        }
    }

    /// The kinds that may have no room while slots are free: those with a
    /// limit of their own, and the worker kinds.
    pub(super) fn kinds_with_room_of_their_own(&self) -> impl Iterator<Item = &str> {
        let worker_kinds = self
            .registry
            .workers()
            .map_or(&[][..], |workers| workers.kinds());
        self.config
            .kind_limits
            .keys()
            .chain(worker_kinds)
            .map(String::as_str)
    }
}

/// Records how the run ended on its span: `outcome`, and the error status
/// (with the task's error) when it failed.
fn record_outcome(span: &Span, event: &TaskEvent) {
    match event {
        TaskEvent::Complete(_) => {
            span.record("outcome", "completed");
        }
        TaskEvent::Fail(failure) => record_failure(span, &failure.error),
        _ => {}
    }
}

fn record_failure(span: &Span, error: &str) {
    span.record("outcome", "failed");
    span.record("otel.status_code", "error");
    // After the code: the description is what carries the message.
    span.record("otel.status_description", error);
}

/// The text of a panic, when it has one.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}
