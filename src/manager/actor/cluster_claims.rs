//! Claims on PostgreSQL: when this replica asks the table for work, and
//! how much. A claim rides inside the group commit about to start when
//! there is one (one transaction instead of two: the slots whose runs that
//! commit ends are filled by it, and the tasks it inserts can be taken at
//! once), and goes on its own otherwise.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use tracing::debug;

use super::{Cluster, Manager, cluster::ClusterEvent};
use crate::{
    manager::{STORE_CALL_TIMEOUT, persist::Pending},
    store::{
        BatchOutcome, ClaimAsk,
        postgres::{ClaimRequest, Claimed, KindRoom},
        within,
    },
    task::{TaskId, TaskStatus},
};

/// Whether `batch` ends the run of `id` (writes a state that is not
/// running), so its slot is free once the batch commits.
fn ends_run(batch: &Pending, id: &TaskId) -> bool {
    batch
        .updates
        .get(id)
        .is_some_and(|task| task.status != TaskStatus::Running)
}

impl Manager<Cluster> {
    /// Starts a claim when slots are free and work may be waiting: inside
    /// the commit about to start, when there is one, else on its own.
    /// Called after every event of the actor's loop, so it returns before
    /// any counting when no claim is wanted.
    pub(super) fn claim_due(&mut self) {
        if self.shape.claiming {
            return;
        }
        let riding = self.persister.batch_about_to_commit().is_some_and(|batch| {
            // A commit that ends runs frees slots; one that inserts tasks
            // brings work: either calls for a claim inside it.
            self.shape.claim_wanted
                || !batch.inserts.is_empty()
                || self.shape.ending.keys().any(|id| ends_run(batch, id))
        });
        if !riding && !self.shape.claim_wanted {
            return;
        }
        // Runs that ended here but whose end is not committed: the table
        // still shows them running, so they still take their slots (unless
        // the claim rides on the commit that ends them).
        let mut ending_elsewhere: HashMap<&str, usize> = HashMap::new();
        {
            let batch = if riding {
                self.persister.batch_about_to_commit().map(|batch| &*batch)
            } else {
                None
            };
            for (id, kind) in &self.shape.ending {
                let freed_by_batch = batch.is_some_and(|batch| ends_run(batch, id));
                if !self.running.contains_key(id) && !freed_by_batch {
                    *ending_elsewhere.entry(kind.as_str()).or_default() += 1;
                }
            }
        }
        let free = self.free_slots(ending_elsewhere.values().sum());
        if free == 0 {
            return;
        }
        // A worker kind may take no more than the stream slots counted for
        // it alone: `kind_room` counts a slot for every kind of its stream,
        // and a claim of each kind up to that would take more tasks than
        // the streams can run (the rest would be given back, runs cut
        // short for nothing).
        // A claim that came back short is tried once more for each other
        // kind a stream's slots could have been counted for.
        self.shape.claim_rotation = self.shape.claim_rotation.wrapping_add(1);
        if !self.shape.rotating {
            self.shape.rotations_left = self.registry.workers().map_or(0, |workers| {
                workers.most_kinds_of_a_free_stream().saturating_sub(1)
            });
        }
        let worker_slots = self
            .registry
            .workers()
            .map(|workers| workers.slots_by_kind(self.shape.claim_rotation));
        let rooms: Vec<KindRoom> = self
            .shape
            .kinds
            .iter()
            .map(|kind| {
                let mut room = self.kind_room(
                    kind,
                    ending_elsewhere.get(kind.as_str()).copied().unwrap_or(0),
                    free,
                );
                if let (Some(slots), Some(_)) = (&worker_slots, self.registry.workers_for(kind)) {
                    room = room.min(slots.get(kind.as_str()).copied().unwrap_or(0));
                }
                KindRoom {
                    kind: kind.clone(),
                    room,
                }
            })
            .filter(|room| room.room > 0)
            .collect();
        let lease = self.config.lease;
        let cluster = &mut self.shape;
        cluster.claim_wanted = false;
        cluster.claiming = true;
        let take_over = std::mem::take(&mut cluster.take_over_wanted);
        if riding {
            if let Some(batch) = self.persister.batch_about_to_commit() {
                batch.claim = Some(ClaimAsk {
                    limit: free,
                    lease,
                    rooms,
                    take_over,
                });
            }
            return;
        }
        let node = self.config.node_name.clone();
        let store = cluster.store.clone();
        cluster.calls.spawn(async move {
            let request = ClaimRequest {
                node: &node,
                limit: free,
                lease,
                rooms: &rooms,
                now: SystemTime::now(),
                take_over,
            };
            let result = within(STORE_CALL_TIMEOUT, store.claim_due(request)).await;
            ClusterEvent::Claimed {
                limit: free,
                result,
            }
        });
    }

    /// What a claim (on its own, or inside a commit) took: each task starts
    /// here; a full claim means more may wait.
    pub(super) fn start_claimed(&mut self, limit: usize, claimed: Claimed) {
        let Claimed { tasks, next_due } = claimed;
        self.shape.rotating = false;
        if tasks.len() >= limit {
            self.shape.claim_wanted = true;
        } else if self.shape.rotations_left > 0 {
            // The slots of a stream of several kinds went to one of them
            // this time: let the next one have them at once.
            self.shape.rotations_left -= 1;
            self.shape.rotating = true;
            self.shape.claim_wanted = true;
        }
        self.shape.next_due = next_due;
        for task in tasks {
            let task = Arc::new(task);
            debug!(task_id = %task.id, kind = %task.kind, attempt = task.attempt, "task claimed");
            self.tasks.insert(task.id, Arc::clone(&task));
            self.start_run(task);
        }
    }

    /// A commit that carried a claim is durable: what the claim took starts.
    pub(super) fn riding_claim_committed(&mut self, batch: &Pending, outcome: &BatchOutcome) {
        let Some(ask) = &batch.claim else {
            return;
        };
        self.shape.claiming = false;
        match &outcome.claimed {
            Some(claimed) => self.start_claimed(ask.limit, claimed.clone()),
            // Not run (the store had nothing to write): claim again.
            None => self.shape.claim_wanted = true,
        }
    }

    /// A commit that carried a claim failed: nothing was taken.
    pub(super) fn riding_claim_failed(&mut self, batch: &Pending) {
        if batch.claim.is_some() {
            self.shape.claiming = false;
            self.shape.claim_wanted = true;
        }
    }
}
