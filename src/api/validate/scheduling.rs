//! The v1.1 scheduling fields of a create: retry policy, `run_after`,
//! priority and queue timeout. Each broken rule names its field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    api::error::ApiError,
    pb,
    task::{MAX_BACKOFF_LIMIT, PRIORITY_RANGE, RetryPolicy, Scheduling},
};

/// How far ahead a task may be delayed, or wait in the queue: a year, as a
/// back-off. Longer is a calendar's job (schedules), and timers stay within
/// what the runtime's timer wheel holds.
pub const MAX_SCHEDULING_HORIZON: Duration = MAX_BACKOFF_LIMIT;

/// The scheduling fields of a create request, against `default_policy` (the
/// server's default for the task's kind), at time `now`.
pub fn scheduling(
    request: &pb::CreateTaskRequest,
    default_policy: &RetryPolicy,
    now: SystemTime,
) -> Result<Scheduling, ApiError> {
    let retry_policy = match &request.retry_policy {
        None => default_policy.clone(),
        Some(policy) => retry_policy(policy, default_policy)?,
    };
    if !PRIORITY_RANGE.contains(&request.priority) {
        return Err(ApiError::invalid(
            "priority",
            format!(
                "must be between {} and {}, got {}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end(),
                request.priority
            ),
        ));
    }
    let run_after = request
        .run_after
        .map(|timestamp| run_after(timestamp, now))
        .transpose()?;
    let horizon = MAX_SCHEDULING_HORIZON.as_secs();
    if u64::from(request.queue_timeout_seconds) > horizon {
        return Err(ApiError::invalid(
            "queue_timeout_seconds",
            format!(
                "must be at most {horizon} (a year), got {}",
                request.queue_timeout_seconds
            ),
        ));
    }
    Ok(Scheduling {
        retry_policy,
        run_after,
        priority: request.priority,
        queue_timeout_seconds: request.queue_timeout_seconds,
    })
}

/// A requested policy, with each unset field taken from the default, and
/// checked as a whole (the domain's rules).
fn retry_policy(
    requested: &pb::RetryPolicy,
    default_policy: &RetryPolicy,
) -> Result<RetryPolicy, ApiError> {
    let policy = RetryPolicy {
        max_attempts: match requested.max_attempts {
            0 => default_policy.max_attempts,
            attempts => attempts,
        },
        initial_backoff: backoff(
            "retry_policy.initial_backoff",
            requested.initial_backoff,
            default_policy.initial_backoff,
        )?,
        max_backoff: backoff(
            "retry_policy.max_backoff",
            requested.max_backoff,
            default_policy.max_backoff,
        )?,
        backoff_multiplier: if requested.backoff_multiplier == 0.0 {
            default_policy.backoff_multiplier
        } else {
            requested.backoff_multiplier
        },
    };
    policy.check().map_err(|invalid| {
        ApiError::invalid(format!("retry_policy.{}", invalid.field), invalid.reason)
    })?;
    Ok(policy)
}

/// A back-off duration: unset is the default; negative or malformed is
/// refused. Kept in whole microseconds, as stores keep it.
fn backoff(
    field: &str,
    requested: Option<prost_types::Duration>,
    default: Duration,
) -> Result<Duration, ApiError> {
    let Some(requested) = requested else {
        return Ok(default);
    };
    let duration = Duration::try_from(requested).map_err(|_| {
        ApiError::invalid(
            field,
            format!(
                "must be a non-negative duration, got {}s and {}ns",
                requested.seconds, requested.nanos
            ),
        )
    })?;
    Ok(Duration::from_micros(
        u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
    ))
}

