//! Opaque, tamper-evident page tokens for `ListTasks` and `ListSchedules`.
//!
//! A token names the last task (or schedule) a page covered and a
//! fingerprint of the listing it was issued for (the filters of a task
//! listing; a fixed mark for schedules), so the next page continues exactly
//! there (keyset paging on the time-ordered id) and refuses other filters.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use crate::{
    manager::ListQuery,
    schedule::ScheduleId,
    task::{TaskId, TaskStatus},
};

const VERSION: u8 = 1;
/// version, id, filter fingerprint, checksum.
const TOKEN_LENGTH: usize = 1 + 16 + 8 + 8;

/// Why a page token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("is not a token this server issued")]
    Malformed,
    #[error(
        "was issued for other filters; use the same statuses and labels, or start again without a token"
    )]
    OtherFilters,
}

/// Encodes where the next page of `query`'s listing starts.
pub fn encode(after: TaskId, query: &ListQuery) -> String {
    encode_uuid(after.as_uuid(), filter_fingerprint(query))
}

/// Decodes a token, checking it is intact and was issued for `query`'s
/// filters.
pub fn decode(token: &str, query: &ListQuery) -> Result<TaskId, PageTokenError> {
    decode_uuid(token, filter_fingerprint(query)).map(TaskId::from_uuid)
}

/// Encodes where the next page of schedules starts.
pub fn encode_schedules(after: ScheduleId) -> String {
    encode_uuid(after.as_uuid(), schedules_fingerprint())
}

/// Decodes a token of a schedule listing; a token of a task listing is
/// refused as `OtherFilters`.
pub fn decode_schedules(token: &str) -> Result<ScheduleId, PageTokenError> {
    decode_uuid(token, schedules_fingerprint()).map(ScheduleId::from_uuid)
}

/// What marks a token of a schedule listing: no task filter hashes to it
/// (task fingerprints end in a status list and a 0xff byte).
fn schedules_fingerprint() -> u64 {
    fnv1a(b"schedules")
}

fn encode_uuid(after: &Uuid, fingerprint: u64) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_LENGTH);
    bytes.push(VERSION);
    bytes.extend_from_slice(after.as_bytes());
    bytes.extend_from_slice(&fingerprint.to_be_bytes());
    let checksum = fnv1a(&bytes);
    bytes.extend_from_slice(&checksum.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_uuid(token: &str, fingerprint: u64) -> Result<Uuid, PageTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::Malformed)?;
    if bytes.len() != TOKEN_LENGTH || bytes[0] != VERSION {
        return Err(PageTokenError::Malformed);
    }
    let (body, checksum) = bytes.split_at(TOKEN_LENGTH - 8);
    if fnv1a(body).to_be_bytes() != checksum {
        return Err(PageTokenError::Malformed);
    }
    let uuid = Uuid::from_slice(&body[1..17]).map_err(|_| PageTokenError::Malformed)?;
    if body[17..25] != fingerprint.to_be_bytes() {
        return Err(PageTokenError::OtherFilters);
    }
    Ok(uuid)
}

/// A stable fingerprint of the filters (not of the position or page size,
/// which may change between pages).
fn filter_fingerprint(query: &ListQuery) -> u64 {
    fnv1a(&canonical_filters(&query.statuses, &query.labels))
}

/// The statuses (as a set) and labels of a filter as bytes, the same
/// whatever order they were given in.
pub(super) fn canonical_filters(
    statuses: &[TaskStatus],
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    let mut statuses: Vec<u8> = statuses.iter().map(|status| status_code(*status)).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let mut canonical = statuses;
    canonical.push(0xff);
    for (key, value) in labels {
        // Lengths keep ("a","bc") apart from ("ab","c").
        canonical.extend_from_slice(&(key.len() as u64).to_be_bytes());
        canonical.extend_from_slice(key.as_bytes());
        canonical.extend_from_slice(&(value.len() as u64).to_be_bytes());
        canonical.extend_from_slice(value.as_bytes());
    }
    canonical
}

fn status_code(status: TaskStatus) -> u8 {
    match status {
        TaskStatus::Pending => 1,
        TaskStatus::Running => 2,
        TaskStatus::Completed => 3,
        TaskStatus::Failed => 4,
        TaskStatus::Cancelled => 5,
        TaskStatus::Retrying => 6,
    }
}

/// FNV-1a, 64 bits: stable across builds and replicas, unlike std's hasher.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(statuses: Vec<TaskStatus>, labels: &[(&str, &str)]) -> ListQuery {
        ListQuery {
            statuses,
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..ListQuery::default()
        }
    }

    #[test]
    fn a_token_round_trips_with_the_same_filters() {
        let id = TaskId::generate();
        let filters = query(
            vec![TaskStatus::Running, TaskStatus::Pending],
            &[("team", "a")],
        );
        let token = encode(id, &filters);
        let same_in_other_order = query(
            vec![TaskStatus::Pending, TaskStatus::Running],
            &[("team", "a")],
        );
        assert_eq!(decode(&token, &same_in_other_order), Ok(id));
    }

    #[test]
    fn a_token_is_refused_with_other_filters() {
        let token = encode(TaskId::generate(), &query(vec![], &[("team", "a")]));
        assert_eq!(
            decode(&token, &query(vec![], &[("team", "b")])),
            Err(PageTokenError::OtherFilters)
        );
        assert_eq!(
            decode(&token, &query(vec![TaskStatus::Failed], &[("team", "a")])),
            Err(PageTokenError::OtherFilters)
        );
    }

    #[test]
    fn schedule_and_task_tokens_are_not_interchangeable() {
        let schedule = ScheduleId::generate();
        let token = encode_schedules(schedule);
        assert_eq!(decode_schedules(&token), Ok(schedule));
        assert_eq!(
            decode(&token, &query(vec![], &[])),
            Err(PageTokenError::OtherFilters)
        );
        let task_token = encode(TaskId::generate(), &query(vec![], &[]));
        assert_eq!(
            decode_schedules(&task_token),
            Err(PageTokenError::OtherFilters)
        );
    }

    #[test]
    fn any_changed_character_is_detected() {
        let filters = query(vec![], &[]);
        let token = encode(TaskId::generate(), &filters);
        for position in 0..token.len() {
            let mut tampered: Vec<char> = token.chars().collect();
            tampered[position] = if tampered[position] == 'A' { 'B' } else { 'A' };
            let tampered: String = tampered.into_iter().collect();
            assert!(decode(&tampered, &filters).is_err(), "position {position}");
        }
        assert_eq!(decode("garbage!", &filters), Err(PageTokenError::Malformed));
        assert_eq!(decode("", &filters), Err(PageTokenError::Malformed));
    }
}
