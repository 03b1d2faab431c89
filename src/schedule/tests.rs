//! Parsing, the arithmetic of firings (DST included), the missed-firing
//! rule and the schedule record, all on fixed times.

use std::{collections::BTreeMap, time::Duration};

use super::*;
use crate::task::Scheduling;

/// An RFC 3339 UTC time, such as `2025-03-30T01:00:00Z`.
fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).expect("a valid RFC 3339 time")
}

fn spec(text: &str) -> ScheduleSpec {
    ScheduleSpec::parse(text).expect("a valid cron field")
}

fn zone(name: &str) -> TimeZone {
    name.parse().expect("an IANA zone")
}

/// The first `count` firings strictly after `after`, each found from the
/// one before, as a caller walks them.
fn firings(
    spec: &ScheduleSpec,
    zone: &TimeZone,
    after: SystemTime,
    count: usize,
) -> Vec<SystemTime> {
    let mut found = Vec::new();
    let mut cursor = after;
    for _ in 0..count {
        cursor = spec
            .next_fire_after(cursor, zone, after)
            .expect("a next firing");
        found.push(cursor);
    }
    found
}

fn template() -> NewTask {
    NewTask {
        tenant: Default::default(),
        name: "nightly report".into(),
        description: String::new(),
        kind: "echo".into(),
        data: None,
        timeout_seconds: 60,
        labels: BTreeMap::from([("team".to_owned(), "billing".to_owned())]),
        request_id: None,
        scheduling: Scheduling::default(),
        trace_context: Default::default(),
    }
}

fn hourly_schedule(created_at: SystemTime) -> Schedule {
    let new_schedule = NewSchedule {
        spec: spec("0 * * * *"),
        time_zone: TimeZone::UTC,
        template: template(),
        overlap: Overlap::default(),
        paused: false,
    };
    Schedule::new(ScheduleId::generate(), new_schedule, created_at)
}

// --- Parsing the `cron` field -------------------------------------------

#[test]
fn five_field_expressions_parse_and_keep_their_text() {
    for text in [
        "*/15 9-17 * * MON-FRI",
        "0 0 1 JAN *",
        "5,35 * * * *",
        "0 12 * * sun",
        "  0 0 * * *  ",
    ] {
        let parsed = spec(text);
        assert_eq!(parsed.as_str(), text);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.every_interval(), None);
    }
}

#[test]
fn a_cron_field_needs_exactly_five_fields() {
    for (text, fields) in [("* * * *", 4), ("0 * * * * *", 6), ("0 0 0 * * * 2030", 7)] {
        assert_eq!(
            ScheduleSpec::parse(text),
            Err(ScheduleError::WrongFieldCount {
                text: text.to_owned(),
                fields
            })
        );
    }
}

#[test]
fn an_empty_cron_field_is_refused() {
    for text in ["", "   "] {
        assert_eq!(ScheduleSpec::parse(text), Err(ScheduleError::EmptyCron));
    }
}

#[test]
fn shortcuts_other_than_every_are_refused() {
    for text in ["@daily", "@hourly", "@reboot"] {
        assert_eq!(
            ScheduleSpec::parse(text),
            Err(ScheduleError::UnsupportedShortcut {
                text: text.to_owned()
            })
        );
    }
}

#[test]
fn values_out_of_range_or_unknown_names_are_refused() {
    for text in [
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * FUNDAY",
    ] {
        let error = ScheduleSpec::parse(text).expect_err(text);
        assert!(
            matches!(error, ScheduleError::InvalidCron { .. }),
            "{text}: {error:?}"
        );
    }
}

#[test]
fn an_expression_that_matches_no_date_is_refused() {
    assert_eq!(
        ScheduleSpec::parse("0 0 30 2 *"),
        Err(ScheduleError::NeverFires {
            text: "0 0 30 2 *".to_owned()
        })
    );
    // February 29th exists, if rarely.
    spec("0 0 29 2 *");
}

#[test]
fn every_takes_a_humantime_duration() {
    for (text, seconds) in [
        ("@every 90s", 90),
        ("@every 1h30m", 5400),
        ("@every 1h 30m", 5400),
        ("@every 1s", 1),
        ("@every 366d", 366 * 86_400),
    ] {
        assert_eq!(
            spec(text).every_interval(),
            Some(Duration::from_secs(seconds)),
            "{text}"
        );
    }
}

