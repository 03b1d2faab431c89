//! `--delayed`: N delayed tasks (`run_after` in the future) on our server
//! in this process, memory store. Two figures, each beside its baseline
//! from the same run:
//!
//! - memory: resident bytes per delayed task, next to a plain pending task
//!   (no `run_after`, no free slot) and a retained finished one;
//! - lateness: `started_at − run_after` of tasks due evenly over a window,
//!   next to `started_at − created_at` of plain tasks created at the same
//!   rate.
//!
//! Tasks are created and read through the server's `ManagerHandle` (no
//! gRPC), as the memory figures do, so the client's own buffers stay out of
//! the resident size. Nothing here is part of the service.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use serde_json::json;
use task_processor::{
    config::Config,
    manager::{ListQuery, ManagerHandle, ManagerStats},
    store::StoreUrl,
    task::{NewTask, Task},
};

use crate::{RunningServer, Scale, echo_task, memory::resident_bytes};

/// Concurrent callers that create the tasks of a phase.
const CREATORS: usize = 16;

/// How far ahead the memory phase's delayed tasks are due: far beyond the
/// time it takes to create them, so none starts while they are counted.
const MEMORY_DELAY: Duration = Duration::from_secs(600);

/// The contract's target: a due task starts within this of its time when
/// a slot is free.
const LATE: Duration = Duration::from_millis(100);

/// The knobs of one `--delayed` run.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Tasks in each memory phase and in the lateness phase.
    tasks: usize,
    /// The lateness phase: the first task is due this long after the
    /// creates are expected to end...
    lead: Duration,
    /// ...and the rest evenly over this window.
    window: Duration,
    /// Plain tasks of the lateness baseline, created at the same rate.
    plain_tasks: usize,
}

impl Run {
    fn new(scale: Scale) -> Self {
        let tasks = scale.delayed_tasks;
        // About 5 000 tasks due per second either way: well below what the
        // server runs with the default max_concurrent (10) and echo.
        let (lead, window) = if tasks >= 100_000 {
            (Duration::from_secs(10), Duration::from_secs(20))
        } else {
            (Duration::from_secs(1), Duration::from_secs(2))
        };
        Self {
            tasks,
            lead,
            window,
            plain_tasks: tasks / 5,
        }
    }

    fn due_per_second(&self) -> f64 {
        self.tasks as f64 / self.window.as_secs_f64()
    }
}

/// The shipped defaults, except what the figure needs (printed by
/// [`report`]): the memory store, a queue for all the tasks at once, every
/// task of the lateness phase retained until read, and servers that stop
/// at once.
fn delayed_config(run: &Run, max_concurrent: usize) -> Config {
    let defaults = Config::default();
    Config {
        store: StoreUrl::Memory,
        max_concurrent,
        queue_capacity: run.tasks.max(defaults.queue_capacity),
        max_finished_tasks: (run.tasks + run.plain_tasks).max(defaults.max_finished_tasks),
        drain_period: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        node_name: "bench".into(),
        ..defaults
    }
}

/// `--delayed`; `quick` is passed on to the memory phases' processes.
pub async fn report(scale: Scale, quick: bool) -> anyhow::Result<()> {
    let run = Run::new(scale);
    let defaults = Config::default();
    let config = delayed_config(&run, defaults.max_concurrent);
    println!(
        "task-bench --delayed: {} cores, {} tasks\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        run.tasks
    );
    println!("Our server in this process, the shipped defaults except:");
    println!(
        "- store memory (default a SQLite file): as every in-process figure, no disk in the figure"
    );
    println!(
        "- queue_capacity {} (default {}): all {} tasks wait at once",
        config.queue_capacity, defaults.queue_capacity, run.tasks
    );
    println!(
        "- max_finished_tasks {} (default {}): the lateness run keeps every task until it is read",
        config.max_finished_tasks, defaults.max_finished_tasks
    );
    println!("- drain_period and shutdown_grace 0 (default 5 s, 25 s): the servers stop at once");
    println!(
        "- the plain-pending baseline only: max_concurrent 1 (default {}), held by one `sleep` task",
        defaults.max_concurrent
    );
    println!(
        "Tasks are `echo` with no data, created and read through the in-process ManagerHandle.\n"
    );

    let memory = measure_memory(quick).await?;
    print_memory(&run, &memory);
    let lateness = measure_lateness(&run, memory.delayed_creates).await?;
    print_lateness(&run, &lateness);
    Ok(())
}

/// What one memory phase holds: N tasks of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryPhase {
    /// Pending, `run_after` 10 to 11 minutes ahead.
    Delayed,
    /// Pending, no `run_after`, the only slot taken by a `sleep` task.
    Pending,
    /// Finished and retained.
    Finished,
}

