//! What the core knows of remote workers beyond a run: which worker kinds
//! have tasks waiting while no worker runs them, for the gauges and a
//! warning, logged once per kind until a worker comes or the tasks go.

use std::collections::HashSet;

use tracing::{info, warn};

use super::{Manager, Shape};
use crate::metrics::WorkerKindOccupancy;

/// The worker kinds whose lack of a worker was logged, so it is logged once.
#[derive(Debug, Default)]
pub(super) struct WorkerWarnings {
    warned: HashSet<String>,
}

impl<S: Shape> Manager<S> {
    /// Per worker kind: streams connected here, and tasks waiting while
    /// none is.
    pub(super) fn worker_kind_figures(&self) -> Vec<WorkerKindOccupancy> {
        let Some(workers) = self.registry.workers() else {
            return Vec::new();
        };
        workers
            .kinds()
            .iter()
            .map(|kind| {
                let connected = workers.streams_serving(kind);
                let waiting_without_worker = if connected == 0 {
                    S::ready_of_kind(self, kind)
                } else {
                    0
                };
                WorkerKindOccupancy {
                    kind: kind.clone(),
                    connected,
                    waiting_without_worker,
                }
            })
            .collect()
    }

    /// Housekeeping: warns once for each worker kind whose tasks wait with
    /// no worker connected, and says when one comes.
    pub(super) fn warn_of_kinds_without_workers(&mut self) {
        for figures in self.worker_kind_figures() {
            let warned = self.worker_warnings.warned.contains(&figures.kind);
            if figures.waiting_without_worker > 0 && !warned {
                warn!(
                    kind = %figures.kind,
                    waiting = figures.waiting_without_worker,
                    "tasks wait for a worker kind that no connected worker runs"
                );
                self.worker_warnings.warned.insert(figures.kind);
            } else if figures.waiting_without_worker == 0 && warned {
                if figures.connected > 0 {
                    info!(kind = %figures.kind, "a worker for the kind connected");
                }
                self.worker_warnings.warned.remove(&figures.kind);
            }
        }
    }
}
