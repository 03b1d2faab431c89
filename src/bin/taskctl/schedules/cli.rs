//! The command line of `taskctl schedule`: its subcommands and the flags
//! of a schedule. The task each firing creates is given with `create`'s
//! own flags ([`TaskArgs`]), and `schedule list` pages with `list`'s
//! ([`PageArgs`]), so the two commands cannot drift apart.
//!
//! Cron expressions and time zones are not checked here: the server is
//! the one judge of them, and its refusal names the flag.

use clap::{Args, Subcommand, ValueEnum};
use task_processor::pb;

use crate::cli::{PageArgs, TaskArgs};

/// Examples shown by `taskctl schedule --help`.
pub const SCHEDULE_EXAMPLES: &str = "\
Examples:
  taskctl schedule create 'nightly report' --cron '0 2 * * *' --tz Europe/Berlin --kind echo
  taskctl schedule list
  taskctl schedule pause 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl list --label schedule-id=0190b4a4-5d3e-7f00-8000-000000000000   # the tasks it created";

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a task created at every time of a cron
    /// expression, or at every interval.
    #[command(after_help = "\
Examples:
  taskctl schedule create 'nightly report' --cron '0 2 * * *' --tz Europe/Berlin --kind echo
  taskctl schedule create heartbeat --cron '@every 30s' --kind echo --data '{\"ping\": true}'
  taskctl schedule create sync --cron '*/15 9-17 * * MON-FRI' --overlap allow --max-attempts 3
  taskctl schedule create digest --cron '0 8 * * MON' --paused -o json | jq -r .id

Each firing creates one task, with the label schedule-id=<the schedule's
id> added: `taskctl list --label schedule-id=<id>` lists them. The task
flags are those of `taskctl create`, but for --run-after, --in,
--request-id and --wait: a schedule's task is due when the schedule
fires, and each firing creates a new task. A cron expression or time zone the server
refuses exits 6, naming the flag.")]
    // Boxed: the template's flags make it far larger than the others.
    Create(Box<CreateScheduleArgs>),

    /// Show one schedule with all its fields, the task it creates
    /// included.
    #[command(after_help = "\
Examples:
  taskctl schedule get 0190b4a4-5d3e-7f00-8000-000000000000
  taskctl schedule get 0190b4a4-5d3e-7f00-8000-000000000000 -o json | jq -r .nextFireAt

Exits 5 when no schedule has the id.")]
    Get(ScheduleIdArgs),

    /// List schedules, oldest first.
    #[command(after_help = "\
Examples:
  taskctl schedule list
  taskctl schedule list --all -o json | jq -r '.schedules[].id'

Without --all one page is shown; when more exist, the token of the next
page is printed to stderr (table) or as nextPageToken (json, yaml).")]
    List(PageArgs),

    /// Pause a schedule: it does not fire until resumed.
    #[command(after_help = "\
Pausing a paused schedule succeeds and changes nothing. A paused schedule
has no next firing time.")]
    Pause(ScheduleIdArgs),

    /// Resume a paused schedule: it next fires at its first time after
    /// now.
    #[command(after_help = "\
The firings that fell while it was paused are not made up. Resuming a
schedule that is not paused succeeds and changes nothing.")]
    Resume(ScheduleIdArgs),

    /// Delete a schedule: it never fires again. The tasks it created stay.
    Delete(ScheduleIdArgs),
}

#[derive(Debug, Args)]
pub struct CreateScheduleArgs {
    /// When it fires: a five-field cron expression (minute hour
    /// day-of-month month day-of-week), e.g. '0 2 * * *' or
    /// '*/15 9-17 * * MON-FRI', or '@every DURATION', e.g. '@every 90s',
    /// '@every 1h30m' (counted from the schedule's creation).
    #[arg(long, value_name = "EXPRESSION")]
    pub cron: String,

    /// The IANA time zone the cron expression is read in, e.g.
    /// Europe/Berlin (names are case-sensitive). Absent: UTC.
    #[arg(long, visible_alias = "tz", value_name = "ZONE")]
    pub time_zone: Option<String>,

    /// What a firing does while the task of the previous firing has not
    /// finished. Absent: skip, the server's default.
    #[arg(long, value_enum, ignore_case = true, value_name = "POLICY")]
    pub overlap: Option<OverlapArg>,

    /// Create it paused: it fires only once resumed.
    #[arg(long)]
    pub paused: bool,

    /// The task each firing creates.
    #[command(flatten, next_help_heading = "Task each firing creates")]
    pub task: TaskArgs,

    #[command(flatten)]
    pub refused: RefusedCreateFlags,
}

/// Flags of `create` that a schedule's task may not have, taken only to
/// be refused with the reason: unknown to clap, they would draw its
/// suggestion of an unrelated flag (`--in`: "a similar argument exists:
/// '--kind'"). Hidden from help and completions.
#[derive(Debug, Args)]
pub struct RefusedCreateFlags {
    #[arg(long, hide = true, value_name = "KEY")]
    pub request_id: Option<String>,