/// Each memory phase runs this many times, alternating, each in a fresh
/// process; the median is shown.
const MEMORY_ROUNDS: usize = 3;

/// Resident bytes per task of each kind of waiting or retained task: the
/// median of [`MEMORY_ROUNDS`] fresh processes each.
struct MemoryFigures {
    delayed: f64,
    plain_pending: f64,
    finished: f64,
    /// How long creating the delayed tasks took (the slowest round): the
    /// lateness phase's estimate of its own creates.
    delayed_creates: Duration,
}

/// Runs every memory phase in a child process of its own (this binary with
/// the hidden `--memory-phase`), so that memory one phase freed is never
/// reused by the next and hidden from its figure, and so that each starts
/// from the same, nearly empty, process, as the default run's memory figure
/// does.
async fn measure_memory(quick: bool) -> anyhow::Result<MemoryFigures> {
    let binary = std::env::current_exe()?;
    let mut delayed = Vec::new();
    let mut plain_pending = Vec::new();
    let mut finished = Vec::new();
    let mut delayed_creates = Duration::ZERO;
    for _ in 0..MEMORY_ROUNDS {
        for phase in [
            MemoryPhase::Delayed,
            MemoryPhase::Pending,
            MemoryPhase::Finished,
        ] {
            let (per_task, creates) = memory_child(&binary, phase, quick).await?;
            match phase {
                MemoryPhase::Delayed => {
                    delayed.push(per_task);
                    delayed_creates = delayed_creates.max(creates);
                }
                MemoryPhase::Pending => plain_pending.push(per_task),
                MemoryPhase::Finished => finished.push(per_task),
            }
        }
    }
    Ok(MemoryFigures {
        delayed: median(delayed),
        plain_pending: median(plain_pending),
        finished: median(finished),
        delayed_creates,
    })
}