#[test]
fn every_intervals_outside_one_second_to_366_days_are_refused() {
    for text in ["@every 0s", "@every 999ms"] {
        assert_eq!(
            ScheduleSpec::parse(text),
            Err(ScheduleError::EveryIntervalTooShort {
                text: text.to_owned()
            })
        );
    }
    assert_eq!(
        ScheduleSpec::parse("@every 366d 1s"),
        Err(ScheduleError::EveryIntervalTooLong {
            text: "@every 366d 1s".to_owned()
        })
    );
}

#[test]
fn every_without_a_valid_duration_is_refused() {
    for text in ["@every", "@every ", "@every soon", "@every90s", "@every 5"] {
        let error = ScheduleSpec::parse(text).expect_err(text);
        assert!(
            matches!(error, ScheduleError::InvalidEveryInterval { .. }),
            "{text}: {error:?}"
        );
    }
}

#[test]
fn errors_name_their_field_and_what_was_given() {
    let cron_error = ScheduleSpec::parse("61 * * * *").expect_err("minute 61");
    assert_eq!(cron_error.field(), "cron");
    let message = cron_error.to_string();
    assert!(message.starts_with("cron \"61 * * * *\""), "{message}");

    let zone_error = "Europe/Atlantis"
        .parse::<TimeZone>()
        .expect_err("no such zone");
    assert_eq!(zone_error.field(), "time_zone");
    let message = zone_error.to_string();
    assert!(
        message.starts_with("time_zone \"Europe/Atlantis\""),
        "{message}"
    );

    let count_error = ScheduleSpec::parse("* * *").expect_err("three fields");
    assert!(
        count_error.to_string().contains("has 3 field(s)"),
        "{count_error}"
    );
    assert_eq!(count_error.field(), "cron");
}

// --- Time zones ---------------------------------------------------------

#[test]
fn an_empty_time_zone_is_utc() {
    assert_eq!(zone(""), TimeZone::UTC);
    assert_eq!(TimeZone::default().name(), "UTC");
    assert_eq!(zone("UTC").to_string(), "UTC");
}

#[test]
fn time_zones_are_iana_names_spelled_exactly() {
    assert_eq!(zone("Europe/Berlin").name(), "Europe/Berlin");
    assert_eq!(zone("America/New_York").to_string(), "America/New_York");
    for name in ["europe/berlin", "Europe/Berlin ", "CEST", "Mars/Olympus"] {
        assert_eq!(
            name.parse::<TimeZone>(),
            Err(ScheduleError::UnknownTimeZone {
                name: name.to_owned()
            })
        );
    }
}

// --- Cron firings -------------------------------------------------------

#[test]
fn the_next_cron_firing_is_strictly_after() {
    let hourly = spec("0 * * * *");
    let anchor = at("2025-01-01T00:00:00Z");
    let next = |after| hourly.next_fire_after(at(after), &TimeZone::UTC, anchor);
    assert_eq!(
        next("2025-01-15T09:59:59Z"),
        Some(at("2025-01-15T10:00:00Z"))
    );
    assert_eq!(
        next("2025-01-15T10:00:00Z"),
        Some(at("2025-01-15T11:00:00Z"))
    );
    assert_eq!(
        hourly.next_fire_after(
            at("2025-01-15T09:59:59Z") + Duration::from_millis(500),
            &TimeZone::UTC,
            anchor
        ),
        Some(at("2025-01-15T10:00:00Z"))
    );
    assert_eq!(
        hourly.next_fire_after(
            at("2025-01-15T10:00:00Z") + Duration::from_millis(500),
            &TimeZone::UTC,
            anchor
        ),
        Some(at("2025-01-15T11:00:00Z"))
    );
}

#[test]
fn cron_is_read_on_the_zones_wall_clock() {
    let nine_am = spec("0 9 * * *");
    let after = at("2025-01-15T00:00:00Z");
    let next = |name| nine_am.next_fire_after(after, &zone(name), after);
    assert_eq!(next("UTC"), Some(at("2025-01-15T09:00:00Z")));
    // Winter: Berlin is UTC+1, New York UTC-5.
    assert_eq!(next("Europe/Berlin"), Some(at("2025-01-15T08:00:00Z")));
    assert_eq!(next("America/New_York"), Some(at("2025-01-15T14:00:00Z")));
}