    #[arg(long, hide = true, value_name = "TIME")]
    pub run_after: Option<String>,

    #[arg(id = "in", long = "in", hide = true, value_name = "DURATION")]
    pub in_: Option<String>,

    #[arg(long, hide = true)]
    pub wait: bool,
}

impl RefusedCreateFlags {
    /// The first refused flag given, and why a schedule's task cannot
    /// have it.
    pub fn first_given(&self) -> Option<(&'static str, &'static str)> {
        const NO_START_TIME: &str = "a schedule's task is due when the schedule fires; \
                                     to start later, give another --cron, or create it \
                                     --paused and resume it";
        if self.request_id.is_some() {
            Some((
                "--request-id",
                "each firing creates a new task, so a schedule's task has no idempotency key",
            ))
        } else if self.run_after.is_some() {
            Some(("--run-after", NO_START_TIME))
        } else if self.in_.is_some() {
            Some(("--in", NO_START_TIME))
        } else if self.wait {
            Some((
                "--wait",
                "the tasks are created later, one per firing; follow one with taskctl watch, \
                 after taskctl list --label schedule-id=<the schedule's id>",
            ))
        } else {
            None
        }
    }
}

#[derive(Debug, Args)]
pub struct ScheduleIdArgs {
    /// The schedule's id (a UUID).
    pub id: String,
}

/// An overlap policy; `skip`, `SKIP` and `OVERLAP_POLICY_SKIP` all work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlapArg {
    /// Do not fire (skip this firing, wait for the next).
    #[value(alias = "overlap_policy_skip")]
    Skip,
    /// Fire anyway: tasks of several firings may run at once.
    #[value(alias = "overlap_policy_allow")]
    Allow,
}

impl From<OverlapArg> for pb::OverlapPolicy {
    fn from(overlap: OverlapArg) -> Self {
        match overlap {
            OverlapArg::Skip => Self::Skip,
            OverlapArg::Allow => Self::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn schedule_command(args: &[&str]) -> Result<ScheduleCommand, clap::Error> {
        let mut all = vec!["taskctl", "schedule"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        let Command::Schedule(command) = cli.command else {
            panic!("schedule expected");
        };
        Ok(command)
    }

    #[test]
    fn create_takes_the_schedule_flags_and_the_task_flags_of_create() {
        let command = schedule_command(&[
            "create",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--overlap",
            "OVERLAP_POLICY_ALLOW",
            "--paused",
            "--kind",
            "echo",
            "--label",
            "team=ops",
            "--max-attempts",
            "3",
            "--priority",
            "-5",
        ])
        .expect("parses");
        let ScheduleCommand::Create(create) = command else {
            panic!("create expected");
        };
        assert_eq!(create.cron, "0 2 * * *");
        assert_eq!(create.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(create.overlap, Some(OverlapArg::Allow));
        assert!(create.paused);
        assert_eq!(create.task.name.as_deref(), Some("nightly"));
        assert_eq!(create.task.kind, "echo");
        assert_eq!(create.task.scheduling.max_attempts, Some(3));
        assert_eq!(create.task.scheduling.priority, Some(-5));
    }

    #[test]
    fn what_a_template_may_not_have_is_taken_only_to_be_refused() {
        for flags in [
            &["--request-id", "k"][..],
            &["--run-after", "2026-12-03T18:00:00Z"],
            &["--in", "10m"],
            &["--wait"],
        ] {
            let mut args = vec!["create", "x", "--cron", "@every 1m"];
            args.extend_from_slice(flags);
            let ScheduleCommand::Create(create) = schedule_command(&args).expect("parses") else {
                panic!("create expected");
            };
            let (flag, _reason) = create.refused.first_given().expect("refused");
            assert_eq!(flag, flags[0]);
        }
        let plain = schedule_command(&["create", "x", "--cron", "@every 1m"]).expect("parses");
        let ScheduleCommand::Create(plain) = plain else {
            panic!("create expected");
        };
        assert_eq!(plain.refused.first_given(), None);
        let mut root = crate::cli::command();
        let create = root
            .find_subcommand_mut("schedule")
            .and_then(|schedule| schedule.find_subcommand_mut("create"))
            .expect("schedule create");
        for id in ["request_id", "run_after", "in", "wait"] {
            let argument = create
                .get_arguments()
                .find(|argument| argument.get_id() == id)
                .unwrap_or_else(|| panic!("{id} taken"));
            assert!(argument.is_hide_set(), "{id} hidden from help");
        }
        let error = schedule_command(&["create", "x"]).expect_err("--cron is required");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--cron"), "{error}");
    }

    #[test]
    fn list_pages_like_list() {
        let ScheduleCommand::List(page) =
            schedule_command(&["list", "--limit", "2", "--all"]).expect("parses")
        else {
            panic!("list expected");
        };
        assert_eq!((page.limit, page.all), (Some(2), true));
        let error = schedule_command(&["list", "--all", "--page-token", "t"])
            .expect_err("--all and --page-token conflict");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
