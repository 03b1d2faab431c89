//! `taskctl watch --all`: follows every task that matches a filter over
//! `WatchTasks`, one line per change (or one `WatchTasksResponse` per line
//! with `-o json`), until interrupted. When the server ends the stream
//! with `ABORTED` (taskctl fell behind), it opens it again from the last
//! message's resume token, so nothing is lost or shown twice.

use std::time::SystemTime;

use task_processor::pb;
use tonic::Code;

use crate::{
    cli::{OutputFormat, WatchArgs},
    commands::{Outcome, Session},
    errors::CliError,
    output::{or_dash, shown_percent, state_message, status_name, write_stdout},
    proto_json::WATCH_TASKS_RESPONSE,
};

/// How many times in a row a stream may be resumed after `ABORTED`
/// without a message in between before taskctl gives up: a client that
/// cannot keep up with even one message would otherwise loop forever.
const MAX_RESUMES_WITHOUT_PROGRESS: u32 = 5;

impl Session {
    pub async fn watch_all(&self, args: WatchArgs) -> Result<Outcome, CliError> {
        let mut client = self.tasks().await?;
        let mut request = pb::WatchTasksRequest {
            statuses: args
                .statuses
                .into_iter()
                .map(|status| pb::TaskStatus::from(status).into())
                .collect(),
            labels: args.labels.into_iter().collect(),
            kinds: args.kinds,
            send_initial: args.initial,
            resume_token: String::new(),
        };
        if self.printer.format == OutputFormat::Table {
            write_stdout(&(header() + "\n"))?;
        }
        let mut resumes_without_progress = 0;
        loop {
            // Only opening the stream is bounded; it lasts until interrupted.
            let mut stream = self
                .unary(client.watch_tasks(request.clone()), CliError::from_status)
                .await?;
            let ended = loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        resumes_without_progress = 0;
                        request.resume_token.clone_from(&message.resume_token);
                        self.show(&message)?;
                    }
                    Ok(None) => {
                        return Err(CliError::Protocol(
                            "the server ended the watch stream".into(),
                        ));
                    }
                    Err(status) => break status,
                };
            };
            if ended.code() != Code::Aborted
                || request.resume_token.is_empty()
                || resumes_without_progress == MAX_RESUMES_WITHOUT_PROGRESS
            {
                return Err(CliError::from_status(ended));
            }
            resumes_without_progress += 1;
            eprintln!("fell behind the server's changes; resuming after the last one shown");
        }
    }

    /// One message: a line of the table (bookmarks and the end of the
    /// initial list show nothing), or the message as one JSON line or a
    /// YAML document.
    fn show(&self, message: &pb::WatchTasksResponse) -> Result<(), CliError> {
        match (&self.printer.format, &message.task) {
            (OutputFormat::Table, Some(task)) => {
                write_stdout(&(change_line(task, SystemTime::now()) + "\n"))
            }
            (OutputFormat::Table, None) => Ok(()),
            _ => self
                .printer
                .print_stream_message(message, WATCH_TASKS_RESPONSE),
        }
    }
}

/// The columns of the table.
fn header() -> String {
    row(["TIME", "ID", "KIND", "STATUS", "PROGRESS"].map(str::to_owned))
}

/// One change: when it was seen, the task, and its state.
fn change_line(task: &pb::Task, now: SystemTime) -> String {
    let time = humantime::format_rfc3339_seconds(now).to_string();
    let progress = format!("{:>3}%  {}", shown_percent(task), state_message(task, now));
    row([
        time,
        task.id.clone(),
        or_dash(&task.kind),
        status_name(task.status),
        progress.trim_end().to_owned(),
    ])
}

/// Fixed widths, so lines written one at a time still line up.
fn row(cells: [String; 5]) -> String {
    let [time, id, kind, status, progress] = cells;
    format!("{time:<20}  {id:<36}  {kind:<12}  {status:<9}  {progress}")
        .trim_end()
        .to_owned()
}