/// Runs one memory phase in a child; its one line of output is the bytes
/// per task and the seconds its creates took.
async fn memory_child(
    binary: &Path,
    phase: MemoryPhase,
    quick: bool,
) -> anyhow::Result<(f64, Duration)> {
    let phase_name = match phase {
        MemoryPhase::Delayed => "delayed",
        MemoryPhase::Pending => "pending",
        MemoryPhase::Finished => "finished",
    };
    let mut command = std::process::Command::new(binary);
    command.args(["--memory-phase", phase_name]);
    if quick {
        command.arg("--quick");
    }
    // Off the runtime's threads: the child runs for seconds.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("starting {}", binary.display()))?;
    let printed = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the {phase_name} memory phase failed ({}): {}{}",
        output.status,
        printed,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut values = printed.split_whitespace().map(str::parse::<f64>);
    match (values.next(), values.next()) {
        (Some(Ok(per_task)), Some(Ok(creates))) => Ok((per_task, Duration::from_secs_f64(creates))),
        _ => anyhow::bail!("the {phase_name} memory phase printed {printed:?}"),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// `--memory-phase`, in a child of [`measure_memory`]: one server holding N
/// tasks of one kind; prints the resident bytes each added and the seconds
/// the creates took.
pub async fn memory_phase(phase: MemoryPhase, scale: Scale) -> anyhow::Result<()> {
    let run = Run::new(scale);
    let tasks = run.tasks;
    let max_concurrent = match phase {
        MemoryPhase::Pending => 1,
        MemoryPhase::Delayed | MemoryPhase::Finished => Config::default().max_concurrent,
    };
    let server = RunningServer::ours(delayed_config(&run, max_concurrent)).await?;
    let manager = manager_of(&server)?;
    if phase == MemoryPhase::Pending {
        manager.create_task(long_sleep()).await?;
        wait_for(manager, Duration::from_secs(10), |stats| stats.running == 1).await?;
    }
    let before = resident_bytes("self")?;
    let started = Instant::now();
    match phase {
        // Spread over a minute, so the timer wheel holds them in many slots.
        MemoryPhase::Delayed => {
            let base = SystemTime::now() + MEMORY_DELAY;
            create_all(manager, tasks, move |index| {
                delayed_echo(base + Duration::from_secs(60).mul_f64(index as f64 / tasks as f64))
            })
            .await?
        }
        MemoryPhase::Pending | MemoryPhase::Finished => {
            create_all(manager, tasks, |_| echo_task("bench task")).await?
        }
    }
    let creates = started.elapsed();
    let stats = manager.stats().await?;
    match phase {
        MemoryPhase::Delayed => anyhow::ensure!(
            stats.pending == tasks && stats.running == 0,
            "the delayed tasks did not all wait: {stats:?}"
        ),
        MemoryPhase::Pending => anyhow::ensure!(
            stats.pending == tasks && stats.running == 1,
            "the plain tasks did not all wait: {stats:?}"
        ),
        MemoryPhase::Finished => {
            wait_for(manager, Duration::from_secs(60), |stats| {
                stats.finished >= tasks
            })
            .await?
        }
    }
    let per_task = per_task(before, resident_bytes("self")?, tasks);
    println!("{per_task:.1} {:.3}", creates.as_secs_f64());
    server.stop().await;
    Ok(())
}

fn print_memory(run: &Run, memory: &MemoryFigures) {
    let tasks = run.tasks;
    println!(
        "## Memory of waiting tasks ({tasks} tasks of each, no data; median of {MEMORY_ROUNDS} \
         fresh processes each)\n"
    );
    println!("| resident bytes per task | measured | target |");
    println!("|---|---:|---|");
    println!(
        "| delayed: `run_after` 10 to 11 min ahead, pending | {:.0} B | — |",
        memory.delayed
    );
    println!(
        "| baseline: plain pending, no `run_after`, no free slot | {:.0} B | — |",
        memory.plain_pending
    );
    println!(
        "| baseline: retained finished (as the default run's memory figure) | {:.0} B | ≤ 1024 B |",
        memory.finished
    );
    println!(
        "| delayed − plain pending: what the delay costs | {:.0} B | — |",
        memory.delayed - memory.plain_pending
    );
    println!(
        "\n(creating the {tasks} delayed tasks took {:.2} s)",
        memory.delayed_creates.as_secs_f64()
    );
    if tasks < 100_000 {
        println!(
            "(with this few tasks the allocator's granularity dominates: a smoke run, not a figure)"
        );
    }
    println!();
}

/// Start delays, in milliseconds, of the delayed tasks and of the plain
/// ones.
struct LatenessFigures {
    /// `started_at − run_after` of each delayed task; negative if it
    /// started before its time.
    delayed: Vec<f64>,
    /// `started_at − created_at` of each plain task.
    plain: Vec<f64>,
    /// From the last create to the first task's `run_after`.
    margin: Duration,
    /// From the first task's `run_after` to the last task's start.
    delayed_span: Duration,
}

/// One server with the defaults' `max_concurrent`: N delayed tasks due
/// evenly over the window, then plain tasks created at the same rate.
async fn measure_lateness(run: &Run, estimate: Duration) -> anyhow::Result<LatenessFigures> {
    let tasks = run.tasks;
    let server = RunningServer::ours(delayed_config(run, Config::default().max_concurrent)).await?;
    let manager = manager_of(&server)?;

    // Due after the creates are expected to end (twice the memory phase's
    // time, to be safe) and the lead.
    let first_due = SystemTime::now() + estimate * 2 + run.lead;
    let window = run.window;
    create_all(manager, tasks, move |index| {
        delayed_echo(first_due + window.mul_f64(index as f64 / tasks as f64))
    })
    .await?;
    let margin = first_due
        .duration_since(SystemTime::now())
        .map_err(|_| anyhow::anyhow!("tasks were due before all were created"))?;
    let limit = margin + window + Duration::from_secs(60);
    wait_for(manager, limit, |stats| stats.finished >= tasks).await?;
    let delayed_tasks = all_tasks(manager).await?;
    let delayed: Vec<f64> = delayed_tasks
        .iter()
        .filter_map(|task| signed_millis(task.started_at?, task.scheduling.run_after?))
        .collect();
    anyhow::ensure!(
        delayed.len() == tasks,
        "{} of {tasks} delayed tasks have a start",
        delayed.len()
    );
    let last_start = delayed_tasks
        .iter()
        .filter_map(|task| task.started_at)
        .max()
        .unwrap_or(first_due);
    let delayed_span = last_start.duration_since(first_due).unwrap_or_default();

    // Plain tasks at the same rate: each due when created.
    let plain_tasks = run.plain_tasks;
    let interval = Duration::from_secs_f64(1.0 / run.due_per_second());
    let started = tokio::time::Instant::now();
    for index in 0..plain_tasks {
        tokio::time::sleep_until(started + interval * index as u32).await;
        manager.create_task(echo_task("bench task")).await?;
    }
    wait_for(manager, Duration::from_secs(60), |stats| {
        stats.finished >= tasks + plain_tasks
    })
    .await?;
    let plain: Vec<f64> = all_tasks(manager)
        .await?
        .iter()
        .filter(|task| task.scheduling.run_after.is_none())
        .filter_map(|task| signed_millis(task.started_at?, task.created_at))
        .collect();
    anyhow::ensure!(
        plain.len() == plain_tasks,
        "{} of {plain_tasks} plain tasks have a start",
        plain.len()
    );
    server.stop().await;
    Ok(LatenessFigures {
        delayed,
        plain,
        margin,
        delayed_span,
    })
}

fn print_lateness(run: &Run, lateness: &LatenessFigures) {
    println!(
        "## How late due tasks start (max_concurrent {}, echo)\n",
        Config::default().max_concurrent
    );
    println!(
        "{} delayed tasks due evenly over {:?} ({:.0}/s), the first {:.1} s after the last create; \
         they ran from the first one's time to the last start in {:.2} s.",
        run.tasks,
        run.window,
        run.due_per_second(),
        lateness.margin.as_secs_f64(),
        lateness.delayed_span.as_secs_f64()
    );
    println!(
        "Then {} plain tasks (no `run_after`) created at the same rate, each due when created.\n",
        run.plain_tasks
    );
    println!(
        "| start delay | tasks | p50 | p99 | max | > {} ms late | started before their time |",
        LATE.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    print_delays("delayed: `started_at − run_after`", &lateness.delayed);
    print_delays(
        "baseline, plain: `started_at − created_at`",
        &lateness.plain,
    );
    println!(
        "\nTarget: a due task starts within {} ms of its time when a slot is free, never before it.\n",
        LATE.as_millis()
    );
}

fn print_delays(label: &str, delays: &[f64]) {
    let mut sorted = delays.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let late_limit = LATE.as_secs_f64() * 1000.0;
    let late = sorted.iter().filter(|delay| **delay > late_limit).count();
    let early = sorted.iter().filter(|delay| **delay < 0.0).count();
    let share = |count: usize| 100.0 * count as f64 / sorted.len().max(1) as f64;
    println!(
        "| {label} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {late} ({:.2} %) | {early} ({:.2} %) |",
        sorted.len(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0),
        share(late),
        share(early),
    );
}

/// The value below which `fraction` of `sorted` lies (as
/// `load::percentile`, for signed values).
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1);
    sorted[index]
}

/// `later − earlier` in milliseconds, negative when `later` is earlier.
fn signed_millis(later: SystemTime, earlier: SystemTime) -> Option<f64> {
    Some(match later.duration_since(earlier) {
        Ok(ahead) => ahead.as_secs_f64() * 1000.0,
        Err(behind) => -behind.duration().as_secs_f64() * 1000.0,
    })
}

fn manager_of(server: &RunningServer) -> anyhow::Result<&ManagerHandle> {
    server
        .manager
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("our server has a manager"))
}

