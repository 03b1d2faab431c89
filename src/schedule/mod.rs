//! The schedule domain: ids, the parsed `cron` and `time_zone` fields
//! (`spec.rs`), the schedule record, and the rule for missed firings
//! (`firing.rs`).
//!
//! Plain Rust types and pure functions, beside `task` in the layering: it
//! imports `task` (a firing creates a task) and nothing else of ours, and
//! knows nothing of protobuf, tonic, the stores or the manager. No function
//! here reads the clock; callers pass `now`.

mod firing;
mod spec;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

pub use firing::{Firing, due_firing};
pub use spec::{MAX_EVERY_INTERVAL, MIN_EVERY_INTERVAL, ScheduleError, ScheduleSpec, TimeZone};

use crate::task::{NewTask, TaskId, TaskStatus};

/// The label every task a schedule creates carries, with the schedule's id
/// as its value, so a client can list a schedule's tasks.
pub const SCHEDULE_ID_LABEL: &str = "schedule-id";

crate::task::uuid_v7_id!(
    /// A schedule's identity: a UUID v7, so ids sort by creation time.
    ScheduleId,
    /// The text given as a schedule id was not a UUID.
    InvalidScheduleId
);

/// What a firing does while the task of the previous one has not finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overlap {
    /// Does not fire: a slow task never piles up copies of itself.
    #[default]
    Skip,
    /// Fires anyway.
    Allow,
}

/// A validated request for a new schedule: the fields parsed, the template
/// checked (it has no `request_id`: each firing is a new task).
#[derive(Clone, Debug, PartialEq)]
pub struct NewSchedule {
    pub spec: ScheduleSpec,
    pub time_zone: TimeZone,
    pub template: NewTask,
    pub overlap: Overlap,
    /// Created paused: it fires only once resumed.
    pub paused: bool,
}

/// What [`Schedule::fire_if_due`] did.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per due firing, consumed at once; a box would only add an allocation"
)]
pub enum FireOutcome {
    /// No firing is due (or the schedule is paused).
    NotDue,
    /// A firing was due, but the previous one's task still runs.
    Skipped,
    /// A firing is due: create this task.
    Fired {
        task: NewTask,
        /// The firing time it stands for (after downtime, the latest
        /// missed one).
        scheduled_for: SystemTime,
    },
}

/// Everything known about one schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub id: ScheduleId,
    /// The `cron` field, as given and parsed.
    pub spec: ScheduleSpec,
    pub time_zone: TimeZone,
    /// The task each firing creates (plus the [`SCHEDULE_ID_LABEL`] label).
    pub template: NewTask,
    pub paused: bool,
    pub overlap: Overlap,
    /// When it fires next; `None` while paused, or when no date is left.
    pub next_fire_at: Option<SystemTime>,
    /// The time the last firing that created a task was scheduled for (not
    /// when a server got to it: after downtime that is later).
    pub last_fire_at: Option<SystemTime>,
    /// The task the last firing created.
    pub last_task_id: Option<TaskId>,
    /// Also the anchor of `@every`: firings are `created_at + k × interval`.
    pub created_at: SystemTime,
    /// 1 at creation, one more with each change.
    pub revision: u64,
}

impl Schedule {
    /// A freshly created schedule: revision 1, never fired, due at its first
    /// firing after `created_at` unless created paused.
    pub fn new(id: ScheduleId, new_schedule: NewSchedule, created_at: SystemTime) -> Self {
        let mut schedule = Self {
            id,
            spec: new_schedule.spec,
            time_zone: new_schedule.time_zone,
            template: new_schedule.template,
            paused: new_schedule.paused,
            overlap: new_schedule.overlap,
            next_fire_at: None,
            last_fire_at: None,
            last_task_id: None,
            created_at,
            revision: 1,
        };
        if !schedule.paused {
            schedule.next_fire_at = schedule.next_fire_after(created_at);
        }
        schedule
    }

    /// The first firing strictly after `after`, in this schedule's zone and
    /// from its anchor.
    pub fn next_fire_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.spec
            .next_fire_after(after, &self.time_zone, self.created_at)
    }

    /// What this schedule does at `now` (see [`due_firing`]).
    pub fn due_firing(&self, now: SystemTime) -> Firing {
        due_firing(
            &self.spec,
            &self.time_zone,
            self.created_at,
            self.next_fire_at,
            now,
        )
    }

    /// Whether a due firing must be skipped because the task of the previous
    /// one, whose status is `last_task_status` (`None`: none, or forgotten),
    /// has not finished and the schedule does not allow overlap.
    pub fn must_skip_firing(&self, last_task_status: Option<TaskStatus>) -> bool {
        self.overlap == Overlap::Skip
            && last_task_status.is_some_and(|status| !status.is_terminal())
    }

    /// The task a firing creates: the template, labelled with this
    /// schedule's id.
    pub fn task_for_firing(&self) -> NewTask {
        let mut task = self.template.clone();
        task.labels
            .insert(SCHEDULE_ID_LABEL.to_owned(), self.id.to_string());
        task
    }

    /// Fires at `now` if a firing is due, as the contract's rules say: once
    /// however many were missed ([`due_firing`]), or not at all while the
    /// task of the previous firing (whose status is `last_task_status`) has
    /// not finished and overlap is [`Overlap::Skip`]. The schedule records
    /// what it did (a skipped firing moves it on too). A firing that fires
    /// hands back the task to create under `task_id`.
    pub fn fire_if_due(
        &mut self,
        now: SystemTime,
        last_task_status: Option<TaskStatus>,
        task_id: TaskId,
    ) -> FireOutcome {
        let firing = self.due_firing(now);
        let Some(scheduled_for) = firing.scheduled_for else {
            return FireOutcome::NotDue;
        };
        if self.must_skip_firing(last_task_status) {
            self.record_skipped_firing(firing.next_fire_at);
            return FireOutcome::Skipped;
        }
        let task = self.task_for_firing();
        self.record_firing(scheduled_for, task_id, firing.next_fire_at);
        FireOutcome::Fired {
            task,
            scheduled_for,
        }
    }

    /// Records a firing that created `task_id`: `scheduled_for` and
    /// `next_fire_at` as [`due_firing`] decided them.
    pub fn record_firing(
        &mut self,
        scheduled_for: SystemTime,
        task_id: TaskId,
        next_fire_at: Option<SystemTime>,
    ) {
        self.last_fire_at = Some(scheduled_for);
        self.last_task_id = Some(task_id);
        self.next_fire_at = next_fire_at;
        self.revision += 1;
    }

    /// Records a firing that created no task (the previous one still runs
    /// and overlap is `Skip`): the schedule only moves on to `next_fire_at`.
    pub fn record_skipped_firing(&mut self, next_fire_at: Option<SystemTime>) {
        self.next_fire_at = next_fire_at;
        self.revision += 1;
    }

    /// Pauses the schedule: it has no next firing until resumed. Returns
    /// whether anything changed (pausing a paused schedule does not).
    pub fn pause(&mut self) -> bool {
        if self.paused {
            return false;
        }
        self.paused = true;
        self.next_fire_at = None;
        self.revision += 1;
        true
    }

    /// Resumes the schedule at `now`: it next fires at its first firing
    /// after `now`, so firings that fell while it was paused are not made
    /// up. Returns whether anything changed (resuming a running schedule
    /// does not).
    pub fn resume(&mut self, now: SystemTime) -> bool {
        if !self.paused {
            return false;
        }
        self.paused = false;
        self.next_fire_at = self.next_fire_after(now);
        self.revision += 1;
        true
    }
}
