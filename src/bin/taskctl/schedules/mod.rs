//! `taskctl schedule create|get|list|pause|resume|delete`: schedules,
//! tasks created again and again on a calendar.
//!
//! `cli` declares the subcommands, this module runs them through the
//! `Session` of `commands` (connection, deadlines, the output format), and
//! `output` prints schedules. A schedule's task is built from the flags of
//! `create` by the same function as `create`'s own request.

mod cli;
mod output;

use task_processor::pb;
use tonic::Status;

use self::cli::CreateScheduleArgs;
pub use self::cli::{SCHEDULE_EXAMPLES, ScheduleCommand};
use crate::{
    cli::PageArgs,
    commands::{Outcome, Session, task_request},
    errors::CliError,
    paging,
};

/// Runs one `taskctl schedule …` command.
pub async fn run(session: &Session, command: ScheduleCommand) -> Result<Outcome, CliError> {
    match command {
        ScheduleCommand::Create(args) => create(session, &args).await,
        ScheduleCommand::Get(args) => get(session, &args.id).await,
        ScheduleCommand::List(args) => list(session, &args).await,
        ScheduleCommand::Pause(args) => pause(session, &args.id).await,
        ScheduleCommand::Resume(args) => resume(session, &args.id).await,
        ScheduleCommand::Delete(args) => delete(session, &args.id).await,
    }
}

async fn create(session: &Session, args: &CreateScheduleArgs) -> Result<Outcome, CliError> {
    // Built (and --data read) before connecting, so a local mistake needs
    // no server to be reported.
    let request = session.request(create_request(args)?);
    let mut client = session.tasks().await?;
    let schedule = session
        .unary(client.create_schedule(request), |status| {
            CliError::from_schedule_status(status, None)
        })
        .await?;
    output::print_schedule(&session.printer, &schedule)?;
    Ok(Outcome::Success)
}

async fn get(session: &Session, schedule_id: &str) -> Result<Outcome, CliError> {
    let mut client = session.tasks().await?;
    let request = session.request(pb::GetScheduleRequest {
        id: schedule_id.to_owned(),
    });
    let schedule = session
        .unary(client.get_schedule(request), about(schedule_id))
        .await?;
    output::print_schedule(&session.printer, &schedule)?;
    Ok(Outcome::Success)
}

async fn list(session: &Session, page: &PageArgs) -> Result<Outcome, CliError> {
    let client = session.tasks().await?;
    let page_size = page.limit.unwrap_or(0);
    let first_token = page.page_token.clone().unwrap_or_default();
    let response = paging::fetch(first_token, page.pages(), |page_token| {
        let mut client = client.clone();
        let request = session.request(pb::ListSchedulesRequest {
            page_size,
            page_token,
        });
        async move {
            session
                .unary(client.list_schedules(request), |status| {
                    CliError::from_schedule_status(status, None)
                })
                .await
        }
    })
    .await?;
    output::print_schedule_list(&session.printer, &response)?;
    Ok(Outcome::Success)
}

async fn pause(session: &Session, schedule_id: &str) -> Result<Outcome, CliError> {
    let mut client = session.tasks().await?;
    let request = session.request(pb::PauseScheduleRequest {
        id: schedule_id.to_owned(),
    });
    let schedule = session
        .unary(client.pause_schedule(request), about(schedule_id))
        .await?;
    output::print_schedule(&session.printer, &schedule)?;
    Ok(Outcome::Success)
}

async fn resume(session: &Session, schedule_id: &str) -> Result<Outcome, CliError> {
    let mut client = session.tasks().await?;
    let request = session.request(pb::ResumeScheduleRequest {
        id: schedule_id.to_owned(),
    });
    let schedule = session
        .unary(client.resume_schedule(request), about(schedule_id))
        .await?;
    output::print_schedule(&session.printer, &schedule)?;
    Ok(Outcome::Success)
}

