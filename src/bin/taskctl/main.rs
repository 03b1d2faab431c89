//! `taskctl`, the command line of task-processor: parses the command line,
//! runs the command against the server, and turns how it went into the
//! exit code (see `errors::EXIT_CODES`, also printed by `--help`).
//!
//! Everything else lives in the modules: `cli` (flags), `commands` (what
//! each subcommand does), `from_file` (`create --from-file`, many tasks in
//! batches), `schedules` (the `schedule` subcommands, from flags to
//! printing), `workers` (`taskctl workers`, the connected remote
//! workers), `paging` (`--all`), `connection`, `output`,
//! `proto_json` and `yaml` (how answers are printed), `progress` (the live
//! bar), `errors`.

mod cli;
mod commands;
mod connection;
mod errors;
mod from_file;
mod output;
mod paging;
mod progress;
mod proto_json;
mod schedules;
mod watch_all;
mod workers;
mod yaml;

use std::process::ExitCode;

use errors::ExitStatus;

fn main() -> ExitCode {
    // On a usage error clap prints it and exits with 2 here.
    let cli = cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("taskctl: cannot start the async runtime: {error}");
            return ExitStatus::OtherError.into();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(outcome) => outcome.exit_status().into(),
        Err(error) => {
            // Silent when the reader left (`taskctl list | head`).
            error.report();
            error.exit_status().into()
        }
    }
}
