//! The code generated from `proto/`, quarantined here; only `api` and
//! `server` use it.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("taskprocessor.v1");

/// The encoded descriptor set of our protos, imports included, served by
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("task_service_descriptor");
