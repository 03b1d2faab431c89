//! When a schedule fires: the `cron` field parsed into a [`ScheduleSpec`],
//! the `time_zone` field parsed into a [`TimeZone`], and the arithmetic of
//! firings (the next one after a time, the latest one at or before a time).
//!
//! Everything here is a pure function of its arguments: no clock is read,
//! so callers pass `now` and tests use fixed times.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, TimeDelta, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

/// The shortest `@every` interval: a schedule may not create tasks faster
/// than one a second.
pub const MIN_EVERY_INTERVAL: Duration = Duration::from_secs(1);

/// The longest `@every` interval, 366 days: longer ones are better written
/// as a cron expression, and the bound keeps the arithmetic far from
/// overflow.
pub const MAX_EVERY_INTERVAL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The prefix of the interval form of the `cron` field.
const EVERY_PREFIX: &str = "@every";

/// Why a schedule's `cron` or `time_zone` was refused. Each message names
/// the field, what was given and what is wrong, so it can be an
/// `INVALID_ARGUMENT` message as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron is empty: give five fields (minute hour day-of-month month day-of-week) \
         or \"@every <duration>\""
    )]
    EmptyCron,
    #[error(
        "cron {text:?} has {fields} field(s); it needs exactly five: minute hour \
         day-of-month month day-of-week (no seconds, no years)"
    )]
    WrongFieldCount { text: String, fields: usize },
    #[error(
        "cron {text:?} is not supported: the only shortcut is \"@every <duration>\"; \
         otherwise give five fields (minute hour day-of-month month day-of-week)"
    )]
    UnsupportedShortcut { text: String },
    #[error("cron {text:?} is not a valid cron expression: {reason}")]
    InvalidCron { text: String, reason: String },
    #[error("cron {text:?} never fires: no date matches it")]
    NeverFires { text: String },
    #[error(
        "cron {text:?}: the interval after @every is not a duration ({reason}); \
         write it like \"90s\", \"15m\" or \"1h30m\""
    )]
    InvalidEveryInterval { text: String, reason: String },
    #[error("cron {text:?}: the interval after @every must be at least 1s")]
    EveryIntervalTooShort { text: String },
    #[error("cron {text:?}: the interval after @every must be at most 366 days")]
    EveryIntervalTooLong { text: String },
    #[error(
        "time_zone {name:?} is not an IANA time zone name such as \"Europe/Berlin\" or \
         \"UTC\" (names are case-sensitive; empty means UTC)"
    )]
    UnknownTimeZone { name: String },
}

impl ScheduleError {
    /// The contract's name of the field the error concerns: `cron` or
    /// `time_zone`, for the field violation of an `INVALID_ARGUMENT`.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::UnknownTimeZone { .. } => "time_zone",
            ScheduleError::EmptyCron
            | ScheduleError::WrongFieldCount { .. }
            | ScheduleError::UnsupportedShortcut { .. }
            | ScheduleError::InvalidCron { .. }
            | ScheduleError::NeverFires { .. }
            | ScheduleError::InvalidEveryInterval { .. }
            | ScheduleError::EveryIntervalTooShort { .. }
            | ScheduleError::EveryIntervalTooLong { .. } => "cron",
        }
    }
}

/// The zone a cron expression is read in: an IANA name (`Europe/Berlin`),
/// compiled into the binary, so no host needs a zoneinfo directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(chrono_tz::Tz::UTC);

    /// The IANA name, as the contract returns it (`UTC` when none was given).
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        Self::UTC
    }
}

impl FromStr for TimeZone {
    type Err = ScheduleError;

    /// An IANA name, exactly as the database spells it; empty means UTC.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.is_empty() {
            return Ok(Self::UTC);
        }
        name.parse::<chrono_tz::Tz>()
            .map(Self)
            .map_err(|_| ScheduleError::UnknownTimeZone {
                name: name.to_owned(),
            })
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A parsed `cron` field: the text as the client gave it (returned as is)
/// and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleSpec {
    text: String,
    recurrence: Recurrence,
}

