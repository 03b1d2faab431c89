//! The cluster shape's schedules (PostgreSQL): the table is the truth, so
//! requests go to it, and any replica may fire a due schedule. Each replica
//! looks for due firings when the earliest one it knows of is due, and once
//! a second besides (a schedule created or resumed on another replica is
//! found that way); the store's row locks make each firing happen once
//! (`PostgresStore::fire_due_schedules`).

use std::{sync::Arc, time::SystemTime};

use tracing::{debug, info, warn};

use super::{Cluster, Manager, cluster::ClusterEvent, now};
use crate::{
    errors::error_chain,
    manager::{ManagerError, Reply, STORE_CALL_TIMEOUT, ScheduleCommand, SchedulePage},
    metrics::FiringOutcome,
    schedule::{Schedule, ScheduleId},
    store::{StoreError, postgres::FiringRound, within},
};

/// What became of a schedule request or a firing round, back in the actor.
#[derive(Debug)]
pub(in crate::manager) enum ScheduleEvent {
    /// A firing round ended: what it fired, and when the earliest schedule
    /// is due next.
    Fired(Result<(FiringRound, Option<SystemTime>), StoreError>),
    /// A schedule was created or resumed here: look again for the next
    /// firing.
    Changed,
    /// A request that changes no firing was answered.
    Read,
}

/// The firing loop's state.
#[derive(Debug, Default)]
pub(in crate::manager) struct ClusterSchedules {
    /// A firing round is under way.
    firing: bool,
    /// A round is due: when a slot for it is free.
    wanted: bool,
    /// When the earliest schedule fires, as last read.
    next_due: Option<SystemTime>,
}

impl ClusterSchedules {
    /// When the firing loop wakes next (the earliest firing); `None`: only
    /// on the next housekeeping tick.
    pub(super) fn wake_at(&self) -> Option<SystemTime> {
        if self.firing { None } else { self.next_due }
    }
}

impl Manager<Cluster> {
    pub(super) fn serve_schedule_command(&mut self, command: ScheduleCommand) {
        let store = self.shape.store.clone();
        match command {
            ScheduleCommand::Create {
                new_schedule,
                respond_to,
            } => {
                if let Some(refused) = self.refusal() {
                    let _ = respond_to.send(Err(refused));
                    return;
                }
                let schedule = Schedule::new(ScheduleId::generate(), *new_schedule, now());
                self.shape.calls.spawn(async move {
                    let stored = within(STORE_CALL_TIMEOUT, store.create_schedule(&schedule)).await;
                    if let Ok(stored) = &stored {
                        info!(schedule_id = %stored.id, cron = %stored.spec, "schedule created");
                    }
                    reply(
                        respond_to,
                        stored.map(|stored| Some(Arc::new(stored))),
                        schedule.id,
                    )
                });
            }
            ScheduleCommand::Get { id, respond_to } => {
                self.shape.calls.spawn(async move {
                    let found = within(STORE_CALL_TIMEOUT, store.get_schedule(id)).await;
                    let _ =
                        respond_to.send(found_or_not(found.map(|found| found.map(Arc::new)), id));
                    ClusterEvent::Schedules(ScheduleEvent::Read)
                });
            }
            ScheduleCommand::List {
                after,
                limit,
                tenant,
                respond_to,
            } => {
                self.shape.calls.spawn(async move {
                    let page: Result<SchedulePage, StoreError> = within(
                        STORE_CALL_TIMEOUT,
                        store.list_schedules(after, limit, tenant.as_deref()),
                    )
                    .await;
                    let _ = respond_to.send(page.map_err(|error| storage_error(&error)));
                    ClusterEvent::Schedules(ScheduleEvent::Read)
                });
            }
            ScheduleCommand::SetPaused {
                id,
                paused,
                respond_to,
            } => {
                self.shape.calls.spawn(async move {
                    let changed = within(
                        STORE_CALL_TIMEOUT,
                        store.set_schedule_paused(id, paused, now()),
                    )
                    .await;
                    if let Ok(Some(_)) = &changed {
                        info!(schedule_id = %id, paused, "schedule paused or resumed");
                    }
                    reply(respond_to, changed.map(|changed| changed.map(Arc::new)), id)
                });
            }
            ScheduleCommand::Delete { id, respond_to } => {
                self.shape.calls.spawn(async move {
                    let answer = match within(STORE_CALL_TIMEOUT, store.delete_schedule(id)).await {
                        Ok(true) => {
                            info!(schedule_id = %id, "schedule deleted");
                            Ok(())
                        }
                        Ok(false) => Err(ManagerError::ScheduleNotFound(id)),
                        Err(error) => Err(storage_error(&error)),
                    };
                    let _ = respond_to.send(answer);
                    ClusterEvent::Schedules(ScheduleEvent::Read)
                });
            }
        }
    }