/// A requested start time, in whole microseconds. A time in the past means
/// at once and is kept as sent; one more than a year ahead is refused.
fn run_after(timestamp: prost_types::Timestamp, now: SystemTime) -> Result<SystemTime, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "run_after",
            format!(
                "is not a valid time ({}s, {}ns)",
                timestamp.seconds, timestamp.nanos
            ),
        )
    };
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(invalid());
    }
    let time = SystemTime::try_from(timestamp).map_err(|_| invalid())?;
    if time
        .duration_since(now)
        .is_ok_and(|ahead| ahead > MAX_SCHEDULING_HORIZON)
    {
        return Err(ApiError::invalid(
            "run_after",
            "must be at most a year ahead; use a schedule for later work",
        ));
    }
    let micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH + Duration::from_micros(after.as_micros() as u64),
        Err(_) => return Err(ApiError::invalid("run_after", "must not be before 1970")),
    };
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::CreateTaskRequest {
        pb::CreateTaskRequest {
            name: "t".into(),
            ..Default::default()
        }
    }

    fn refused_field(request: &pb::CreateTaskRequest) -> String {
        let error =
            scheduling(request, &RetryPolicy::default(), SystemTime::now()).expect_err("refused");
        error.field().unwrap_or_default().to_owned()
    }

    #[test]
    fn unset_fields_take_the_kinds_default_and_set_ones_are_kept() {
        let default_policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let mut request = request();
        let plain = scheduling(&request, &default_policy, SystemTime::now()).expect("valid");
        assert_eq!(plain.retry_policy, default_policy);
        assert_eq!((plain.priority, plain.run_after), (0, None));
        request.retry_policy = Some(pb::RetryPolicy {
            max_attempts: 0,
            initial_backoff: Some(prost_types::Duration {
                seconds: 2,
                nanos: 500,
            }),
            max_backoff: None,
            backoff_multiplier: 0.0,
        });
        let policy = scheduling(&request, &default_policy, SystemTime::now())
            .expect("valid")
            .retry_policy;
        assert_eq!(policy.max_attempts, 3, "0 means the default");
        assert_eq!(
            policy.initial_backoff,
            Duration::from_secs(2),
            "whole microseconds"
        );
        assert_eq!(policy.max_backoff, Duration::from_secs(300));
        assert_eq!(policy.backoff_multiplier, 2.0);
    }

    #[test]
    fn every_broken_rule_names_its_field() {
        let policy = |policy: pb::RetryPolicy| pb::CreateTaskRequest {
            retry_policy: Some(policy),
            ..request()
        };
        let seconds = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let cases = [
            (
                policy(pb::RetryPolicy {
                    max_attempts: 101,
                    ..Default::default()
                }),
                "retry_policy.max_attempts",
            ),
            (
                policy(pb::RetryPolicy {
                    backoff_multiplier: f64::NAN,
                    ..Default::default()
                }),
                "retry_policy.backoff_multiplier",
            ),
            (
                policy(pb::RetryPolicy {
                    backoff_multiplier: -2.0,
                    ..Default::default()
                }),
                "retry_policy.backoff_multiplier",
            ),
            (
                policy(pb::RetryPolicy {
                    backoff_multiplier: 0.5,
                    ..Default::default()
                }),
                "retry_policy.backoff_multiplier",
            ),
            (
                policy(pb::RetryPolicy {
                    initial_backoff: seconds(-1),
                    ..Default::default()
                }),
                "retry_policy.initial_backoff",
            ),
            (
                policy(pb::RetryPolicy {
                    initial_backoff: seconds(60),
                    max_backoff: seconds(10),
                    ..Default::default()
                }),
                "retry_policy.max_backoff",
            ),
            (
                pb::CreateTaskRequest {
                    priority: 101,
                    ..request()
                },
                "priority",
            ),
            (
                pb::CreateTaskRequest {
                    priority: -101,
                    ..request()
                },
                "priority",
            ),
            (
                pb::CreateTaskRequest {
                    run_after: Some(prost_types::Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    ..request()
                },
                "run_after",
            ),
            (
                pb::CreateTaskRequest {
                    run_after: Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -5,
                    }),
                    ..request()
                },
                "run_after",
            ),
            (
                pb::CreateTaskRequest {
                    queue_timeout_seconds: u32::MAX,
                    ..request()
                },
                "queue_timeout_seconds",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(refused_field(&request), field, "{request:?}");
        }
    }
}
