//! Memory: resident bytes per retained finished task, and the idle
//! resident size of the real binary.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use task_processor::{
    config::Config, manager::ManagerHandle, metrics::Metrics, processor::Registry,
};

use crate::{Scale, bench_config, echo_task};

/// Resident memory of a process, from /proc.
pub fn resident_bytes(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

pub async fn report(scale: Scale) -> anyhow::Result<()> {
    let tasks = scale.retained_tasks;
    println!("## Memory\n");
    println!("| figure | measured | target |");
    println!("|---|---:|---|");

    let config = Config {
        max_concurrent: 64,
        queue_capacity: tasks * 2,
        max_finished_tasks: tasks * 2,
        ..bench_config()
    }
    .manager_config();
    let manager = ManagerHandle::spawn(
        config,
        Registry::with_builtins(Duration::ZERO),
        Metrics::new(),
    );
    let before = resident_bytes("self")?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let manager = manager.clone();
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let _ = manager.create_task(echo_task("retained task")).await;
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    while manager.stats().await?.finished < tasks {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = resident_bytes("self")?;
    let per_task = after.saturating_sub(before) as f64 / tasks as f64;
    println!(
        "| resident bytes per retained finished task ({tasks} tasks, no data) | {per_task:.0} B | ≤ 1024 B |"
    );
    drop(manager);

    match idle_resident_bytes().await {
        Ok(idle) => println!(
            "| idle resident memory of the release binary | {:.1} MiB | ≤ 20 MiB |",
            idle as f64 / (1024.0 * 1024.0)
        ),
        Err(error) => println!("| idle resident memory | not measured: {error} | ≤ 20 MiB |"),
    }
    println!();
    Ok(())
}

/// Starts `task-processor` from the same target directory, waits until it
/// serves, lets it settle and reads its resident size.
async fn idle_resident_bytes() -> anyhow::Result<u64> {
    let binary = std::env::current_exe()?.with_file_name("task-processor");
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot start {} ({error}); build it with cargo build --release",
                binary.display()
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("\"serving\""));
    std::thread::spawn(move || lines.for_each(drop));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = resident_bytes(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    if !serving {
        anyhow::bail!("the binary did not start serving");
    }
    idle
}