#[test]
fn weekdays_and_months_are_honoured() {
    // 2025-01-15 is a Wednesday; the next Monday is the 20th.
    let after = at("2025-01-15T12:00:00Z");
    assert_eq!(
        spec("0 9 * * MON").next_fire_after(after, &TimeZone::UTC, after),
        Some(at("2025-01-20T09:00:00Z"))
    );
    assert_eq!(
        spec("30 6 1 JUN *").next_fire_after(after, &TimeZone::UTC, after),
        Some(at("2025-06-01T06:30:00Z"))
    );
}

#[test]
fn a_fixed_time_in_the_spring_forward_gap_fires_once_right_after_it() {
    // Berlin, 2025-03-30: 02:00 CET (01:00 UTC) becomes 03:00 CEST, so
    // 02:30 does not exist that day; it fires at 03:00 CEST instead.
    let berlin = zone("Europe/Berlin");
    let half_past_two = spec("30 2 * * *");
    assert_eq!(
        firings(&half_past_two, &berlin, at("2025-03-28T12:00:00Z"), 4),
        [
            at("2025-03-29T01:30:00Z"), // 02:30 CET
            at("2025-03-30T01:00:00Z"), // 03:00 CEST, the first instant after the gap
            at("2025-03-31T00:30:00Z"), // 02:30 CEST
            at("2025-04-01T00:30:00Z"),
        ]
    );
    // New York, 2025-03-09: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    let new_york = zone("America/New_York");
    assert_eq!(
        firings(&half_past_two, &new_york, at("2025-03-08T12:00:00Z"), 2),
        [at("2025-03-09T07:00:00Z"), at("2025-03-10T06:30:00Z")]
    );
}

#[test]
fn wildcard_hours_have_no_firings_in_the_spring_forward_gap() {
    let berlin = zone("Europe/Berlin");
    assert_eq!(
        firings(
            &spec("*/30 * * * *"),
            &berlin,
            at("2025-03-30T00:00:00Z"),
            3
        ),
        [
            at("2025-03-30T00:30:00Z"), // 01:30 CET
            at("2025-03-30T01:00:00Z"), // 03:00 CEST: 02:00 and 02:30 never happened
            at("2025-03-30T01:30:00Z"), // 03:30 CEST
        ]
    );
}

#[test]
fn a_fixed_time_in_the_fall_back_overlap_fires_once_at_its_first_occurrence() {
    // Berlin, 2025-10-26: 03:00 CEST (01:00 UTC) becomes 02:00 CET, so 02:30
    // happens at 00:30 UTC and again at 01:30 UTC; it fires at the first.
    let berlin = zone("Europe/Berlin");
    assert_eq!(
        firings(&spec("30 2 * * *"), &berlin, at("2025-10-25T12:00:00Z"), 3),
        [
            at("2025-10-26T00:30:00Z"), // 02:30 CEST
            at("2025-10-27T01:30:00Z"), // 02:30 CET, the next day
            at("2025-10-28T01:30:00Z"),
        ]
    );
}

#[test]
fn wildcard_hours_fire_in_both_passes_of_the_fall_back_overlap() {
    let berlin = zone("Europe/Berlin");
    assert_eq!(
        firings(
            &spec("*/30 * * * *"),
            &berlin,
            at("2025-10-26T00:00:00Z"),
            5
        ),
        [
            at("2025-10-26T00:30:00Z"), // 02:30 CEST
            at("2025-10-26T01:00:00Z"), // 02:00 CET
            at("2025-10-26T01:30:00Z"), // 02:30 CET
            at("2025-10-26T02:00:00Z"), // 03:00 CET
            at("2025-10-26T02:30:00Z"),
        ]
    );
}

#[test]
fn the_latest_cron_firing_includes_the_time_itself() {
    let hourly = spec("0 * * * *");
    let anchor = at("2025-01-01T00:00:00Z");
    let latest = |time| hourly.latest_fire_at_or_before(at(time), &TimeZone::UTC, anchor);
    assert_eq!(
        latest("2025-01-15T10:00:00Z"),
        Some(at("2025-01-15T10:00:00Z"))
    );
    assert_eq!(
        latest("2025-01-15T10:59:59Z"),
        Some(at("2025-01-15T10:00:00Z"))
    );
}

