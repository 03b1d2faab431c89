//! The memory budget: how many bytes of tasks' `data` and `result` the
//! actor holds, task by task, against `max_held_bytes`.
//!
//! A payload is measured once, when it enters (by whoever has it then: the
//! handle for `data`, the run for its `result`, `recover` for what the file
//! gave back), as the length of its compact JSON text — the very text the
//! SQLite file stores. The actor only adds and subtracts numbers; it never
//! walks a value to size it.
//!
//! What the actor lets go to stay within the budget lives here too: on
//! memory, finished tasks oldest first (the only copy, so they go whole, as
//! retention would take them); on SQLite, the payload of a finished task
//! once the write of its terminal state is committed (the task stays, its
//! payload is read back from the file when a client asks). Only unfinished
//! tasks, and finished ones not yet durable, can make a create wait.

use std::{collections::HashMap, io, sync::Arc};

use serde_json::Value as JsonValue;

use super::{Local, Manager};
use crate::{
    manager::{ManagerError, persist::Pending},
    task::{PayloadLocation, Task, TaskId},
};

/// The bytes each task's payload counts, and their sum.
#[derive(Debug)]
pub(super) struct Held {
    /// What creates may fill; results may go past it (a run's result is
    /// never refused), and then creates wait until it is let go.
    budget: u64,
    /// The sum of `by_task`, kept so no one adds it up again.
    total: u64,
    /// Only tasks whose payload is held; a task without one costs no entry.
    by_task: HashMap<TaskId, u64>,
}

impl Held {
    pub(super) fn new(budget: u64) -> Self {
        Self {
            budget,
            total: 0,
            by_task: HashMap::new(),
        }
    }

    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Whether `bytes` more still fit. A payload larger than the whole
    /// budget fits when nothing else is held, so every valid task can be
    /// created eventually.
    pub(super) fn fits(&self, bytes: u64) -> bool {
        self.total == 0 || self.total.saturating_add(bytes) <= self.budget
    }

    /// Whether more is held than the budget allows.
    pub(super) fn is_over(&self) -> bool {
        self.total > self.budget
    }

    /// `id`'s payload grew by `bytes` (its data arrived, or its result).
    pub(super) fn add(&mut self, id: TaskId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        *self.by_task.entry(id).or_default() += bytes;
        self.total = self.total.saturating_add(bytes);
    }

    /// `id`'s payload is let go (forgotten, rolled back, or in the file
    /// only); returns what it counted.
    pub(super) fn release(&mut self, id: TaskId) -> u64 {
        let bytes = self.by_task.remove(&id).unwrap_or(0);
        self.total = self.total.saturating_sub(bytes);
        bytes
    }
}

impl Manager<Local> {
    /// Whether a create of `bytes` fits, after letting go on memory of as
    /// many finished tasks, oldest first, as it takes.
    pub(super) fn make_room(&mut self, bytes: u64) -> bool {
        while !self.shape.held.fits(bytes) {
            if !self.let_go_of_oldest_finished() {
                return false;
            }
        }
        true
    }

    /// On memory, after a result pushed past the budget: lets go of the
    /// oldest finished tasks, but never of the one that just finished,
    /// whose client has not read it yet.
    pub(super) fn keep_within_budget(&mut self) {
        while self.shape.held.is_over() && self.shape.finished.len() > 1 {
            if !self.let_go_of_oldest_finished() {
                return;
            }
        }
    }

    pub(super) fn memory_full(&self) -> ManagerError {
        ManagerError::MemoryFull {
            held: self.shape.held.total(),
            budget: self.shape.held.budget(),
            retry_after: self.config.queue_full_retry_after,
        }
    }

    /// Memory store only (elsewhere finished tasks hold no payload once
    /// durable): forgets the oldest finished task. `false` when none is left.
    fn let_go_of_oldest_finished(&mut self) -> bool {
        if self.persister.is_durable() {
            return false;
        }
        let Some((_, oldest)) = self.shape.finished.pop_front() else {
            return false;
        };
        self.forget(oldest);
        true
    }

    /// The batch is durable, so every finished task it wrote has its
    /// payload in the store; the task keeps only a marker saying so.
    pub(super) fn let_go_of_stored_payloads(&mut self, batch: &Pending) {
        for stored in batch.inserts.iter().chain(batch.updates.values()) {
            if !stored.status.is_terminal() {
                continue;
            }
            let id = &stored.id;
            let Some(entry) = self.tasks.get_mut(id) else {
                continue; // forgotten meanwhile
            };
            // Terminal is final, so what the file holds is this state.
            if entry.status.is_terminal() && entry.payload == PayloadLocation::InTask {
                *entry = Arc::new(entry.without_payload());
                self.shape.held.release(*id);
            }
        }
    }
}

/// The bytes a task's payload counts: its data and result, if it holds them.
pub(in crate::manager) fn payload_bytes(task: &Task) -> u64 {
    if task.payload == PayloadLocation::InStore {
        return 0;
    }
    [&task.data, &task.result]
        .into_iter()
        .flatten()
        .map(|value| json_bytes(value))
        .sum()
}

/// The length of `value`'s compact JSON text, without building the text.
pub(in crate::manager) fn json_bytes(value: &JsonValue) -> u64 {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => 0,
    }
}

/// An `io::Write` that only counts.
struct ByteCounter(u64);

impl io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_payload_counts_its_compact_json_text() {
        for value in [
            json!(null),
            json!("a\u{0}b \"quoted\" é"),
            json!({"text": "x".repeat(1000), "n": [1, -2.5, 1e300], "deep": [[{}]]}),
        ] {
            assert_eq!(json_bytes(&value), value.to_string().len() as u64);
        }
    }

    #[test]
    fn adds_and_releases_per_task_and_keeps_the_sum() {
        let (first, second) = (TaskId::generate(), TaskId::generate());
        let mut held = Held::new(100);
        held.add(first, 40);
        held.add(second, 30);
        held.add(first, 20); // its result
        assert_eq!(held.total(), 90);
        assert!(held.fits(10));
        assert!(!held.fits(11));
        assert_eq!(held.release(first), 60);
        assert_eq!(held.release(first), 0, "released once only");
        assert_eq!(held.total(), 30);
        assert_eq!(held.release(second), 30);
        assert_eq!(held.total(), 0);
        assert!(held.by_task.is_empty(), "no entry outlives its payload");
    }

    #[test]
    fn results_may_go_over_but_creates_then_wait() {
        let task = TaskId::generate();
        let mut held = Held::new(100);
        held.add(task, 90);
        held.add(task, 90);
        assert!(held.is_over());
        assert!(!held.fits(1));
        held.release(task);
        assert!(!held.is_over());
    }

    #[test]
    fn a_payload_larger_than_the_budget_fits_only_alone() {
        let mut held = Held::new(100);
        assert!(held.fits(500), "nothing held: it may enter alone");
        held.add(TaskId::generate(), 500);
        assert!(!held.fits(1));
    }
}
