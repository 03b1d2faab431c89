//! `--workers`: remote workers (`WorkerService`) against local processors,
//! in one run: end-to-end throughput of no-op tasks through one Rust worker
//! stream and through 8, next to the built-in `echo` run in the server;
//! and the latency from a create to the worker holding the task, next to
//! the create's own round trip.
//!
//! The workers are `task_processor::worker` (the library users run), in
//! this process, over real TCP; the server is ours on the memory store
//! with the same settings for every row, so the ratio is the cost of
//! running the code elsewhere.

use std::time::{Duration, Instant};

use serde_json::Value as JsonValue;
use task_processor::{
    config::Config,
    pb,
    worker::{Job, JobError, Worker},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    RunningServer, Scale, bench_config,
    load::{create_request, end_to_end_on, percentile},
};

/// The worker kind of the no-op tasks.
const NOOP: &str = "noop";

/// The server's slots, for every row.
const SLOTS: usize = 64;

/// Samples of the latency figure.
const LATENCY_SAMPLES: usize = 200;

pub async fn report(scale: Scale) -> anyhow::Result<()> {
    let tasks = scale.end_to_end_tasks;
    println!(
        "## Remote workers (WorkerService) against local processors ({tasks} no-op tasks, \
         256 creates in flight, max_concurrent {SLOTS}, memory store)\n"
    );
    println!("| where the code runs | tasks/s | × local |");
    println!("|---|---:|---:|");
    let local = {
        let server = RunningServer::ours(worker_config()).await?;
        let figure = end_to_end_on(&server, tasks, create_request()).await?;
        server.stop().await;
        figure
    };
    println!("| in the server (echo) | {local:.0} | 1.00 |");
    for streams in [1, 8] {
        let per_stream = SLOTS.div_ceil(streams);
        let server = RunningServer::ours(worker_config()).await?;
        let workers = start_workers(&server.url, streams, per_stream, noop)?;
        let figure = end_to_end_on(&server, tasks, noop_request()).await?;
        workers.cancel();
        server.stop().await;
        println!(
            "| {streams} Rust worker stream{} × {per_stream} | {figure:.0} | {:.2} |",
            if streams == 1 { "" } else { "s" },
            figure / local
        );
    }
    println!();
    report_latency().await
}

/// Create to assignment, one task at a time, an idle worker waiting.
async fn report_latency() -> anyhow::Result<()> {
    let server = RunningServer::ours(worker_config()).await?;
    let (received, mut receipts) = mpsc::unbounded_channel::<Instant>();
    let workers = start_workers(&server.url, 1, 1, move |_job: Job| {
        let received = received.clone();
        async move {
            let _ = received.send(Instant::now());
            Ok(JsonValue::Null)
        }
    })?;
    let mut client = server
        .clients(1)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("one client"))?;
    // A first task, so the stream and the connection are warm.
    client.create_task(noop_request()).await?;
    receipts
        .recv()
        .await
        .ok_or_else(|| anyhow::anyhow!("the worker stopped"))?;
    let mut round_trips = Vec::with_capacity(LATENCY_SAMPLES);
    let mut to_assignment = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        client.create_task(noop_request()).await?;
        round_trips.push(started.elapsed());
        let assigned = receipts
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the worker stopped"))?;
        to_assignment.push(assigned.saturating_duration_since(started));
    }
    workers.cancel();
    server.stop().await;
    round_trips.sort_unstable();
    to_assignment.sort_unstable();
    println!(
        "## Create to assignment ({LATENCY_SAMPLES} tasks one at a time, an idle worker waiting)\n"
    );
    println!("| figure | p50 | p99 |");
    println!("|---|---:|---:|");
    for (name, sorted) in [
        ("CreateTask round trip (the baseline)", &round_trips),
        ("create sent → the worker's handler runs", &to_assignment),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms |",
            millis(percentile(sorted, 0.5)),
            millis(percentile(sorted, 0.99))
        );
    }
    println!();
    Ok(())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn worker_config() -> Config {
    Config {
        max_concurrent: SLOTS,
        worker_kinds: vec![NOOP.into()],
        ..bench_config()
    }
}

fn noop_request() -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        kind: NOOP.into(),
        ..create_request()
    }
}

async fn noop(_job: Job) -> Result<JsonValue, JobError> {
    Ok(JsonValue::Null)
}

/// `streams` workers of `per_stream` slots each, running `handler` for the
/// no-op kind until the token is cancelled.
fn start_workers<H, F>(
    url: &str,
    streams: usize,
    per_stream: usize,
    handler: H,
) -> anyhow::Result<CancellationToken>
where
    H: Fn(Job) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<JsonValue, JobError>> + Send + 'static,
{
    let stop = CancellationToken::new();
    for index in 0..streams {
        let worker = Worker::builder(url)
            .name(format!("bench-{index}"))
            .max_concurrent(u32::try_from(per_stream)?)
            .handle(NOOP, handler.clone())
            .build()?;
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = worker.run_until(stop.cancelled_owned()).await {
                eprintln!("a bench worker failed: {error}");
            }
        });
    }
    Ok(stop)
}
