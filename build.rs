//! Compiles `proto/` into Rust with `protox` (pure Rust, so no `protoc` is
//! needed) and writes the descriptor set, imports included, for reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/taskprocessor/v1/task_service.proto",
    "proto/taskprocessor/v1/worker_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `compile_fds` prints no rerun-if-changed lines, so we do.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // sqlx::migrate! embeds the migrations at compile time.
    println!("cargo:rerun-if-changed=migrations");

    let file_descriptor_set = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("task_service_descriptor.bin"),
        file_descriptor_set.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec, but a request nested too deep is INVALID_ARGUMENT.
        .codec_path("crate::codec::TaskCodec")
        .compile_fds(file_descriptor_set)?;
    Ok(())
}
