//! A schedule as a database row, the same for SQLite and PostgreSQL.
//!
//! `cron` and `time_zone` are kept as the text the client gave and parsed
//! again when read, so a row whose text no longer parses (a newer binary's
//! syntax, a zone the compiled-in database dropped) is an error naming the
//! schedule, never a silent change of its calendar. The template is JSON
//! text, not columns: it is written once and read whole, and `data` comes
//! back exactly as sent (`\u0000` included), as a task's does.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value as JsonValue;
use uuid::Uuid;

use super::{
    StoreError,
    row::{duration_micros, from_micros, micros},
};
use crate::{
    schedule::{Overlap, Schedule, ScheduleId, ScheduleSpec, TimeZone},
    task::{NewTask, RetryPolicy, Scheduling, TaskId},
};

/// The columns of `schedules`, as a literal for `concat!` (sqlx takes only
/// static SQL text).
macro_rules! schedule_columns {
    () => {
        "id, cron, time_zone, template, paused, overlap, next_fire_at, last_fire_at, \
         last_task_id, created_at, revision, tenant"
    };
}
pub(super) use schedule_columns;

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub(super) struct ScheduleRow {
    pub id: Uuid,
    pub cron: String,
    pub time_zone: String,
    /// The template as JSON text ([`TemplateJson`]).
    pub template: String,
    pub paused: bool,
    /// `skip` or `allow`.
    pub overlap: String,
    pub next_fire_at: Option<i64>,
    pub last_fire_at: Option<i64>,
    pub last_task_id: Option<Uuid>,
    pub created_at: i64,
    pub revision: i64,
    /// The schedule's tenant ('' for none): a column, not in the template,
    /// so lists filter by it in the query. Its firings' tasks get it.
    pub tenant: String,
}

/// The task a firing creates, as the `template` column holds it. Times and
/// durations are microseconds, as in the task columns.
#[derive(Serialize, Deserialize)]
struct TemplateJson<'a> {
    name: Cow<'a, str>,
    description: Cow<'a, str>,
    kind: Cow<'a, str>,
    /// Absent when the template has no data; JSON `null` when its data is
    /// `null`: the two stay apart, as in a task.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    data: Option<Cow<'a, JsonValue>>,
    timeout_seconds: u32,
    labels: Cow<'a, BTreeMap<String, String>>,
    /// Always absent from a valid schedule's template; kept so the row reads
    /// back whatever was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<Cow<'a, str>>,
    scheduling: SchedulingJson,
}

#[derive(Serialize, Deserialize)]
struct SchedulingJson {
    priority: i32,
    run_after_us: Option<i64>,
    queue_timeout_seconds: u32,
    max_attempts: u32,
    initial_backoff_us: i64,
    max_backoff_us: i64,
    backoff_multiplier: f64,
}