    /// The next housekeeping tick came, or a schedule changed here.
    pub(super) fn want_firing_round(&mut self) {
        self.shape.schedules.wanted = true;
    }

    /// The earliest schedule's time came: a round is wanted, and the timer
    /// waits for what that round finds next.
    pub(super) fn schedule_time_came(&mut self) {
        self.shape.schedules.next_due = None;
        self.want_firing_round();
    }

    /// Starts a firing round when one is wanted and none runs.
    pub(super) fn fire_schedules_if_wanted(&mut self) {
        let schedules = &mut self.shape.schedules;
        if !schedules.wanted || schedules.firing || !self.accepting {
            return;
        }
        schedules.wanted = false;
        schedules.firing = true;
        let store = self.shape.store.clone();
        let node = self.config.node_name.clone();
        self.shape.calls.spawn(async move {
            let round = async {
                let round = store.fire_due_schedules(&node, SystemTime::now()).await?;
                Ok((round, store.next_schedule_due().await?))
            };
            ClusterEvent::Schedules(ScheduleEvent::Fired(
                within(STORE_CALL_TIMEOUT, round).await,
            ))
        });
    }

    pub(super) fn handle_schedule_event(&mut self, event: ScheduleEvent) {
        match event {
            ScheduleEvent::Read => {}
            ScheduleEvent::Changed => self.want_firing_round(),
            ScheduleEvent::Fired(result) => {
                self.shape.schedules.firing = false;
                match result {
                    Ok((round, next_due)) => self.fired(round, next_due),
                    Err(error) => {
                        warn!(error = %error_chain(&error), "firing due schedules failed; trying again");
                    }
                }
            }
        }
    }

    fn fired(&mut self, round: FiringRound, next_due: Option<SystemTime>) {
        for _ in 0..round.skipped {
            self.metrics.schedule_fired(FiringOutcome::Skipped);
        }
        if round.skipped > 0 {
            debug!(
                skipped = round.skipped,
                "schedule firings skipped: the previous tasks have not finished"
            );
        }
        let full = round.fired.len() + round.skipped >= crate::store::postgres::FIRE_CHUNK;
        for fired in &round.fired {
            debug!(schedule_id = %fired.schedule_id, task_id = %fired.task.id, "schedule fired");
            self.metrics.schedule_fired(FiringOutcome::Created);
            self.metrics_of(&fired.task.kind).task_created();
        }
        if !round.fired.is_empty() {
            self.shape.pending_estimate += round.fired.len();
            self.shape.claim_wanted = true;
        }
        let now = SystemTime::now();
        self.shape.schedules.next_due = if full {
            // More were due than one round fires: go on at once.
            Some(now)
        } else {
            // A schedule still due after a round is held by another replica
            // or cannot be read: look again on the next tick, not in a loop.
            next_due.filter(|due| *due > now)
        };
    }
}

/// Sends the answer to a create, pause or resume, and has the firing loop
/// look again (the schedule's next firing may be the earliest now).
fn reply(
    respond_to: Reply<Arc<Schedule>>,
    result: Result<Option<Arc<Schedule>>, StoreError>,
    id: ScheduleId,
) -> ClusterEvent {
    let _ = respond_to.send(found_or_not(result, id));
    ClusterEvent::Schedules(ScheduleEvent::Changed)
}

fn found_or_not(
    result: Result<Option<Arc<Schedule>>, StoreError>,
    id: ScheduleId,
) -> Result<Arc<Schedule>, ManagerError> {
    match result {
        Ok(Some(schedule)) => Ok(schedule),
        Ok(None) => Err(ManagerError::ScheduleNotFound(id)),
        Err(error) => Err(storage_error(&error)),
    }
}

fn storage_error(error: &StoreError) -> ManagerError {
    warn!(error = %error_chain(error), "a schedule request to the store failed");
    ManagerError::Storage(error.to_string())
}
