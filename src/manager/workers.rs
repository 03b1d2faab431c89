//! The handle's side of `ListWorkers`: on PostgreSQL, the workers every
//! replica wrote to the `workers` table (each replica knows its own from
//! its hub, live; the table brings the others').

use super::{ManagerError, ManagerHandle, STORE_READ_TIMEOUT, storage_error};
use crate::{
    processor::remote::WorkerInfo,
    store::{postgres::WorkerRow, within},
};

/// A worker stream connected to `node`, as every replica lists it.
pub fn worker_row(info: WorkerInfo, node: &str) -> WorkerRow {
    WorkerRow {
        id: info.id,
        node: node.to_owned(),
        name: info.name,
        kinds: info.kinds,
        max_concurrent: u64::try_from(info.max_concurrent).unwrap_or(u64::MAX),
        in_flight: u64::try_from(info.in_flight).unwrap_or(u64::MAX),
        peer: info.peer.unwrap_or_default(),
        connected_at: info.connected_at,
    }
}

impl ManagerHandle {
    /// The workers connected to replicas other than `node`, when replicas
    /// share a store (PostgreSQL); `None` on a store of one process.
    pub async fn workers_of_other_replicas(
        &self,
        node: &str,
    ) -> Result<Option<Vec<WorkerRow>>, ManagerError> {
        let Some(store) = &self.shared_store else {
            return Ok(None);
        };
        let rows = within(STORE_READ_TIMEOUT, store.list_workers())
            .await
            .map_err(|error| storage_error(&error))?;
        Ok(Some(
            rows.into_iter().filter(|row| row.node != node).collect(),
        ))
    }
}