#[test]
fn the_latest_cron_firing_follows_the_same_dst_rules() {
    let berlin = zone("Europe/Berlin");
    let half_past_two = spec("30 2 * * *");
    let anchor = at("2025-01-01T00:00:00Z");
    let latest = |time| half_past_two.latest_fire_at_or_before(at(time), &berlin, anchor);
    // In the second pass of 02:30 (CET), the firing was the first pass.
    assert_eq!(
        latest("2025-10-26T01:45:00Z"),
        Some(at("2025-10-26T00:30:00Z"))
    );
    // Past the spring-forward gap, the firing was the one moved to 03:00 CEST.
    assert_eq!(
        latest("2025-03-30T01:10:00Z"),
        Some(at("2025-03-30T01:00:00Z"))
    );
    assert_eq!(
        latest("2025-03-30T00:59:00Z"),
        Some(at("2025-03-29T01:30:00Z"))
    );
}

// --- @every firings -----------------------------------------------------

#[test]
fn every_fires_at_the_anchor_plus_whole_intervals() {
    let every_90s = spec("@every 90s");
    let anchor = at("2025-01-01T00:00:00Z");
    let next = |seconds_after_anchor: u64| {
        every_90s.next_fire_after(
            anchor + Duration::from_secs(seconds_after_anchor),
            &TimeZone::UTC,
            anchor,
        )
    };
    let anchor_plus = |seconds: u64| Some(anchor + Duration::from_secs(seconds));
    assert_eq!(next(0), anchor_plus(90));
    assert_eq!(next(89), anchor_plus(90));
    assert_eq!(next(90), anchor_plus(180), "strictly after");
    assert_eq!(next(1000), anchor_plus(1080));
    // Ten years on, still on the grid: firings do not drift.
    let ten_years = 10 * 365 * 86_400;
    assert_eq!(
        next(ten_years),
        anchor_plus(ten_years + 90 - ten_years % 90)
    );
}

#[test]
fn every_before_its_anchor_first_fires_one_interval_after_it() {
    let anchor = at("2025-01-01T00:00:00Z");
    assert_eq!(
        spec("@every 1m").next_fire_after(at("2024-12-31T23:00:00Z"), &TimeZone::UTC, anchor),
        Some(at("2025-01-01T00:01:00Z"))
    );
}

#[test]
fn every_keeps_a_subsecond_anchor_and_ignores_the_zone() {
    let anchor = at("2025-03-30T00:59:00Z") + Duration::from_millis(250);
    let berlin = zone("Europe/Berlin");
    // Across Berlin's spring forward: absolute time, one hour apart.
    assert_eq!(
        firings(&spec("@every 1h"), &berlin, anchor, 2),
        [
            at("2025-03-30T01:59:00Z") + Duration::from_millis(250),
            at("2025-03-30T02:59:00Z") + Duration::from_millis(250),
        ]
    );
}

#[test]
fn the_latest_every_firing_needs_one_whole_interval() {
    let every_90s = spec("@every 90s");
    let anchor = at("2025-01-01T00:00:00Z");
    let latest = |seconds_after_anchor: u64| {
        every_90s.latest_fire_at_or_before(
            anchor + Duration::from_secs(seconds_after_anchor),
            &TimeZone::UTC,
            anchor,
        )
    };
    assert_eq!(latest(89), None);
    assert_eq!(latest(90), Some(anchor + Duration::from_secs(90)));
    assert_eq!(latest(179), Some(anchor + Duration::from_secs(90)));
    assert_eq!(latest(180), Some(anchor + Duration::from_secs(180)));
}

// --- The missed-firing rule ---------------------------------------------

#[test]
fn nothing_fires_before_the_next_firing() {
    let anchor = at("2025-01-01T00:00:00Z");
    let firing = due_firing(
        &spec("0 * * * *"),
        &TimeZone::UTC,
        anchor,
        Some(at("2025-01-15T11:00:00Z")),
        at("2025-01-15T10:59:59Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: false,
            scheduled_for: None,
            next_fire_at: Some(at("2025-01-15T11:00:00Z")),
        }
    );
}

#[test]
fn a_firing_due_exactly_now_fires() {
    let anchor = at("2025-01-01T00:00:00Z");
    let firing = due_firing(
        &spec("0 * * * *"),
        &TimeZone::UTC,
        anchor,
        Some(at("2025-01-15T11:00:00Z")),
        at("2025-01-15T11:00:00Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: true,
            scheduled_for: Some(at("2025-01-15T11:00:00Z")),
            next_fire_at: Some(at("2025-01-15T12:00:00Z")),
        }
    );
}

