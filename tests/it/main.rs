//! The integration suite: one binary, each module a part of the contract,
//! all of them against the real server over real TCP on 127.0.0.1.

// A failed expectation is how a test says what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod stores;
mod support;

mod architecture;
mod batch;
mod cluster;
mod cluster_retries;
mod create;
mod delays;
mod disk_full;
mod docs;
mod durability;
mod edge;
mod http;
mod kinds;
mod lifecycle;
mod list;
mod logging;
mod memory_budget;
pub mod operations;
mod outage;
mod process;
mod proxy;
mod reflection;
mod restarts;
mod retries;
mod schedules;
mod schedules_durable;
mod scheduling;
mod security;
mod shutdown;
mod soak;
mod store_postgres;
mod task_bench;
mod taskctl;
mod taskctl_connection;
mod tracing;
mod watch;
mod watch_tasks;
mod watch_tasks_replicas;
mod worker_library;
mod workers;
