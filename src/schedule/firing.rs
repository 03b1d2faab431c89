//! The contract's rule for firings that were due while no server ran:
//! "Firings missed while no server ran are not replayed, except the most
//! recent one, which fires once at start." One pure function, [`due_firing`],
//! serves both the steady tick and the first look after downtime: whether
//! one firing or a hundred were missed, at most one fires now.

use std::time::SystemTime;

use super::spec::{ScheduleSpec, TimeZone};

/// What a schedule does at `now`: fire once or not at all, and when it is
/// next due. `fire_now` is `scheduled_for.is_some()`, spelled out for the
/// caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firing {
    pub fire_now: bool,
    /// The firing time this firing stands for: the most recent one that was
    /// due at or before `now` (earlier missed ones are dropped).
    pub scheduled_for: Option<SystemTime>,
    /// The schedule's next firing: unchanged when nothing fired, else the
    /// first one strictly after `now`. `None`: it never fires again.
    pub next_fire_at: Option<SystemTime>,
}

impl Firing {
    fn none(next_fire_at: Option<SystemTime>) -> Self {
        Self {
            fire_now: false,
            scheduled_for: None,
            next_fire_at,
        }
    }

    fn once(scheduled_for: SystemTime, next_fire_at: Option<SystemTime>) -> Self {
        Self {
            fire_now: true,
            scheduled_for: Some(scheduled_for),
            next_fire_at,
        }
    }
}

/// Decides what a schedule whose stored next firing is `next_fire_at` does
/// at `now`. A firing at exactly `now` is due. `next_fire_at` is `None` for
/// a schedule that will not fire (paused, or no date left): nothing fires.
pub fn due_firing(
    spec: &ScheduleSpec,
    zone: &TimeZone,
    anchor: SystemTime,
    next_fire_at: Option<SystemTime>,
    now: SystemTime,
) -> Firing {
    let Some(due_at) = next_fire_at.filter(|due_at| *due_at <= now) else {
        return Firing::none(next_fire_at);
    };
    // The stored firing was due, so the latest one at or before `now` is it
    // or a later one. `max` keeps the stored one should the backward search
    // find nothing (a time chrono cannot hold).
    let most_recent = spec
        .latest_fire_at_or_before(now, zone, anchor)
        .map_or(due_at, |latest| latest.max(due_at));
    Firing::once(most_recent, spec.next_fire_after(now, zone, anchor))
}