#[test]
fn one_missed_firing_fires_once() {
    let anchor = at("2025-01-01T00:00:00Z");
    let firing = due_firing(
        &spec("0 * * * *"),
        &TimeZone::UTC,
        anchor,
        Some(at("2025-01-15T11:00:00Z")),
        at("2025-01-15T11:20:00Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: true,
            scheduled_for: Some(at("2025-01-15T11:00:00Z")),
            next_fire_at: Some(at("2025-01-15T12:00:00Z")),
        }
    );
}

#[test]
fn many_missed_firings_fire_once_for_the_most_recent() {
    let anchor = at("2025-01-01T00:00:00Z");
    // Down from 10:30 to 15:20: 11:00 to 15:00 were missed.
    let firing = due_firing(
        &spec("0 * * * *"),
        &TimeZone::UTC,
        anchor,
        Some(at("2025-01-15T11:00:00Z")),
        at("2025-01-15T15:20:00Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: true,
            scheduled_for: Some(at("2025-01-15T15:00:00Z")),
            next_fire_at: Some(at("2025-01-15T16:00:00Z")),
        }
    );
}

#[test]
fn many_missed_every_firings_fire_once_for_the_most_recent() {
    let anchor = at("2025-01-01T00:00:00Z");
    let minutes = |count: u64| anchor + Duration::from_secs(count * 60);
    let firing = due_firing(
        &spec("@every 10m"),
        &TimeZone::UTC,
        anchor,
        Some(minutes(10)),
        minutes(65),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: true,
            scheduled_for: Some(minutes(60)),
            next_fire_at: Some(minutes(70)),
        }
    );
}

#[test]
fn a_firing_missed_across_fall_back_fires_once_for_its_first_pass() {
    // Down from 00:00 to 01:45 UTC on Berlin's fall-back night: 02:30 local
    // came twice meanwhile, but a fixed time fires once (the first pass).
    let firing = due_firing(
        &spec("30 2 * * *"),
        &zone("Europe/Berlin"),
        at("2025-01-01T00:00:00Z"),
        Some(at("2025-10-26T00:30:00Z")),
        at("2025-10-26T01:45:00Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: true,
            scheduled_for: Some(at("2025-10-26T00:30:00Z")),
            next_fire_at: Some(at("2025-10-27T01:30:00Z")),
        }
    );
}

#[test]
fn a_schedule_with_no_next_firing_does_nothing() {
    let anchor = at("2025-01-01T00:00:00Z");
    let firing = due_firing(
        &spec("0 * * * *"),
        &TimeZone::UTC,
        anchor,
        None,
        at("2025-01-15T15:20:00Z"),
    );
    assert_eq!(
        firing,
        Firing {
            fire_now: false,
            scheduled_for: None,
            next_fire_at: None,
        }
    );
}

// --- Ids ----------------------------------------------------------------

#[test]
fn schedule_ids_round_trip_through_text() {
    let id = ScheduleId::generate();
    assert_eq!(id.to_string().parse::<ScheduleId>().ok(), Some(id));
    assert_eq!(id.to_string().len(), 36, "hyphenated");
    let error = "not-a-uuid".parse::<ScheduleId>().expect_err("not a UUID");
    assert_eq!(error.to_string(), "\"not-a-uuid\" is not a UUID");
}

#[test]
fn schedule_ids_sort_by_creation() {
    let first = ScheduleId::generate();
    let second = ScheduleId::generate();
    assert!(first < second);
}

// --- The schedule record ------------------------------------------------

#[test]
fn a_new_schedule_is_due_at_its_first_firing() {
    let created_at = at("2025-01-15T10:20:00Z");
    let schedule = hourly_schedule(created_at);
    assert_eq!(schedule.revision, 1);
    assert!(!schedule.paused);
    assert_eq!(schedule.overlap, Overlap::Skip);
    assert_eq!(schedule.next_fire_at, Some(at("2025-01-15T11:00:00Z")));
    assert_eq!(schedule.last_fire_at, None);
    assert_eq!(schedule.last_task_id, None);
}

#[test]
fn a_schedule_created_paused_has_no_next_firing() {
    let new_schedule = NewSchedule {
        spec: spec("0 * * * *"),
        time_zone: TimeZone::UTC,
        template: template(),
        overlap: Overlap::Allow,
        paused: true,
    };
    let schedule = Schedule::new(
        ScheduleId::generate(),
        new_schedule,
        at("2025-01-15T10:20:00Z"),
    );
    assert!(schedule.paused);
    assert_eq!(schedule.next_fire_at, None);
    assert_eq!(schedule.revision, 1);
}

