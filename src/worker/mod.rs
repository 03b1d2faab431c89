//! The worker library: runs tasks of the server's worker kinds in this
//! process, over `WorkerService/Work` (issue 12).
//!
//! ```no_run
//! use serde_json::{Value, json};
//! use task_processor::worker::{Job, JobError, Worker};
//!
//! async fn resize(job: Job) -> Result<Value, JobError> {
//!     let width = job.data()["width"]
//!         .as_u64()
//!         .ok_or_else(|| JobError::permanent("data.width must be a number"))?;
//!     job.progress(50, "resizing").await;
//!     Ok(json!({ "width": width }))
//! }
//!
//! # async fn run() -> Result<(), task_processor::worker::WorkerError> {
//! let worker = Worker::builder("127.0.0.1:50051")
//!     .name("resizer-1")
//!     .max_concurrent(4)
//!     .handle("resize", resize)
//!     .build()?;
//! worker.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! `run_until` connects, sends `hello`, runs each assignment's handler in a
//! task of its own (the server sends no more than `max_concurrent` at once),
//! forwards progress, and sends exactly one outcome per assignment, also for
//! a cancelled run. A lost stream is reconnected with exponential back-off
//! and jitter; a refusal (`INVALID_ARGUMENT`, `UNAUTHENTICATED`,
//! `PERMISSION_DENIED`) is returned as [`WorkerError::Refused`]. Once the
//! shutdown future resolves the worker sends `drain`, lets running handlers
//! finish within the shutdown grace, and returns `Ok(())`.
//!
//! This module is a client of the server: it knows the protocol (`pb`) and
//! the JSON conversions of `api::json`, nothing of the manager, the store
//! or the server's side.

mod backoff;
mod builder;
mod error;
mod job;
mod session;
#[cfg(test)]
mod tests;

use std::{future::Future, sync::Arc};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    backoff::Backoff,
    builder::Settings,
    session::{SessionEnd, run_session},
};

pub use self::{
    builder::{
        DEFAULT_CANCEL_GRACE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE,
        DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, DEFAULT_SHUTDOWN_GRACE,
        MAX_CONCURRENT_LIMIT, WorkerBuilder,
    },
    error::WorkerError,
    job::{Cancellation, Handler, HandlerFuture, Job, JobError},
};

/// A configured worker; [`Worker::run_until`] runs it.
pub struct Worker {
    settings: Arc<Settings>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No token: it stays out of logs.
        formatter
            .debug_struct("Worker")
            .field("server", &self.settings.address)
            .field("hello", &self.settings.hello)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the settings of a worker for the server at `endpoint`:
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub fn builder(endpoint: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(endpoint)
    }

    /// Runs tasks until `shutdown` resolves, then drains: sends `drain`,
    /// waits up to the shutdown grace for running handlers, and returns
    /// `Ok(())`. Reconnects whenever the stream is lost; returns an error
    /// only when the server refuses the worker for good.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let stop = CancellationToken::new();
        let signal = async {
            shutdown.await;
            stop.cancel();
        };
        let work = self.run_until_stopped(&stop);
        tokio::pin!(signal, work);
        let mut signalled = false;
        loop {
            // Biased, signal first: the work sees the stop in the same poll
            // in which the signal resolved.
            tokio::select! {
                biased;
                () = &mut signal, if !signalled => signalled = true,
                result = &mut work => return result,
            }
        }
    }

    async fn run_until_stopped(&self, stop: &CancellationToken) -> Result<(), WorkerError> {
        let settings = &self.settings;
        let mut backoff = Backoff::new(settings.reconnect_initial, settings.reconnect_max);
        loop {
            match run_session(settings, stop).await {
                SessionEnd::Stopped => {
                    info!("worker stopped");
                    return Ok(());
                }
                SessionEnd::Refused(status) => {
                    return Err(WorkerError::Refused {
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
                SessionEnd::Lost { reason, healthy } => {
                    if healthy {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    warn!(server = %settings.address, %reason, ?delay, "no stream to the server; reconnecting");
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
