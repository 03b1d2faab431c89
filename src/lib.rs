//! task-processor: a gRPC service that runs tasks with bounded workers,
//! timeouts and cancellation, and streams their states to watchers.
//!
//! Layers, from the wire down: `server` (and its HTTP `gateway`) → `api` →
//! `manager` → `processor` → `task`. Nothing below `api` knows about protobuf or tonic.

pub mod admin;
pub mod api;
pub mod auth;
pub mod codec;
pub mod config;
pub mod errors;
pub mod gateway;
pub mod manager;
pub mod metrics;
pub mod pb;
pub mod processor;
pub mod schedule;
pub mod server;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod worker;
