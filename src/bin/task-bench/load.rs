//! Throughput and latency: unary RPCs against the ceiling, end-to-end task
//! throughput, and the actor alone.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use task_processor::{
    api::json::json_to_proto,
    config::Config,
    manager::ManagerHandle,
    metrics::Metrics,
    pb::{self, task_service_client::TaskServiceClient},
    processor::Registry,
};
use tonic::transport::Channel;

use crate::{CONNECTIONS, RunningServer, Scale, bench_config, echo_task};

type Client = TaskServiceClient<Channel>;

/// What one phase measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Calls made, failed ones included (they print a line each).
    pub calls: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1);
    sorted[index]
}

/// Runs `call` from `in_flight` workers spread over `clients` for `phase`.
pub async fn drive<F, Fut>(
    clients: &[Client],
    in_flight: usize,
    phase: Duration,
    call: F,
) -> Measured
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + phase;
    let mut workers = Vec::with_capacity(in_flight);
    for worker in 0..in_flight {
        let client = clients[worker % clients.len()].clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                call(client.clone()).await;
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Measured {
        calls: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

/// An `echo` task with a little data, as every gRPC figure creates it.
pub fn create_request() -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: "bench".into(),
        kind: "echo".into(),
        data: Some(json_to_proto(&json!({"n": 1}))),
        ..Default::default()
    }
}

pub async fn create(mut client: Client) {
    if let Err(status) = client.create_task(create_request()).await {
        eprintln!("create failed: {status}");
    }
}

pub fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// How many alternating slices each comparison is cut into: the ceiling
/// and ours take turns, so drift in the machine's load hits both alike.
const SLICES: u32 = 3;

/// Measures the ceiling and ours in alternating slices of `phase`; returns
/// the median slice of each.
async fn compare<F, Fut>(
    bare: &[Client],
    ours: &[Client],
    in_flight: usize,
    phase: Duration,
    call: F,
) -> (Measured, Measured)
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let slice = phase / SLICES;
    let mut ceiling = Vec::new();
    let mut measured = Vec::new();
    for _ in 0..SLICES {
        ceiling.push(drive(bare, in_flight, slice, call.clone()).await);
        measured.push(drive(ours, in_flight, slice, call.clone()).await);
    }
    (median(ceiling), median(measured))
}

fn median(mut slices: Vec<Measured>) -> Measured {
    slices.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    slices[slices.len() / 2]
}

/// CreateTask and GetTask at 1, 64 and 256 in flight over 4 connections,
/// ours next to the ceiling.
pub async fn report_unary(scale: Scale) -> anyhow::Result<()> {
    let bare = RunningServer::bare().await?;
    let ours = RunningServer::ours(bench_config()).await?;
    let bare_clients = bare.clients(CONNECTIONS).await?;
    let our_clients = ours.clients(CONNECTIONS).await?;
    let stored = our_clients[0]
        .clone()
        .create_task(create_request())
        .await?
        .into_inner();

    println!(
        "## Unary RPCs ({CONNECTIONS} connections, echo kind, {:?} per figure in {SLICES} alternating slices, median slice shown)\n",
        scale.phase * 2
    );
    println!(
        "| RPC | in flight | ceiling ops/s | ours ops/s | ratio | ours p50 | ours p99 | ceiling p50 | ceiling p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for in_flight in [1, 64, 256] {
        let (ceiling, measured) = compare(
            &bare_clients,
            &our_clients,
            in_flight,
            scale.phase * 2,
            create,
        )
        .await;
        print_row("CreateTask", in_flight, ceiling, measured);
    }
    for in_flight in [1, 64, 256] {
        let id = stored.id.clone();
        let get = move |mut client: Client| {
            let id = id.clone();
            async move {
                if let Err(status) = client.get_task(pb::GetTaskRequest { id }).await {
                    eprintln!("get failed: {status}");
                }
            }
        };
        let (ceiling, measured) =
            compare(&bare_clients, &our_clients, in_flight, scale.phase * 2, get).await;
        print_row("GetTask", in_flight, ceiling, measured);
    }
    println!();
    Ok(())
}

/// CreateTask at 64 in flight against our server only, for profiling.
pub async fn profile_create(scale: Scale) -> anyhow::Result<()> {
    let ours = RunningServer::ours(bench_config()).await?;
    let clients = ours.clients(CONNECTIONS).await?;
    let measured = drive(&clients, 64, scale.phase * 4, create).await;
    println!(
        "CreateTask at 64 in flight: {:.0}/s, p50 {}, p99 {}",
        measured.per_second,
        millis(measured.p50),
        millis(measured.p99)
    );
    Ok(())
}