fn per_task(before: u64, after: u64, tasks: usize) -> f64 {
    after.saturating_sub(before) as f64 / tasks as f64
}

/// An `echo` task (the same as a plain one) that does not start before
/// `run_after`.
fn delayed_echo(run_after: SystemTime) -> NewTask {
    let mut task = echo_task("bench task");
    task.scheduling.run_after = Some(run_after);
    task
}

/// A `sleep` task that holds its slot for longer than any phase.
fn long_sleep() -> NewTask {
    NewTask {
        kind: "sleep".into(),
        data: Some(Arc::new(json!({"seconds": 3600}))),
        timeout_seconds: 0,
        ..echo_task("slot holder")
    }
}

/// Creates `tasks` tasks, `new_task(index)` each, from [`CREATORS`]
/// callers; fails on the first refusal.
async fn create_all<F>(manager: &ManagerHandle, tasks: usize, new_task: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> NewTask + Clone + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = Vec::with_capacity(CREATORS);
    for _ in 0..CREATORS {
        let manager = manager.clone();
        let next = Arc::clone(&next);
        let new_task = new_task.clone();
        creators.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= tasks {
                    return anyhow::Ok(());
                }
                manager.create_task(new_task(index)).await?;
            }
        }));
    }
    for creator in creators {
        creator.await??;
    }
    Ok(())
}

/// Polls the manager's counters until `done`, or fails after `limit`.
async fn wait_for(
    manager: &ManagerHandle,
    limit: Duration,
    done: impl Fn(&ManagerStats) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let stats = manager.stats().await?;
        if done(&stats) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still not done after {limit:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every task the manager holds, page by page.
async fn all_tasks(manager: &ManagerHandle) -> anyhow::Result<Vec<Arc<Task>>> {
    let mut tasks = Vec::new();
    let mut after = None;
    loop {
        let page = manager
            .list_tasks(ListQuery {
                after,
                limit: 1000,
                ..ListQuery::default()
            })
            .await?;
        tasks.extend(page.tasks);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(tasks),
        }
    }
}