async fn delete(session: &Session, schedule_id: &str) -> Result<Outcome, CliError> {
    let mut client = session.tasks().await?;
    let request = session.request(pb::DeleteScheduleRequest {
        id: schedule_id.to_owned(),
    });
    session
        .unary(client.delete_schedule(request), about(schedule_id))
        .await?;
    output::print_deleted(&session.printer, schedule_id)?;
    Ok(Outcome::Success)
}

/// How a refusal of a call about one schedule is told: `NOT_FOUND` names
/// the schedule.
fn about(schedule_id: &str) -> impl FnOnce(Status) -> CliError + '_ {
    move |status| CliError::from_schedule_status(status, Some(schedule_id))
}

/// The `CreateSchedule` request from the command line. Flags left out are
/// not sent (an empty time zone is UTC, an unspecified overlap is skip),
/// so the server's defaults apply, as for `create`.
fn create_request(args: &CreateScheduleArgs) -> Result<pb::CreateScheduleRequest, CliError> {
    if let Some((flag, reason)) = args.refused.first_given() {
        return Err(CliError::Usage(format!(
            "{flag} cannot be used with schedule create: {reason}"
        )));
    }
    Ok(pb::CreateScheduleRequest {
        cron: args.cron.clone(),
        time_zone: args.time_zone.clone().unwrap_or_default(),
        task: Some(task_request(&args.task)?),
        overlap: args
            .overlap
            .map_or(pb::OverlapPolicy::Unspecified, pb::OverlapPolicy::from)
            .into(),
        paused: args.paused,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn request_of(args: &[&str]) -> Result<pb::CreateScheduleRequest, CliError> {
        let mut all = vec!["taskctl", "schedule", "create"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).expect("parses");
        let Command::Schedule(ScheduleCommand::Create(create)) = cli.command else {
            panic!("schedule create expected");
        };
        create_request(&create)
    }

    #[test]
    fn flags_left_out_are_not_sent() {
        let plain = request_of(&["t", "--cron", "@every 1m"]).expect("valid");
        assert_eq!(plain.cron, "@every 1m");
        assert_eq!(plain.time_zone, "");
        assert_eq!(plain.overlap, i32::from(pb::OverlapPolicy::Unspecified));
        assert!(!plain.paused);
        assert_eq!(
            plain.task,
            Some(pb::CreateTaskRequest {
                name: "t".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn the_template_is_what_create_would_send() {
        let request = request_of(&[
            "report",
            "--cron",
            "0 2 * * *",
            "--time-zone",
            "Europe/Berlin",
            "--overlap",
            "skip",
            "--paused",
            "--kind",
            "echo",
            "--description",
            "nightly",
            "--data",
            r#"{"day": 1}"#,
            "--label",
            "team=ops",
            "--timeout",
            "1500ms",
            "--backoff",
            "2s",
            "--priority",
            "7",
            "--queue-timeout",
            "1m",
        ])
        .expect("valid");
        assert_eq!(request.time_zone, "Europe/Berlin");
        assert_eq!(request.overlap, i32::from(pb::OverlapPolicy::Skip));
        assert!(request.paused);
        let template = request.task.expect("a template");
        assert_eq!(
            (template.name.as_str(), template.kind.as_str()),
            ("report", "echo")
        );
        assert_eq!(template.description, "nightly");
        assert_eq!(
            template.data,
            Some(task_processor::api::json::json_to_proto(
                &serde_json::json!({"day": 1})
            ))
        );
        assert_eq!(template.labels.get("team").map(String::as_str), Some("ops"));
        assert_eq!(template.timeout_seconds, 2, "rounded up, as by create");
        assert_eq!(
            template
                .retry_policy
                .and_then(|policy| policy.initial_backoff),
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            })
        );
        assert_eq!((template.priority, template.queue_timeout_seconds), (7, 60));
        assert_eq!(
            (template.request_id.as_str(), template.run_after),
            ("", None)
        );

        let error = request_of(&["t", "--cron", "@every 1m", "--data", "{"]).expect_err("bad JSON");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        let error = request_of(&["t", "--cron", "@every 1m", "--in", "1m"]).expect_err("no --in");
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("--in cannot be used with schedule create: "),
            "{error}"
        );
    }
}
