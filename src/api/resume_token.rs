//! Opaque, tamper-evident resume tokens for `WatchTasks`, made like page
//! tokens (`page_token.rs`).
//!
//! A token carries a [`WatchPosition`] (the journal's instance, the number
//! of the last change, and how far the initial list went while it is being
//! sent) and a fingerprint of the filter it was issued for, so it resumes
//! the same stream and refuses another filter. Whether the position can
//! still be resumed is the manager's to say (`FAILED_PRECONDITION`), not
//! the token's.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::page_token::{canonical_filters, fnv1a};
use crate::{
    manager::{TaskFilter, WatchPosition},
    task::TaskId,
};

const VERSION: u8 = 1;
/// What follows the sequence number: no initial list in flight, one with
/// nothing listed yet, one listed up to a task (whose id follows).
const LIVE: u8 = 0;
const LISTING_STARTED: u8 = 1;
const LISTING_AFTER: u8 = 2;
/// version, instance, seq, listing mark.
const HEAD_LENGTH: usize = 1 + 8 + 8 + 1;
/// fingerprint, checksum.
const TAIL_LENGTH: usize = 8 + 8;

/// Why a resume token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeTokenError {
    #[error("is not a token this server issued")]
    Malformed,
    #[error(
        "was issued for other filters; use the same statuses, labels and kinds, or start again \
         without a token"
    )]
    OtherFilters,
}

/// The token to resume a stream of `filter` at `position`.
pub fn encode(position: &WatchPosition, filter: &TaskFilter) -> String {
    let mut bytes = Vec::with_capacity(HEAD_LENGTH + 16 + TAIL_LENGTH);
    bytes.push(VERSION);
    bytes.extend_from_slice(&position.instance.to_be_bytes());
    bytes.extend_from_slice(&position.seq.to_be_bytes());
    match position.listing {
        None => bytes.push(LIVE),
        Some(None) => bytes.push(LISTING_STARTED),
        Some(Some(after)) => {
            bytes.push(LISTING_AFTER);
            bytes.extend_from_slice(after.as_uuid().as_bytes());
        }
    }
    bytes.extend_from_slice(&filter_fingerprint(filter).to_be_bytes());
    let checksum = fnv1a(&bytes);
    bytes.extend_from_slice(&checksum.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position in a token, checking it is intact and was issued for
/// `filter`.
pub fn decode(token: &str, filter: &TaskFilter) -> Result<WatchPosition, ResumeTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ResumeTokenError::Malformed)?;
    if bytes.len() < HEAD_LENGTH + TAIL_LENGTH || bytes[0] != VERSION {
        return Err(ResumeTokenError::Malformed);
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 8);
    if fnv1a(body).to_be_bytes() != checksum {
        return Err(ResumeTokenError::Malformed);
    }
    let number = |at: usize| -> Result<u64, ResumeTokenError> {
        let eight: [u8; 8] = body
            .get(at..at + 8)
            .and_then(|slice| slice.try_into().ok())
            .ok_or(ResumeTokenError::Malformed)?;
        Ok(u64::from_be_bytes(eight))
    };
    let instance = number(1)?;
    let seq = number(9)?;
    let (listing, fingerprint_at) = match (body[HEAD_LENGTH - 1], body.len()) {
        (LIVE, length) if length == HEAD_LENGTH + 8 => (None, HEAD_LENGTH),
        (LISTING_STARTED, length) if length == HEAD_LENGTH + 8 => (Some(None), HEAD_LENGTH),
        (LISTING_AFTER, length) if length == HEAD_LENGTH + 16 + 8 => {
            let uuid = uuid::Uuid::from_slice(&body[HEAD_LENGTH..HEAD_LENGTH + 16])
                .map_err(|_| ResumeTokenError::Malformed)?;
            (Some(Some(TaskId::from_uuid(uuid))), HEAD_LENGTH + 16)
        }
        _ => return Err(ResumeTokenError::Malformed),
    };
    if number(fingerprint_at)? != filter_fingerprint(filter) {
        return Err(ResumeTokenError::OtherFilters);
    }
    Ok(WatchPosition {
        instance,
        seq,
        listing,
    })
}

/// A stable fingerprint of the filter: statuses and kinds as sets, labels
/// as pairs, and a mark so no page token's filter hashes the same.
fn filter_fingerprint(filter: &TaskFilter) -> u64 {
    let mut canonical = b"watch-tasks".to_vec();
    canonical.extend(canonical_filters(&filter.statuses, &filter.labels));
    let mut kinds: Vec<&String> = filter.kinds.iter().collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        canonical.extend_from_slice(&(kind.len() as u64).to_be_bytes());
        canonical.extend_from_slice(kind.as_bytes());
    }
    fnv1a(&canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskStatus;

    fn filter(statuses: Vec<TaskStatus>, kinds: &[&str]) -> TaskFilter {
        TaskFilter {
            tenant: Default::default(),
            statuses,
            labels: [("team".to_string(), "a".to_string())].into(),
            kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
        }
    }

    #[test]
    fn every_kind_of_position_round_trips() {
        let filter = filter(vec![TaskStatus::Running, TaskStatus::Pending], &["echo"]);
        for listing in [None, Some(None), Some(Some(TaskId::generate()))] {
            let position = WatchPosition {
                instance: 0xdead_beef_0123_4567,
                seq: 42,
                listing,
            };
            let token = encode(&position, &filter);
            let same_in_other_order = TaskFilter {
                statuses: vec![TaskStatus::Pending, TaskStatus::Running],
                ..filter.clone()
            };
            assert_eq!(decode(&token, &same_in_other_order), Ok(position));
        }
    }

    #[test]
    fn a_token_is_refused_with_other_filters() {
        let position = WatchPosition {
            instance: 1,
            seq: 2,
            listing: None,
        };
        let token = encode(&position, &filter(vec![], &["echo"]));
        assert_eq!(
            decode(&token, &filter(vec![], &["sleep"])),
            Err(ResumeTokenError::OtherFilters)
        );
        assert_eq!(
            decode(&token, &filter(vec![TaskStatus::Failed], &["echo"])),
            Err(ResumeTokenError::OtherFilters)
        );
    }

    #[test]
    fn any_changed_character_and_garbage_are_malformed() {
        let filter = filter(vec![], &[]);
        let position = WatchPosition {
            instance: 7,
            seq: 9,
            listing: Some(Some(TaskId::generate())),
        };
        let token = encode(&position, &filter);
        for at in 0..token.len() {
            let mut tampered: Vec<char> = token.chars().collect();
            tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
            let tampered: String = tampered.into_iter().collect();
            assert!(decode(&tampered, &filter).is_err(), "position {at}");
        }
        assert_eq!(
            decode("garbage!", &filter),
            Err(ResumeTokenError::Malformed)
        );
        assert_eq!(decode("", &filter), Err(ResumeTokenError::Malformed));
        let page_token = super::super::page_token::encode(
            TaskId::generate(),
            &crate::manager::ListQuery::default(),
        );
        assert_eq!(
            decode(&page_token, &filter),
            Err(ResumeTokenError::Malformed)
        );
    }
}
