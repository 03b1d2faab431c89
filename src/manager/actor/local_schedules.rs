//! The local shape's schedules (memory and SQLite): this process holds
//! every schedule, fires the due ones on one timer (the earliest
//! `next_fire_at`), and writes each firing's task and its schedule's next
//! firing in one commit, so a crash can neither lose a firing nor repeat
//! it. The rules of a firing (missed firings, overlap) are the schedule
//! domain's (`Schedule::fire_if_due`), as on PostgreSQL.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Bound,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tracing::{debug, info, warn};

use super::{Local, Manager, held::json_bytes, now};
use crate::{
    manager::{ManagerError, Reply, ScheduleCommand, SchedulePage, persist::Deferred},
    metrics::FiringOutcome,
    schedule::{FireOutcome, NewSchedule, Schedule, ScheduleId},
    store::tenant_matches,
    task::TaskId,
};

/// How long a firing the server could not take (full queue, full memory
/// budget, a failing store) waits before it is tried again.
const REFUSED_FIRING_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(in crate::manager) struct LocalSchedules {
    schedules: BTreeMap<ScheduleId, Arc<Schedule>>,
    /// `(next_fire_at, id)` of every schedule that will fire: the first is
    /// what the one timer waits for.
    due: BTreeSet<(SystemTime, ScheduleId)>,
    /// The size of each template's data, measured once, so a firing never
    /// walks a payload.
    template_bytes: HashMap<ScheduleId, u64>,
    /// Firings whose task is not durable yet, with their schedule as it was
    /// before: if the insert fails, the schedule goes back, still due.
    unconfirmed_firings: HashMap<TaskId, Arc<Schedule>>,
    /// A due firing was refused: nothing fires before this time.
    held_back_until: Option<SystemTime>,
}

impl LocalSchedules {
    /// The schedules a SQLite file held at start. Those due (or overdue:
    /// the server was down) fire at the first look, once each.
    pub(super) fn new(stored: Vec<Schedule>) -> Self {
        let mut schedules = Self::default();
        for schedule in stored {
            schedules.put(Arc::new(schedule));
        }
        schedules
    }

    /// Adds or replaces a schedule.
    fn put(&mut self, schedule: Arc<Schedule>) {
        if let Some(previous) = self.schedules.get(&schedule.id)
            && let Some(due_at) = previous.next_fire_at
        {
            self.due.remove(&(due_at, previous.id));
        }
        if let Some(due_at) = schedule.next_fire_at {
            self.due.insert((due_at, schedule.id));
        }
        self.template_bytes
            .entry(schedule.id)
            .or_insert_with(|| schedule.template.data.as_deref().map_or(0, json_bytes));
        self.schedules.insert(schedule.id, schedule);
    }

    fn remove(&mut self, id: ScheduleId) -> Option<Arc<Schedule>> {
        let schedule = self.schedules.remove(&id)?;
        if let Some(due_at) = schedule.next_fire_at {
            self.due.remove(&(due_at, id));
        }
        self.template_bytes.remove(&id);
        Some(schedule)
    }

    /// When the loop should look for due firings next; `None`: never.
    pub(super) fn wake_at(&self) -> Option<SystemTime> {
        let (earliest, _) = self.due.first()?;
        Some(match self.held_back_until {
            Some(held_back_until) => (*earliest).max(held_back_until),
            None => *earliest,
        })
    }

