//! The scripted processor: each run records when it started, when its
//! cancellation fired and when and how it ended, then does what the test
//! tells it, step by step — report progress, return, or panic. One kind
//! stops when cancelled (`held`); the other ignores it (`stubborn`), so
//! only the manager's forced stop (an abort) ends it early.
//!
//! Times are paused-clock durations since the harness's origin.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use serde_json::Value as JsonValue;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::within;
use crate::{
    processor::{Processor, ProcessorError, TaskContext},
    task::TaskId,
};

/// The error a `held` run returns when its cancellation fires.
pub(in crate::manager) const STOPPED_ON_CANCEL: &str = "stopped on cancel";

/// What a run does when its cancellation fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::manager) enum OnCancel {
    /// Returns `Err(STOPPED_ON_CANCEL)` at once.
    Stop,
    /// Notes it and carries on waiting for the test.
    Ignore,
}

/// What the test tells a run to do next.
#[derive(Debug)]
pub(in crate::manager) enum Step {
    Progress(u32, &'static str),
    Return(Result<JsonValue, ProcessorError>),
    Panic(&'static str),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::manager) enum End {
    /// The processor returned (a result, an error, or on cancel).
    Returned,
    /// The processor panicked.
    Panicked,
    /// The processor's future was dropped unfinished: aborted.
    Aborted,
}

/// One run, as the processor saw it.
#[derive(Clone, Debug)]
pub(in crate::manager) struct Run {
    pub(in crate::manager) started_at: Duration,
    pub(in crate::manager) cancelled_at: Option<Duration>,
    pub(in crate::manager) ended: Option<(Duration, End)>,
    steps: mpsc::UnboundedSender<Step>,
}

#[derive(Debug, Default)]
struct Runs {
    by_task: HashMap<TaskId, Run>,
    /// Tasks in the order their runs started.
    start_order: Vec<TaskId>,
    /// Runs whose processor has not ended.
    live: HashSet<TaskId>,
    /// The most runs ever live at once.
    most_live: usize,
}

/// The shared record of every scripted run, and the way to drive them.
#[derive(Clone, Debug)]
pub(in crate::manager) struct Script {
    runs: Arc<watch::Sender<Runs>>,
    t0: Instant,
}

impl Script {
    pub(super) fn new(t0: Instant) -> Self {
        Self {
            runs: Arc::new(watch::Sender::new(Runs::default())),
            t0,
        }
    }

    /// A processor whose runs follow this script.
    pub(super) fn processor(&self, on_cancel: OnCancel) -> impl Processor {
        Scripted {
            script: self.clone(),
            on_cancel,
        }
    }

    /// The run of task `id`, if it started.
    pub(in crate::manager) fn run(&self, id: TaskId) -> Option<Run> {
        self.runs.borrow().by_task.get(&id).cloned()
    }

    /// Tasks in the order their runs started.
    pub(in crate::manager) fn start_order(&self) -> Vec<TaskId> {
        self.runs.borrow().start_order.clone()
    }

    /// Tasks whose processor runs now (including ones told to stop that
    /// have not), in the order they started.
    pub(in crate::manager) fn live(&self) -> Vec<TaskId> {
        let runs = self.runs.borrow();
        let mut live: Vec<TaskId> = runs.live.iter().copied().collect();
        live.sort_by_key(|id| runs.by_task.get(id).map(|run| run.started_at));
        live
    }

    /// The most processors that were ever running at once.
    pub(in crate::manager) fn most_live(&self) -> usize {
        self.runs.borrow().most_live
    }

    /// Waits until the run of task `id` has started; returns when it did.
    pub(in crate::manager) async fn wait_started(&self, id: TaskId) -> Duration {
        let mut runs = self.runs.subscribe();
        within(&format!("the run of {id} starting"), async {
            let runs = runs
                .wait_for(|runs| runs.by_task.contains_key(&id))
                .await
                .expect("the script lives as long as the test");
            runs.by_task[&id].started_at
        })
        .await
    }

    /// Waits until the run of task `id` has ended; returns when and how.
    pub(in crate::manager) async fn wait_ended(&self, id: TaskId) -> (Duration, End) {
        let mut runs = self.runs.subscribe();
        within(&format!("the run of {id} ending"), async {
            let runs = runs
                .wait_for(|runs| runs.by_task.get(&id).is_some_and(|run| run.ended.is_some()))
                .await
                .expect("the script lives as long as the test");
            runs.by_task[&id].ended.expect("waited for")
        })
        .await
    }

    /// Tells the run of task `id`, which must have started, what to do.
    pub(in crate::manager) fn tell(&self, id: TaskId, step: Step) {
        let steps = self
            .run(id)
            .unwrap_or_else(|| panic!("the run of {id} has not started"))
            .steps;
        // A run that ended no longer listens; that is for the test to see.
        let _ = steps.send(step);
    }

    /// Tells the run of task `id` to return `result`.
    pub(in crate::manager) fn finish(&self, id: TaskId, result: JsonValue) {
        self.tell(id, Step::Return(Ok(result)));
    }

    fn since_t0(&self) -> Duration {
        self.t0.elapsed()
    }

    fn begin(&self, id: TaskId) -> mpsc::UnboundedReceiver<Step> {
        let (steps, receiver) = mpsc::unbounded_channel();
        let started_at = self.since_t0();
        self.runs.send_modify(|runs| {
            let run = Run {
                started_at,
                cancelled_at: None,
                ended: None,
                steps,
            };
            assert!(
                runs.by_task.insert(id, run).is_none(),
                "{id} ran twice on the memory store"
            );
            runs.start_order.push(id);
            runs.live.insert(id);
            runs.most_live = runs.most_live.max(runs.live.len());
        });
        receiver
    }

    fn note_cancelled(&self, id: TaskId) {
        let at = self.since_t0();
        self.runs.send_modify(|runs| {
            if let Some(run) = runs.by_task.get_mut(&id) {
                run.cancelled_at = Some(at);
            }
        });
    }

    fn end(&self, id: TaskId, how: End) {
        let at = self.since_t0();
        self.runs.send_modify(|runs| {
            runs.live.remove(&id);
            if let Some(run) = runs.by_task.get_mut(&id) {
                run.ended = Some((at, how));
            }
        });
    }
}

struct Scripted {
    script: Script,
    on_cancel: OnCancel,
}

/// Records the end of a run however it ends, aborts included.
struct RunGuard {
    script: Script,
    id: TaskId,
    returned: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let how = if self.returned {
            End::Returned
        } else if std::thread::panicking() {
            End::Panicked
        } else {
            End::Aborted
        };
        self.script.end(self.id, how);
    }
}

#[async_trait]
impl Processor for Scripted {
    async fn process(&self, context: TaskContext) -> Result<JsonValue, ProcessorError> {
        let id = context.task_id;
        let mut steps = self.script.begin(id);
        let mut guard = RunGuard {
            script: self.script.clone(),
            id,
            returned: false,
        };
        let mut heard_cancel = false;
        loop {
            tokio::select! {
                () = context.cancellation.cancelled(), if !heard_cancel => {
                    heard_cancel = true;
                    self.script.note_cancelled(id);
                    if self.on_cancel == OnCancel::Stop {
                        guard.returned = true;
                        return Err(ProcessorError::new(STOPPED_ON_CANCEL));
                    }
                }
                step = steps.recv() => match step {
                    Some(Step::Progress(percent, message)) => {
                        context.report_progress(percent, message).await;
                    }
                    Some(Step::Return(result)) => {
                        guard.returned = true;
                        return result;
                    }
                    Some(Step::Panic(message)) => panic!("{message}"),
                    // The script holds the sender as long as the test runs.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }
}