fn print_row(rpc: &str, in_flight: usize, ceiling: Measured, ours: Measured) {
    println!(
        "| {rpc} | {in_flight} | {:.0} | {:.0} | {:.2}x | {} | {} | {} | {} |",
        ceiling.per_second,
        ours.per_second,
        ours.per_second / ceiling.per_second,
        millis(ours.p50),
        millis(ours.p99),
        millis(ceiling.p50),
        millis(ceiling.p99),
    );
}

/// Tasks per second from the first create until the last task finished.
async fn end_to_end(
    config: Config,
    tasks: usize,
    request: pb::CreateTaskRequest,
) -> anyhow::Result<f64> {
    let server = RunningServer::ours(config).await?;
    let figure = end_to_end_on(&server, tasks, request).await;
    server.stop().await;
    figure
}

/// Tasks per second through `server`: `tasks` creates of `request`, 256 in
/// flight over [`CONNECTIONS`] connections, until every one is finished.
pub async fn end_to_end_on(
    server: &RunningServer,
    tasks: usize,
    request: pb::CreateTaskRequest,
) -> anyhow::Result<f64> {
    let clients = server.clients(CONNECTIONS).await?;
    let manager = server
        .manager
        .clone()
        .ok_or_else(|| anyhow::anyhow!("our server has a manager"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..256 {
        let mut client = clients[worker % clients.len()].clone();
        let next = Arc::clone(&next);
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                if let Err(status) = client.create_task(request.clone()).await {
                    eprintln!("create failed: {status}");
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    loop {
        let stats = manager.stats().await?;
        if stats.finished >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(tasks as f64 / started.elapsed().as_secs_f64())
}

pub async fn report_end_to_end(scale: Scale) -> anyhow::Result<()> {
    let tasks = scale.end_to_end_tasks;
    println!(
        "## End to end ({tasks} tasks, 256 creates in flight over {CONNECTIONS} connections, until every task is observed finished)\n"
    );
    println!("| workload | max_concurrent | tasks/s | target |");
    println!("|---|---:|---:|---|");
    let echo = end_to_end(
        Config {
            max_concurrent: 64,
            ..bench_config()
        },
        tasks,
        create_request(),
    )
    .await?;
    println!("| echo | 64 | {echo:.0} | ≥ 30 000 |");
    let sleep_request = pb::CreateTaskRequest {
        kind: "sleep".into(),
        data: Some(json_to_proto(&json!({"seconds": 0.01}))),
        ..create_request()
    };
    let sleep = end_to_end(
        Config {
            max_concurrent: 1000,
            ..bench_config()
        },
        tasks,
        sleep_request,
    )
    .await?;
    println!("| sleep 0.01 s | 1000 | {sleep:.0} | (≤ 100 000 by construction) |\n");
    Ok(())
}

/// Commands per second through `ManagerHandle`, no gRPC.
pub async fn report_actor(scale: Scale) -> anyhow::Result<()> {
    let config = Config {
        max_concurrent: 64,
        max_finished_tasks: 100_000,
        ..bench_config()
    }
    .manager_config();
    let manager = ManagerHandle::spawn(
        config,
        Registry::with_builtins(Duration::ZERO),
        Metrics::new(),
    );
    let new_task = echo_task("bench");
    let stored = manager.create_task(new_task.clone()).await?;
    println!(
        "## The actor alone (ManagerHandle, in process, 64 callers, {:?})\n",
        scale.phase
    );
    println!("| command | commands/s | target |");
    println!("|---|---:|---|");
    for (name, creates) in [
        ("GetTask", false),
        ("CreateTask (each also runs an echo task)", true),
    ] {
        let deadline = Instant::now() + scale.phase;
        let started = Instant::now();
        let count = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..64 {
            let manager = manager.clone();
            let count = Arc::clone(&count);
            let new_task = new_task.clone();
            let id = stored.id;
            workers.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let ok = if creates {
                        manager.create_task(new_task.clone()).await.is_ok()
                    } else {
                        manager.get_task(id).await.is_ok()
                    };
                    if ok {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for worker in workers {
            worker.await?;
        }
        let per_second = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!("| {name} | {per_second:.0} | ≥ 500 000 |");
    }
    println!();
    Ok(())
}