/// What a `cron` field means.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Recurrence {
    /// Five fields, evaluated in the schedule's time zone. Boxed: a parsed
    /// pattern is a few hundred bytes, the interval a few.
    Cron(Box<Cron>),
    /// `@every <interval>`: anchor + k × interval for k ≥ 1, in absolute
    /// time (time zones and DST do not move it).
    Every(Duration),
}

impl ScheduleSpec {
    /// Parses the contract's `cron` field: five fields (minute hour
    /// day-of-month month day-of-week, with lists, ranges, steps and
    /// month and day names), or `@every <duration>` in humantime syntax.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::EmptyCron);
        }
        let recurrence = if let Some(interval) = trimmed.strip_prefix(EVERY_PREFIX) {
            Recurrence::Every(parse_every_interval(text, interval)?)
        } else if trimmed.starts_with('@') {
            return Err(ScheduleError::UnsupportedShortcut {
                text: text.to_owned(),
            });
        } else {
            Recurrence::Cron(Box::new(parse_cron(text)?))
        };
        Ok(Self {
            text: text.to_owned(),
            recurrence,
        })
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `@every` interval, or `None` for a cron expression.
    pub fn every_interval(&self) -> Option<Duration> {
        match self.recurrence {
            Recurrence::Every(interval) => Some(interval),
            Recurrence::Cron(_) => None,
        }
    }

    /// The first firing strictly after `after`, or `None` when there is none
    /// (a pattern with no date left before the year 5000, or a time beyond
    /// what the clock can hold).
    ///
    /// A cron expression is read in `zone`'s wall clock, with croner's DST
    /// rules (the Open Cron Pattern Specification, as Vixie cron does):
    /// - a fixed time of day that does not exist (spring forward: 02:30 in
    ///   Berlin on the last Sunday of March) fires at the first instant
    ///   after the gap (03:00 local), once; a wildcard or step hour
    ///   (`*/15 * * * *`) just has no firings in the gap;
    /// - a fixed time of day that happens twice (fall back: 02:30 in Berlin
    ///   on the last Sunday of October) fires once, at its first occurrence
    ///   (02:30 summer time); a wildcard or step hour fires in both passes,
    ///   since each is a real quarter of an hour.
    ///
    /// `@every` ignores `zone`: its firings are `anchor + k × interval` for
    /// k ≥ 1, where `anchor` is the schedule's creation, so they never drift
    /// however late each one is handled.
    pub fn next_fire_after(
        &self,
        after: SystemTime,
        zone: &TimeZone,
        anchor: SystemTime,
    ) -> Option<SystemTime> {
        match &self.recurrence {
            Recurrence::Cron(cron) => {
                let start = to_zoned(after, zone)?;
                let next = cron.find_next_occurrence(&start, false).ok()?;
                to_system_time(&next)
            }
            Recurrence::Every(interval) => {
                let first = anchor.checked_add(*interval)?;
                if after < first {
                    return Some(first);
                }
                let intervals_passed =
                    whole_intervals(after.duration_since(anchor).ok()?, *interval);
                anchor.checked_add(multiply(*interval, intervals_passed.checked_add(1)?)?)
            }
        }
    }

    /// The latest firing at or before `at`, or `None` when there was none
    /// (an `@every` schedule less than one interval after its anchor). The
    /// same rules as [`next_fire_after`](Self::next_fire_after), backwards.
    pub fn latest_fire_at_or_before(
        &self,
        at: SystemTime,
        zone: &TimeZone,
        anchor: SystemTime,
    ) -> Option<SystemTime> {
        match &self.recurrence {
            Recurrence::Cron(cron) => {
                let start = to_zoned(at, zone)?;
                let latest = cron.find_previous_occurrence(&start, true).ok()?;
                to_system_time(&latest)
            }
            Recurrence::Every(interval) => {
                let intervals_passed = whole_intervals(at.duration_since(anchor).ok()?, *interval);
                if intervals_passed == 0 {
                    return None;
                }
                anchor.checked_add(multiply(*interval, intervals_passed)?)
            }
        }
    }
}