/// A field that is there, even as `null`, is `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl ScheduleRow {
    pub fn from_schedule(schedule: &Schedule) -> Self {
        Self {
            id: *schedule.id.as_uuid(),
            cron: schedule.spec.as_str().to_owned(),
            time_zone: schedule.time_zone.name().to_owned(),
            template: template_json(&schedule.template),
            paused: schedule.paused,
            overlap: overlap_name(schedule.overlap).to_owned(),
            next_fire_at: schedule.next_fire_at.map(micros),
            last_fire_at: schedule.last_fire_at.map(micros),
            last_task_id: schedule.last_task_id.map(|id| *id.as_uuid()),
            created_at: micros(schedule.created_at),
            revision: i64::try_from(schedule.revision).unwrap_or(i64::MAX),
            tenant: schedule.template.tenant.clone(),
        }
    }

    /// The schedule, its `cron` and `time_zone` parsed again; a row that
    /// does not read back is [`StoreError::CorruptSchedule`] naming it.
    pub fn into_schedule(self) -> Result<Schedule, StoreError> {
        let id = ScheduleId::from_uuid(self.id);
        let corrupt = |reason: String| StoreError::CorruptSchedule { id, reason };
        let spec = ScheduleSpec::parse(&self.cron)
            .map_err(|error| corrupt(format!("its cron no longer parses: {error}")))?;
        let time_zone: TimeZone = self
            .time_zone
            .parse()
            .map_err(|error| corrupt(format!("its time_zone no longer parses: {error}")))?;
        let template: TemplateJson<'_> = serde_json::from_str(&self.template)
            .map_err(|error| corrupt(format!("its template is not a task: {error}")))?;
        let duration = |field: &str, value: i64| {
            u64::try_from(value)
                .map(Duration::from_micros)
                .map_err(|_| corrupt(format!("its template's {field} {value} is negative")))
        };
        let policy = &template.scheduling;
        let scheduling = Scheduling {
            retry_policy: RetryPolicy {
                max_attempts: policy.max_attempts,
                initial_backoff: duration("initial_backoff_us", policy.initial_backoff_us)?,
                max_backoff: duration("max_backoff_us", policy.max_backoff_us)?,
                backoff_multiplier: policy.backoff_multiplier,
            },
            run_after: policy.run_after_us.map(from_micros),
            priority: policy.priority,
            queue_timeout_seconds: policy.queue_timeout_seconds,
        };
        let overlap = match self.overlap.as_str() {
            "skip" => Overlap::Skip,
            "allow" => Overlap::Allow,
            other => return Err(corrupt(format!("unknown overlap {other:?}"))),
        };
        let revision = u64::try_from(self.revision)
            .map_err(|_| corrupt(format!("revision {} is negative", self.revision)))?;
        Ok(Schedule {
            id,
            spec,
            time_zone,
            template: NewTask {
                name: template.name.into_owned(),
                description: template.description.into_owned(),
                kind: template.kind.into_owned(),
                data: template.data.map(|data| Arc::new(data.into_owned())),
                timeout_seconds: template.timeout_seconds,
                labels: template.labels.into_owned(),
                request_id: template.request_id.map(Cow::into_owned),
                scheduling,
                trace_context: Default::default(),
                tenant: self.tenant,
            },
            paused: self.paused,
            overlap,
            next_fire_at: self.next_fire_at.map(from_micros),
            last_fire_at: self.last_fire_at.map(from_micros),
            last_task_id: self.last_task_id.map(TaskId::from_uuid),
            created_at: from_micros(self.created_at),
            revision,
        })
    }
}

/// The `template` column of a task template.
fn template_json(template: &NewTask) -> String {
    let policy = &template.scheduling.retry_policy;
    let json = TemplateJson {
        name: Cow::Borrowed(&template.name),
        description: Cow::Borrowed(&template.description),
        kind: Cow::Borrowed(&template.kind),
        data: template.data.as_deref().map(Cow::Borrowed),
        timeout_seconds: template.timeout_seconds,
        labels: Cow::Borrowed(&template.labels),
        request_id: template.request_id.as_deref().map(Cow::Borrowed),
        scheduling: SchedulingJson {
            priority: template.scheduling.priority,
            run_after_us: template.scheduling.run_after.map(micros),
            queue_timeout_seconds: template.scheduling.queue_timeout_seconds,
            max_attempts: policy.max_attempts,
            initial_backoff_us: duration_micros(policy.initial_backoff),
            max_backoff_us: duration_micros(policy.max_backoff),
            backoff_multiplier: policy.backoff_multiplier,
        },
    };
    // serde_json fails only on a map with keys that are not strings or a
    // `Serialize` that errs; these types have neither. Should it ever fail,
    // the empty text is refused when read, naming the schedule.
    serde_json::to_string(&json).unwrap_or_default()
}