    /// The schedules due at `now`, earliest first.
    fn due_at(&self, now: SystemTime) -> Vec<ScheduleId> {
        self.due
            .iter()
            .take_while(|(due_at, _)| *due_at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// A page of the schedules of `tenant` (`None`: of every tenant). A
    /// tenant's page passes over the others' schedules, which are few: a
    /// schedule is a calendar, not a task.
    fn page(&self, after: Option<ScheduleId>, limit: usize, tenant: Option<&str>) -> SchedulePage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut schedules: Vec<Arc<Schedule>> = self
            .schedules
            .range((start, Bound::Unbounded))
            .filter(|(_, schedule)| tenant_matches(tenant, &schedule.template.tenant))
            .take(limit.saturating_add(1))
            .map(|(_, schedule)| Arc::clone(schedule))
            .collect();
        let more = schedules.len() > limit;
        schedules.truncate(limit);
        let next_after = more
            .then(|| schedules.last().map(|schedule| schedule.id))
            .flatten();
        SchedulePage {
            schedules,
            next_after,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.schedules.len()
    }
}

impl Manager<Local> {
    pub(super) fn serve_schedule_command(&mut self, command: ScheduleCommand) {
        match command {
            ScheduleCommand::Create {
                new_schedule,
                respond_to,
            } => self.create_schedule(new_schedule, respond_to),
            ScheduleCommand::Get { id, respond_to } => {
                let found = self.shape.schedules.schedules.get(&id).cloned();
                let _ = respond_to.send(found.ok_or(ManagerError::ScheduleNotFound(id)));
            }
            ScheduleCommand::List {
                after,
                limit,
                tenant,
                respond_to,
            } => {
                let page = self.shape.schedules.page(after, limit, tenant.as_deref());
                let _ = respond_to.send(Ok(page));
            }
            ScheduleCommand::SetPaused {
                id,
                paused,
                respond_to,
            } => self.set_schedule_paused(id, paused, respond_to),
            ScheduleCommand::Delete { id, respond_to } => self.delete_schedule(id, respond_to),
        }
    }

    fn create_schedule(
        &mut self,
        new_schedule: Box<NewSchedule>,
        respond_to: Reply<Arc<Schedule>>,
    ) {
        if let Some(refused) = self.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        let schedule = Arc::new(Schedule::new(ScheduleId::generate(), *new_schedule, now()));
        info!(schedule_id = %schedule.id, cron = %schedule.spec, "schedule created");
        self.shape.schedules.put(Arc::clone(&schedule));
        if self.persister.is_durable() {
            self.persister.upsert_schedule(Arc::clone(&schedule));
            self.persister.defer(Deferred::ScheduleCreated {
                schedule,
                respond_to,
            });
        } else {
            let _ = respond_to.send(Ok(schedule));
        }
    }

    fn set_schedule_paused(
        &mut self,
        id: ScheduleId,
        paused: bool,
        respond_to: Reply<Arc<Schedule>>,
    ) {
        let Some(current) = self.shape.schedules.schedules.get(&id).cloned() else {
            let _ = respond_to.send(Err(ManagerError::ScheduleNotFound(id)));
            return;
        };
        let mut changed = (*current).clone();
        let did_change = if paused {
            changed.pause()
        } else {
            changed.resume(now())
        };
        if !did_change {
            let _ = respond_to.send(Ok(current));
            return;
        }
        if let Some(refused) = self.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        let schedule = Arc::new(changed);
        info!(schedule_id = %id, paused, "schedule paused or resumed");
        self.shape.schedules.put(Arc::clone(&schedule));
        self.persister.upsert_schedule(Arc::clone(&schedule));
        if self.persister.has_work() {
            self.persister.defer(Deferred::ScheduleAnswer {
                schedule,
                respond_to,
            });
        } else {
            let _ = respond_to.send(Ok(schedule));
        }
    }

    fn delete_schedule(&mut self, id: ScheduleId, respond_to: Reply<()>) {
        if !self.shape.schedules.schedules.contains_key(&id) {
            let _ = respond_to.send(Err(ManagerError::ScheduleNotFound(id)));
            return;
        }
        if let Some(refused) = self.refusal() {
            let _ = respond_to.send(Err(refused));
            return;
        }
        self.shape.schedules.remove(id);
        info!(schedule_id = %id, "schedule deleted");
        self.persister.delete_schedule(id);
        if self.persister.has_work() {
            self.persister.defer(Deferred::Done(respond_to));
        } else {
            let _ = respond_to.send(Ok(()));
        }
    }

    /// Fires every schedule that is due, each once. A firing the server
    /// cannot take now (shutting down, a failing store, a full queue or
    /// memory budget) is held back and tried again a second later; when it
    /// fires, it fires once, as after downtime.
    pub(super) fn fire_due_schedules(&mut self) {
        let now = now();
        if self
            .shape
            .schedules
            .held_back_until
            .is_some_and(|until| until > now)
        {
            return;
        }
        self.shape.schedules.held_back_until = None;
        for id in self.shape.schedules.due_at(now) {
            if let Some(refused) = self.refusal() {
                self.hold_back_firing(id, &refused);
                return;
            }
            let Some(current) = self.shape.schedules.schedules.get(&id).cloned() else {
                continue;
            };
            let last_status = current.last_task_id.and_then(|task| self.status_of(task));
            let mut next = (*current).clone();
            let task_id = TaskId::generate();
            match next.fire_if_due(now, last_status, task_id) {
                FireOutcome::NotDue => {}
                FireOutcome::Skipped => {
                    debug!(schedule_id = %id, "firing skipped: the previous task has not finished");
                    self.metrics.schedule_fired(FiringOutcome::Skipped);
                    let next = Arc::new(next);
                    self.shape.schedules.put(Arc::clone(&next));
                    self.persister.upsert_schedule(next);
                }
                FireOutcome::Fired { task, .. } => {
                    let data_bytes = self
                        .shape
                        .schedules
                        .template_bytes
                        .get(&id)
                        .copied()
                        .unwrap_or(0);
                    match self.accept_new_task(task_id, task, data_bytes) {
                        Err(refused) => {
                            self.hold_back_firing(id, &refused);
                            return;
                        }
                        Ok(task) => {
                            debug!(schedule_id = %id, task_id = %task_id, "schedule fired");
                            self.metrics.schedule_fired(FiringOutcome::Created);
                            let next = Arc::new(next);
                            self.shape.schedules.put(Arc::clone(&next));
                            if self.persister.is_durable() {
                                self.shape
                                    .schedules
                                    .unconfirmed_firings
                                    .insert(task_id, current);
                                self.persister.upsert_schedule(next);
                            }
                            self.admit(task, None);
                        }
                    }
                }
            }
        }
    }

    fn hold_back_firing(&mut self, id: ScheduleId, refused: &ManagerError) {
        warn!(schedule_id = %id, reason = %refused, "a due schedule cannot fire now; trying again in a second");
        self.metrics.schedule_fired(FiringOutcome::Refused);
        self.shape.schedules.held_back_until = Some(now() + REFUSED_FIRING_RETRY);
    }

    /// A firing's task was stored: the firing stands.
    pub(super) fn firing_stored(&mut self, task_id: TaskId) {
        self.shape.schedules.unconfirmed_firings.remove(&task_id);
    }

    /// A firing's task could not be stored: its schedule goes back to how
    /// it was, still due, so it fires again once the store takes writes.
    pub(super) fn firing_not_stored(&mut self, task_id: TaskId) {
        let Some(before) = self.shape.schedules.unconfirmed_firings.remove(&task_id) else {
            return;
        };
        let Some(current) = self.shape.schedules.schedules.get(&before.id) else {
            return; // deleted meanwhile
        };
        warn!(
            schedule_id = %before.id,
            task_id = %task_id,
            "a firing's task could not be stored; the schedule fires again when the store takes writes"
        );
        let mut restored = (*before).clone();
        restored.revision = current.revision + 1;
        let restored = Arc::new(restored);
        self.shape.schedules.put(Arc::clone(&restored));
        self.persister.upsert_schedule(restored);
    }

    /// A schedule's create could not be stored: it never existed.
    pub(super) fn schedule_create_not_stored(&mut self, id: ScheduleId) {
        self.shape.schedules.remove(id);
        // A firing of it may wait in the next batch: that must not store
        // it either.
        self.persister.delete_schedule(id);
    }
}