impl FromStr for ScheduleSpec {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// `interval_text` is what follows `@every` in `text`.
fn parse_every_interval(text: &str, interval_text: &str) -> Result<Duration, ScheduleError> {
    // `@everyday` is not `@every day`: the prefix must end at a space.
    if !interval_text.starts_with(char::is_whitespace) {
        return Err(ScheduleError::InvalidEveryInterval {
            text: text.to_owned(),
            reason: "expected a space and a duration after @every".to_owned(),
        });
    }
    let interval = humantime::parse_duration(interval_text.trim()).map_err(|error| {
        ScheduleError::InvalidEveryInterval {
            text: text.to_owned(),
            reason: error.to_string(),
        }
    })?;
    if interval < MIN_EVERY_INTERVAL {
        return Err(ScheduleError::EveryIntervalTooShort {
            text: text.to_owned(),
        });
    }
    if interval > MAX_EVERY_INTERVAL {
        return Err(ScheduleError::EveryIntervalTooLong {
            text: text.to_owned(),
        });
    }
    Ok(interval)
}

fn parse_cron(text: &str) -> Result<Cron, ScheduleError> {
    // Counted here, not left to croner, which would take six or seven
    // fields as seconds and years, or answer in its own words.
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(ScheduleError::WrongFieldCount {
            text: text.to_owned(),
            fields,
        });
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser
        .parse(text)
        .map_err(|error| ScheduleError::InvalidCron {
            text: text.to_owned(),
            reason: error.to_string(),
        })?;
    // `0 0 30 2 *` parses but names no real date: refuse it now rather than
    // store a schedule that never fires. The search from 1970 ends at the
    // first match, or gives up at croner's year limit (a few milliseconds:
    // it steps by month and day, not by minute).
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    if cron.find_next_occurrence(&epoch, false).is_err() {
        return Err(ScheduleError::NeverFires {
            text: text.to_owned(),
        });
    }
    Ok(cron)
}

/// How many whole `interval`s fit in `elapsed`. The interval is at least a
/// second (checked at parse), so the division is defined.
fn whole_intervals(elapsed: Duration, interval: Duration) -> u128 {
    elapsed.as_nanos() / interval.as_nanos().max(1)
}

/// `interval × count`, or `None` beyond what a `Duration` holds.
fn multiply(interval: Duration, count: u128) -> Option<Duration> {
    let nanos = interval.as_nanos().checked_mul(count)?;
    let seconds = u64::try_from(nanos / 1_000_000_000).ok()?;
    // The remainder of a division by 10⁹ fits a u32.
    let subsecond_nanos = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(seconds, subsecond_nanos))
}

/// `time` on `zone`'s wall clock; `None` outside chrono's range.
fn to_zoned(time: SystemTime, zone: &TimeZone) -> Option<DateTime<chrono_tz::Tz>> {
    let utc = match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => {
            DateTime::<Utc>::UNIX_EPOCH.checked_add_signed(TimeDelta::from_std(since_epoch).ok()?)
        }
        Err(before_epoch) => DateTime::<Utc>::UNIX_EPOCH
            .checked_sub_signed(TimeDelta::from_std(before_epoch.duration()).ok()?),
    }?;
    Some(utc.with_timezone(&zone.0))
}

fn to_system_time<Zone: chrono::TimeZone>(time: &DateTime<Zone>) -> Option<SystemTime> {
    let seconds = time.timestamp();
    let whole_seconds = Duration::from_secs(seconds.unsigned_abs());
    let at_whole_second = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole_seconds)
    } else {
        UNIX_EPOCH.checked_sub(whole_seconds)
    }?;
    // Subsecond nanoseconds always count forward, also before 1970.
    at_whole_second.checked_add(Duration::from_nanos(u64::from(
        time.timestamp_subsec_nanos(),
    )))
}