pub(super) fn overlap_name(overlap: Overlap) -> &'static str {
    match overlap {
        Overlap::Skip => "skip",
        Overlap::Allow => "allow",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::schedule::NewSchedule;

    /// A schedule with every field set to something other than its default,
    /// its times already to the microsecond.
    pub(crate) fn full_schedule() -> Schedule {
        let created_at = UNIX_EPOCH + Duration::from_micros(1_750_000_000_123_456);
        let template = NewTask {
            tenant: Default::default(),
            name: "nightly \u{0} report".into(),
            description: "with \u{0} inside".into(),
            kind: "echo".into(),
            data: Some(Arc::new(serde_json::json!({
                "text": "a\u{0}b",
                "n": 0.1,
                "big": 12345678901234567890_u64,
                "deep": [[1.5, null, {"x": -0.0}]],
            }))),
            timeout_seconds: 60,
            labels: BTreeMap::from([("team".into(), "billing".into())]),
            request_id: None,
            scheduling: Scheduling {
                retry_policy: RetryPolicy {
                    max_attempts: 4,
                    initial_backoff: Duration::from_millis(1500),
                    max_backoff: Duration::from_secs(90),
                    backoff_multiplier: 1.1,
                },
                run_after: Some(UNIX_EPOCH + Duration::from_micros(1_800_000_000_123_456)),
                priority: -7,
                queue_timeout_seconds: 30,
            },
            trace_context: Default::default(),
        };
        let mut schedule = Schedule::new(
            ScheduleId::generate(),
            NewSchedule {
                spec: ScheduleSpec::parse("*/5 9-17 * * MON-FRI").expect("valid cron"),
                time_zone: "Europe/Berlin".parse().expect("a zone"),
                template,
                overlap: Overlap::Allow,
                paused: false,
            },
            created_at,
        );
        schedule.record_firing(
            created_at + Duration::from_secs(300),
            TaskId::generate(),
            Some(created_at + Duration::from_secs(600)),
        );
        schedule
    }

    #[test]
    fn a_schedule_survives_the_row_round_trip_exactly() {
        let schedule = full_schedule();
        let back = ScheduleRow::from_schedule(&schedule)
            .into_schedule()
            .expect("decodes");
        assert_eq!(back, schedule);

        // The other overlap, paused, never fired, no data, and `@every`.
        let mut other = schedule.clone();
        other.spec = ScheduleSpec::parse("@every 90s").expect("valid");
        other.time_zone = TimeZone::UTC;
        other.overlap = Overlap::Skip;
        other.pause();
        other.last_fire_at = None;
        other.last_task_id = None;
        other.template.data = None;
        other.template.request_id = Some("kept anyway".into());
        let back = ScheduleRow::from_schedule(&other)
            .into_schedule()
            .expect("decodes");
        assert_eq!(back, other);

        // JSON null as data is not the absence of data.
        other.template.data = Some(Arc::new(JsonValue::Null));
        let back = ScheduleRow::from_schedule(&other)
            .into_schedule()
            .expect("decodes");
        assert_eq!(back.template.data, Some(Arc::new(JsonValue::Null)));
    }

    #[test]
    fn a_row_that_no_longer_parses_names_the_schedule() {
        let schedule = full_schedule();
        let broken_rows = [
            ScheduleRow {
                cron: "@yearly".into(),
                ..ScheduleRow::from_schedule(&schedule)
            },
            ScheduleRow {
                time_zone: "Mars/Olympus_Mons".into(),
                ..ScheduleRow::from_schedule(&schedule)
            },
            ScheduleRow {
                template: "{\"name\": 1}".into(),
                ..ScheduleRow::from_schedule(&schedule)
            },
            ScheduleRow {
                overlap: "sometimes".into(),
                ..ScheduleRow::from_schedule(&schedule)
            },
        ];
        for row in broken_rows {
            match row.clone().into_schedule() {
                Err(error @ StoreError::CorruptSchedule { id, .. }) => {
                    assert_eq!(id, schedule.id);
                    assert!(error.to_string().contains(&schedule.id.to_string()));
                }
                other => panic!("{row:?} read back as {other:?}"),
            }
        }
    }
}
