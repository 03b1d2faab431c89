//! Watch fan-out: many open streams on one server, and how fast a status
//! change reaches every watcher of one task.

use std::time::Instant;

use serde_json::json;
use task_processor::{
    api::json::json_to_proto,
    config::Config,
    pb::{self, task_service_client::TaskServiceClient},
    server::MAX_CONCURRENT_STREAMS,
};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{RunningServer, Scale, bench_config, load::millis, load::percentile};

type Client = TaskServiceClient<Channel>;

/// Connections the watchers are spread over, at least...
const MIN_WATCH_CONNECTIONS: usize = 16;

/// ...and enough that no connection needs more streams than the server
/// allows (a call beyond the limit would wait for a stream to end, and the
/// run would hang). The open streams and each round's fan-out streams are
/// both spread round-robin, so a connection carries up to the ceiling of
/// each share.
fn watch_connections(scale: &Scale) -> usize {
    let limit = MAX_CONCURRENT_STREAMS as usize;
    let most_on_one = |connections: usize| {
        scale.open_watchers.div_ceil(connections) + scale.fan_out_watchers.div_ceil(connections)
    };
    let mut connections = MIN_WATCH_CONNECTIONS;
    while most_on_one(connections) > limit {
        connections += 1;
    }
    connections
}

fn pending_sleep(name: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: name.into(),
        kind: "sleep".into(),
        data: Some(json_to_proto(&json!({"seconds": 3600}))),
        timeout_seconds: 300,
        ..Default::default()
    }
}

/// Opens a watch, waits for its first message, then reports (on
/// `first_seen`) and returns the instant the terminal state arrived.
async fn watch_until_terminal(
    mut client: Client,
    id: String,
    first_seen: oneshot::Sender<()>,
) -> Option<Instant> {
    let mut stream = client
        .watch_task(pb::WatchTaskRequest { id })
        .await
        .ok()?
        .into_inner();
    stream.next().await?.ok()?;
    let _ = first_seen.send(());
    while let Some(message) = stream.next().await {
        let task = message.ok()?.task?;
        if task.status == pb::TaskStatus::Cancelled as i32 {
            return Some(Instant::now());
        }
    }
    None
}

pub async fn report(scale: Scale) -> anyhow::Result<()> {
    // One slot, held by a sleeper, keeps every other task pending.
    let server = RunningServer::ours(Config {
        max_concurrent: 1,
        ..bench_config()
    })
    .await?;
    let watch_connections = watch_connections(&scale);
    // The control client's calls get a connection of their own, never
    // waiting behind watchers for a stream.
    let mut control = server
        .clients(1)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no control connection"))?;
    let clients = server.clients(watch_connections).await?;
    control.create_task(pending_sleep("slot holder")).await?;

    println!("## Watch fan-out ({watch_connections} connections)\n");
    println!("| figure | measured | target |");
    println!("|---|---:|---|");

    // Many streams open at once, one per task.
    let opening = Instant::now();
    let mut open_streams = Vec::with_capacity(scale.open_watchers);
    let mut first_messages = Vec::with_capacity(scale.open_watchers);
    for index in 0..scale.open_watchers {
        let task = control
            .create_task(pending_sleep("watched"))
            .await?
            .into_inner();
        let (seen, first) = oneshot::channel();
        let client = clients[index % clients.len()].clone();
        open_streams.push(tokio::spawn(watch_until_terminal(client, task.id, seen)));
        first_messages.push(first);
    }
    for first in first_messages {
        first.await?;
    }
    let stats = server
        .manager
        .clone()
        .ok_or_else(|| anyhow::anyhow!("manager"))?
        .stats()
        .await?;
    println!(
        "| concurrent WatchTask streams open (each got its first state) | {} in {:.2} s | 10 000 |",
        stats.watchers,
        opening.elapsed().as_secs_f64()
    );

    // Fan-out latency while those streams stay open.
    let mut every_watcher = Vec::new();
    let mut last_watcher = Vec::new();
    for _ in 0..scale.fan_out_rounds {
        let task = control
            .create_task(pending_sleep("fan-out"))
            .await?
            .into_inner();
        let mut readers = Vec::with_capacity(scale.fan_out_watchers);
        let mut first_messages = Vec::with_capacity(scale.fan_out_watchers);
        for index in 0..scale.fan_out_watchers {
            let (seen, first) = oneshot::channel();
            let client = clients[index % clients.len()].clone();
            readers.push(tokio::spawn(watch_until_terminal(
                client,
                task.id.clone(),
                seen,
            )));
            first_messages.push(first);
        }
        for first in first_messages {
            first.await?;
        }
        let changed = Instant::now();
        control
            .cancel_task(pb::CancelTaskRequest { id: task.id })
            .await?;
        let mut round = Vec::with_capacity(readers.len());
        for reader in readers {
            if let Some(received) = reader.await? {
                round.push(received.saturating_duration_since(changed));
            }
        }
        round.sort_unstable();
        last_watcher.push(round.last().copied().unwrap_or_default());
        every_watcher.extend(round);
    }
    every_watcher.sort_unstable();
    last_watcher.sort_unstable();
    println!(
        "| status change → each of {} watchers of one task, p50 / p99 | {} / {} | p99 ≤ 50 ms |",
        scale.fan_out_watchers,
        millis(percentile(&every_watcher, 0.50)),
        millis(percentile(&every_watcher, 0.99)),
    );
    println!(
        "| status change → the last of {} watchers, p50 / p99 over {} rounds | {} / {} | p99 ≤ 50 ms |",
        scale.fan_out_watchers,
        scale.fan_out_rounds,
        millis(percentile(&last_watcher, 0.50)),
        millis(percentile(&last_watcher, 0.99)),
    );
    println!();
    for stream in open_streams {
        stream.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_connection_carries_more_streams_than_the_server_allows() {
        for quick in [false, true] {
            let scale = Scale::new(quick);
            let connections = watch_connections(&scale);
            let most = scale.open_watchers.div_ceil(connections)
                + scale.fan_out_watchers.div_ceil(connections);
            assert!(
                most <= MAX_CONCURRENT_STREAMS as usize,
                "{most} streams on one of {connections} connections"
            );
        }
    }
}
