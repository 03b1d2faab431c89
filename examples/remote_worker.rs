//! A worker in its own process: runs tasks of kinds `thumbnail` and
//! `resize` for a server started with `--worker-kinds thumbnail,resize`,
//! through [`task_processor::worker`].
//!
//! Both kinds pretend to work on an image in ten steps, reporting progress
//! after each and stopping as soon as the run is cancelled (a client's
//! cancel, the task's timeout, the server shutting down). Ctrl+C or SIGTERM
//! drains the worker: it takes no new task, lets running ones finish within
//! `--shutdown-grace`, and exits 0.
//!
//! Run it:
//!
//! ```text
//! cargo run -- --worker-kinds thumbnail,resize          # the server
//! cargo run --example remote_worker -- --name thumbs-1  # the worker
//! ```
//!
//! and from another terminal:
//!
//! ```text
//! grpcurl -plaintext -d '{"name": "cat", "kind": "thumbnail",
//!     "data": {"image": "cat.png", "width": 128, "step_ms": 300}}' \
//!   127.0.0.1:50051 taskprocessor.v1.TaskService/CreateTask
//! ```
//!
//! The task completes with `{"image": "cat.png", "width": 128, "height": 128,
//! "kind": "thumbnail"}`; its `node` is `<server node>/thumbs-1`. With
//! authentication on the server, give `--token` (a principal with the role
//! `work`) and, for TLS, `--server https://host:port --ca ca.pem`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value as JsonValue, json};
use task_processor::worker::{Job, JobError, Worker};
use tracing::info;

/// How many steps a run takes, each followed by a progress report.
const STEPS: u32 = 10;

/// The longest pause per step a task may ask for, so a typo cannot hold a
/// slot for hours.
const MAX_STEP: Duration = Duration::from_secs(10);

/// A worker for the kinds `thumbnail` and `resize`.
#[derive(Debug, Parser)]
struct Args {
    /// The server: host:port, http://host:port or https://host:port.
    #[arg(long, default_value = "127.0.0.1:50051", env = "TASK_PROCESSOR_SERVER")]
    server: String,
    /// The worker's name, shown in the tasks' `node`.
    #[arg(long, default_value = "remote-worker")]
    name: String,
    /// How many tasks run at once.
    #[arg(long, default_value_t = 4)]
    max_concurrent: u32,
    /// A bearer token with the role `work`.
    #[arg(long, env = "TASK_PROCESSOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA (PEM) that signed the server's certificate; implies TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// How long running tasks may take to finish after Ctrl+C or SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut builder = Worker::builder(&args.server)
        .name(&args.name)
        .max_concurrent(args.max_concurrent)
        .shutdown_grace(args.shutdown_grace)
        .handle("thumbnail", thumbnail)
        .handle("resize", resize);
    if let Some(token) = args.token {
        builder = builder.token(token);
    }
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
        builder = builder.tls_ca_pem(pem);
    }
    let worker = builder.build()?;
    info!(server = %args.server, name = %args.name, "worker starting");
    worker.run_until(stop_signal()).await?;
    Ok(())
}

/// A square thumbnail of `data.width` pixels (default 128).
async fn thumbnail(job: Job) -> Result<JsonValue, JobError> {
    let image = image_name(job.data())?;
    let side = dimension(job.data(), "width")?.unwrap_or(128);
    process(&job, "thumbnail").await?;
    Ok(json!({ "image": image, "width": side, "height": side, "kind": "thumbnail" }))
}

/// `data.width` × `data.height`, both required.
async fn resize(job: Job) -> Result<JsonValue, JobError> {
    let image = image_name(job.data())?;
    let width = dimension(job.data(), "width")?
        .ok_or_else(|| JobError::permanent("data.width is required"))?;
    let height = dimension(job.data(), "height")?
        .ok_or_else(|| JobError::permanent("data.height is required"))?;
    process(&job, "resize").await?;
    Ok(json!({ "image": image, "width": width, "height": height, "kind": "resize" }))
}

/// The pretend work: `STEPS` pauses of `data.step_ms` (default 200 ms),
/// each reported, stopping at the first sign of cancellation.
async fn process(job: &Job, verb: &str) -> Result<(), JobError> {
    let step = match job.data().get("step_ms") {
        None => Duration::from_millis(200),
        Some(step_ms) => step_ms
            .as_u64()
            .map(Duration::from_millis)
            .filter(|step| *step <= MAX_STEP)
            .ok_or_else(|| {
                JobError::permanent(format!(
                    "data.step_ms must be a whole number of milliseconds up to {}",
                    MAX_STEP.as_millis()
                ))
            })?,
    };
    for done in 1..=STEPS {
        tokio::select! {
            () = job.cancelled() => {
                // The outcome of a cancelled run is discarded; the message
                // is for this worker's own log.
                let reason = job.cancellation().map(|c| c.reason.clone()).unwrap_or_default();
                return Err(JobError::retryable(format!("stopped: {reason}")));
            }
            () = tokio::time::sleep(step) => {}
        }
        job.progress(
            done * 100 / STEPS,
            format!("{verb}: step {done} of {STEPS}"),
        )
        .await;
    }
    Ok(())
}

/// `data.image`, a required string.
fn image_name(data: &JsonValue) -> Result<String, JobError> {
    data.get("image")
        .and_then(JsonValue::as_str)
        .map(str::to_owned)
        .ok_or_else(|| JobError::permanent("data.image must be a string"))
}

/// `data.<field>`, optional, 1 to 10000 pixels. Bad input is permanent: no
/// retry can fix it.
fn dimension(data: &JsonValue, field: &str) -> Result<Option<u64>, JobError> {
    match data.get(field) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|pixels| (1..=10_000).contains(pixels))
            .map(Some)
            .ok_or_else(|| JobError::permanent(format!("data.{field} must be 1 to 10000"))),
    }
}

/// Resolves on Ctrl+C or, on Unix, SIGTERM (what `kill` and orchestrators
/// send).
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // No SIGTERM handler: Ctrl+C still works.
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    info!("stopping: finishing running tasks");
}