#[test]
fn every_is_anchored_at_the_schedules_creation() {
    let created_at = at("2025-01-15T10:20:07Z");
    let new_schedule = NewSchedule {
        spec: spec("@every 15m"),
        time_zone: zone("Europe/Berlin"),
        template: template(),
        overlap: Overlap::Skip,
        paused: false,
    };
    let schedule = Schedule::new(ScheduleId::generate(), new_schedule, created_at);
    assert_eq!(schedule.next_fire_at, Some(at("2025-01-15T10:35:07Z")));
    assert_eq!(
        schedule.next_fire_after(at("2025-01-15T12:00:00Z")),
        Some(at("2025-01-15T12:05:07Z"))
    );
}

#[test]
fn recording_a_firing_moves_the_schedule_on() {
    let mut schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    let firing = schedule.due_firing(at("2025-01-15T13:30:00Z"));
    let scheduled_for = firing.scheduled_for.expect("a firing was missed");
    let task_id = TaskId::generate();
    schedule.record_firing(scheduled_for, task_id, firing.next_fire_at);
    assert_eq!(schedule.last_fire_at, Some(at("2025-01-15T13:00:00Z")));
    assert_eq!(schedule.last_task_id, Some(task_id));
    assert_eq!(schedule.next_fire_at, Some(at("2025-01-15T14:00:00Z")));
    assert_eq!(schedule.revision, 2);
    // Nothing more is due until 14:00.
    assert!(!schedule.due_firing(at("2025-01-15T13:59:59Z")).fire_now);
}

#[test]
fn a_skipped_firing_moves_on_without_a_task() {
    let mut schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    schedule.record_skipped_firing(Some(at("2025-01-15T12:00:00Z")));
    assert_eq!(schedule.next_fire_at, Some(at("2025-01-15T12:00:00Z")));
    assert_eq!(schedule.last_fire_at, None);
    assert_eq!(schedule.last_task_id, None);
    assert_eq!(schedule.revision, 2);
}

#[test]
fn overlap_skip_waits_for_the_previous_task_to_finish() {
    let mut schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    for (overlap, status, must_skip) in [
        (Overlap::Skip, None, false),
        (Overlap::Skip, Some(TaskStatus::Pending), true),
        (Overlap::Skip, Some(TaskStatus::Running), true),
        (Overlap::Skip, Some(TaskStatus::Retrying), true),
        (Overlap::Skip, Some(TaskStatus::Completed), false),
        (Overlap::Skip, Some(TaskStatus::Failed), false),
        (Overlap::Skip, Some(TaskStatus::Cancelled), false),
        (Overlap::Allow, Some(TaskStatus::Running), false),
        (Overlap::Allow, None, false),
    ] {
        schedule.overlap = overlap;
        assert_eq!(
            schedule.must_skip_firing(status),
            must_skip,
            "{overlap:?} {status:?}"
        );
    }
}

#[test]
fn a_firing_creates_the_template_labelled_with_the_schedule() {
    let schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    let task = schedule.task_for_firing();
    assert_eq!(
        task.labels,
        BTreeMap::from([
            ("schedule-id".to_owned(), schedule.id.to_string()),
            ("team".to_owned(), "billing".to_owned()),
        ])
    );
    assert_eq!(task.name, "nightly report");
    assert_eq!(task.request_id, None);
}

#[test]
fn pausing_clears_the_next_firing_once() {
    let mut schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    assert!(schedule.pause());
    assert!(schedule.paused);
    assert_eq!(schedule.next_fire_at, None);
    assert_eq!(schedule.revision, 2);
    assert!(!schedule.pause(), "already paused");
    assert_eq!(schedule.revision, 2);
    // A paused schedule fires nothing, however late it is.
    assert!(!schedule.due_firing(at("2025-01-16T00:00:00Z")).fire_now);
}

#[test]
fn resuming_does_not_make_up_for_firings_while_paused() {
    let mut schedule = hourly_schedule(at("2025-01-15T10:20:00Z"));
    schedule.pause();
    assert!(schedule.resume(at("2025-01-15T17:45:00Z")));
    assert!(!schedule.paused);
    assert_eq!(schedule.next_fire_at, Some(at("2025-01-15T18:00:00Z")));
    assert_eq!(schedule.revision, 3);
    assert!(
        !schedule.resume(at("2025-01-15T17:46:00Z")),
        "already running"
    );
    assert_eq!(schedule.revision, 3);
}
