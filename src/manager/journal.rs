//! The change journal behind `WatchTasks`: every change to a task, numbered
//! in the order the actor saw it, kept for a while so a stream can resume
//! after any message it sent.
//!
//! The actor owns the [`Journal`] and records into it synchronously; streams
//! never touch it but through a command (to resume) and a
//! `tokio::sync::broadcast` receiver (to follow live). A broadcast send never
//! waits: a stream that falls more than [`LIVE_BUFFER`] changes behind finds
//! it lagged and ends (`ABORTED`), and neither the actor nor other streams
//! notice. Filtering is the stream's work, not the actor's.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use crate::task::{Task, TaskStatus};

/// How many changes a live stream may fall behind before it is ended: the
/// bounded amount the server buffers for a slow client. The buffer is
/// shared by every stream (one ring), so it costs the same for one stream
/// or a thousand.
pub(crate) const LIVE_BUFFER: usize = 1024;

/// How long a change stays in the journal at least (unless the cap pushes
/// it out first): resume tokens must work for 5 minutes after they were
/// issued, and a token may be issued a little after its change.
pub(crate) const KEPT_FOR: Duration = Duration::from_secs(10 * 60);

/// PostgreSQL: how long the change log stays on after a replica last said
/// that streams follow; replicas with streams say so every
/// [`LOG_KEEP_ON_EVERY`]. Longer than [`KEPT_FOR`]: once it goes off, every
/// token issued before is older than what a journal keeps anyway.
pub(crate) const LOG_KEPT_ON: Duration = Duration::from_secs(15 * 60);

/// How often a replica with streams keeps the change log on.
pub(crate) const LOG_KEEP_ON_EVERY: Duration = Duration::from_secs(60);

/// The default cap on the journal's length (the `watch_journal_capacity`
/// setting). Each entry holds a task's state without its payload, about
/// half a kilobyte, so the default costs about 5 MB: five minutes of 2000
/// changes a minute.
pub const DEFAULT_JOURNAL_CAPACITY: usize = 10_000;

/// What a task was before a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// Nothing: the change created the task.
    Created,
    /// The task had this status.
    Status(TaskStatus),
    /// Not known here (a change another replica made to a task this one
    /// never saw): streams treat the task as having matched, so a client
    /// rather hears once too often than misses that a task left its filter.
    Unknown,
    /// The change deleted the task; `task` is its last state.
    Deleted,
}

impl Before {
    /// What a task was before a change PostgreSQL's feed or change log
    /// brings: known only for a create and a delete.
    pub(crate) fn of_logged(deleted: bool, revision: u64) -> Self {
        if deleted {
            Self::Deleted
        } else if revision == 1 {
            Self::Created
        } else {
            Self::Unknown
        }
    }
}

/// One numbered change.
#[derive(Debug)]
pub(crate) struct Change {
    /// Local stores: 1 for the first change this process saw, then one more
    /// each time. PostgreSQL: the change's position in the change log,
    /// which every replica shares (rising, but with gaps).
    pub(crate) seq: u64,
    /// The task after the change (its last state for a delete).
    pub(crate) task: Arc<Task>,
    pub(crate) before: Before,
}

/// Why a stream cannot resume at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResumeRefused {
    /// The token names another journal: another process, or one from before
    /// a restart.
    OtherInstance,
    /// Changes after the position were already let go (or the position is
    /// in the future).
    NotKept,
}

/// A stream's start in the journal: live changes after `position`, and
/// the kept ones between the asked position and it.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) instance: u64,
    /// The last change recorded when the stream subscribed.
    pub(crate) position: u64,
    /// Kept changes after the asked position, up to `position`, in order.
    pub(crate) backlog: Vec<Arc<Change>>,
    /// PostgreSQL: the backlog is to be read from the change log, after
    /// this position.
    pub(crate) read_log_after: Option<u64>,
    pub(crate) live: broadcast::Receiver<Arc<Change>>,
    /// Changes when the live changes had a gap: the stream must end.
    pub(crate) interrupted: watch::Receiver<()>,
}

/// The actor's side of the journal.
#[derive(Debug)]
pub(crate) struct Journal {
    /// Random per process start, so a token of another process, or of the
    /// same one before a restart, is refused rather than misread; on
    /// PostgreSQL, the change log's, which every replica shares.
    instance: u64,
    /// PostgreSQL: changes are numbered by the change log, which keeps
    /// them (this journal keeps none) and from which resumes read.
    numbered_by_log: bool,
    /// The number of the last change recorded (0: none yet).
    last_seq: u64,
    /// Kept changes, oldest first, with when they were recorded.
    kept: VecDeque<(Instant, Arc<Change>)>,
    capacity: usize,
    live: broadcast::Sender<Arc<Change>>,
    /// When a stream last followed the journal (as seen when a stream
    /// subscribed, at a change, or at a prune, once a second). Tokens are
    /// handed out only to streams, so once none has followed for
    /// [`KEPT_FOR`], no token can resume and nothing needs keeping: a
    /// server nobody watches this way pays nothing per change.
    last_followed: Option<Instant>,
    /// Bumped when live changes were missed, to end every stream.
    interruptions: watch::Sender<()>,
}

impl Journal {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            instance: fastrand::u64(..),
            numbered_by_log: false,
            interruptions: watch::Sender::new(()),
            last_seq: 0,
            kept: VecDeque::new(),
            capacity: capacity.max(1),
            live: broadcast::Sender::new(LIVE_BUFFER),
            last_followed: None,
        }
    }

    /// Whether a token handed out to a stream may still resume here: a
    /// stream follows now, or did within [`KEPT_FOR`].
    fn may_be_resumed(&mut self) -> bool {
        if self.live.receiver_count() > 0 {
            self.last_followed = Some(Instant::now());
            return true;
        }
        self.last_followed
            .is_some_and(|followed| followed.elapsed() < KEPT_FOR)
    }

    /// Numbers a change, keeps it, and hands it to the live streams. Never
    /// waits.
    pub(crate) fn record(&mut self, task: Arc<Task>, before: Before) {
        self.last_seq += 1;
        if !self.may_be_resumed() {
            // The number still moves on, and what is kept goes: a token
            // from before (all older than KEPT_FOR) then finds the change
            // after it missing, and is refused rather than bridging a gap.
            self.kept.clear();
            return;
        }
        // Kept without its payload: a kept change must not hold the data
        // of a task that retention forgot, or that SQLite let go of, for
        // minutes. A resumed stream reads the payload back.
        let kept = Arc::new(Change {
            seq: self.last_seq,
            task: Arc::new(task.without_payload()),
            before,
        });
        if self.kept.len() == self.capacity {
            self.kept.pop_front();
        }
        self.kept.push_back((Instant::now(), kept));
        // No stream listening is not an error. Live changes carry the
        // payload (shared with the task), for at most LIVE_BUFFER changes.
        let _ = self.live.send(Arc::new(Change {
            seq: self.last_seq,
            task,
            before,
        }));
    }

    /// A journal numbered by PostgreSQL's change log (`instance`, its last
    /// position when the replica started listening): positions come from
    /// the log, and resumes read from it, on any replica.
    pub(crate) fn numbered_by_log(&mut self, instance: u64, last_position: u64) {
        self.instance = instance;
        self.numbered_by_log = true;
        self.last_seq = last_position;
        self.kept.clear();
    }

    /// PostgreSQL: new streams start at `floor` at least (the change log
    /// was turned on there: nothing before it can be resumed).
    pub(crate) fn raise_floor(&mut self, floor: u64) {
        if self.numbered_by_log {
            self.last_seq = self.last_seq.max(floor);
        }
    }

    /// Hands a change of the change log, at `position`, to the live
    /// streams. A position already passed was heard before (a change
    /// recorded while the replica started): not again.
    pub(crate) fn record_at(&mut self, position: u64, task: Arc<Task>, before: Before) {
        if position <= self.last_seq {
            return;
        }
        self.last_seq = position;
        // No stream listening is not an error.
        let _ = self.live.send(Arc::new(Change {
            seq: position,
            task,
            before,
        }));
    }

    /// Ends every stream following the live changes, because some were
    /// missed (the feed lost its connection); each resumes from its last
    /// token, through the change log, with nothing lost.
    pub(crate) fn interrupt(&mut self) {
        self.interruptions.send_replace(());
    }

    /// Lets go of the changes older than [`KEPT_FOR`] (and notes whether a
    /// stream follows, for a stream that only sends bookmarks).
    pub(crate) fn prune(&mut self) {
        self.may_be_resumed();
        while let Some((recorded, _)) = self.kept.front() {
            if recorded.elapsed() < KEPT_FOR {
                break;
            }
            self.kept.pop_front();
        }
    }

    /// A new stream: live changes from now on, and (with `since`, the last
    /// change a client saw, in `instance`) the kept ones after `since`.
    pub(crate) fn subscribe(
        &mut self,
        resume: Option<(u64, u64)>,
    ) -> Result<Subscription, ResumeRefused> {
        self.last_followed = Some(Instant::now());
        let mut read_log_after = None;
        let backlog = match resume {
            None => Vec::new(),
            Some((instance, _)) if instance != self.instance => {
                return Err(ResumeRefused::OtherInstance);
            }
            Some((_, since)) if self.numbered_by_log => {
                // The log says whether it still holds what follows.
                read_log_after = Some(since);
                Vec::new()
            }
            Some((_, since)) => self.kept_after(since)?,
        };
        let mut interrupted = self.interruptions.subscribe();
        interrupted.mark_unchanged();
        Ok(Subscription {
            instance: self.instance,
            position: self.last_seq,
            backlog,
            read_log_after,
            live: self.live.subscribe(),
            interrupted,
        })
    }

    /// Every change after `since`, if they are all still kept.
    fn kept_after(&self, since: u64) -> Result<Vec<Arc<Change>>, ResumeRefused> {
        if since > self.last_seq {
            return Err(ResumeRefused::NotKept);
        }
        // Changes are numbered without gaps, so the first kept one tells
        // whether everything after `since` is here.
        let first_kept = self
            .kept
            .front()
            .map_or(self.last_seq + 1, |(_, change)| change.seq);
        if since + 1 < first_kept {
            return Err(ResumeRefused::NotKept);
        }
        let skip = usize::try_from(since + 1 - first_kept).unwrap_or(usize::MAX);
        Ok(self
            .kept
            .iter()
            .skip(skip)
            .map(|(_, change)| Arc::clone(change))
            .collect())
    }

    /// How many streams follow the live changes.
    pub(crate) fn streams(&self) -> usize {
        self.live.receiver_count()
    }

    /// How many changes are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{NewTask, TaskId};

    fn task() -> Arc<Task> {
        let new_task = NewTask {
            tenant: Default::default(),
            name: "t".into(),
            description: String::new(),
            kind: "echo".into(),
            data: None,
            timeout_seconds: 0,
            labels: Default::default(),
            request_id: None,
            scheduling: Default::default(),
            trace_context: Default::default(),
        };
        Arc::new(Task::new(
            TaskId::generate(),
            new_task,
            std::time::SystemTime::now(),
        ))
    }

    fn seqs(subscription: &Subscription) -> Vec<u64> {
        subscription
            .backlog
            .iter()
            .map(|change| change.seq)
            .collect()
    }

    #[tokio::test]
    async fn a_resume_gets_exactly_the_changes_after_its_position() {
        let mut journal = Journal::new(10);
        let _follower = journal.subscribe(None).expect("new stream");
        for _ in 0..5 {
            journal.record(task(), Before::Created);
        }
        let instance = journal.instance;
        let resumed = journal.subscribe(Some((instance, 2))).expect("kept");
        assert_eq!(seqs(&resumed), vec![3, 4, 5]);
        assert_eq!(resumed.position, 5);
        let at_the_end = journal.subscribe(Some((instance, 5))).expect("kept");
        assert!(at_the_end.backlog.is_empty());
        assert_eq!(
            journal.subscribe(Some((instance, 6))).err(),
            Some(ResumeRefused::NotKept),
            "a position from the future"
        );
        assert_eq!(
            journal.subscribe(Some((instance ^ 1, 2))).err(),
            Some(ResumeRefused::OtherInstance)
        );
    }

    #[tokio::test]
    async fn the_cap_lets_the_oldest_go_and_refuses_positions_before_them() {
        let mut journal = Journal::new(3);
        let _follower = journal.subscribe(None).expect("new stream");
        for _ in 0..5 {
            journal.record(task(), Before::Created);
        }
        let instance = journal.instance;
        assert_eq!(journal.len(), 3);
        assert_eq!(
            seqs(&journal.subscribe(Some((instance, 2))).expect("kept")),
            vec![3, 4, 5]
        );
        assert_eq!(
            journal.subscribe(Some((instance, 1))).err(),
            Some(ResumeRefused::NotKept)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_kept_for_their_time_and_no_longer() {
        let mut journal = Journal::new(10);
        let _follower = journal.subscribe(None).expect("new stream");
        journal.record(task(), Before::Created);
        tokio::time::advance(KEPT_FOR - Duration::from_secs(1)).await;
        journal.prune();
        let instance = journal.instance;
        assert!(journal.subscribe(Some((instance, 0))).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        journal.prune();
        assert_eq!(
            journal.subscribe(Some((instance, 0))).err(),
            Some(ResumeRefused::NotKept)
        );
        assert!(
            journal.subscribe(Some((instance, 1))).is_ok(),
            "nothing after the last change is missing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_kept_once_no_stream_has_followed_for_as_long_as_changes_are_kept() {
        let mut journal = Journal::new(10);
        journal.record(task(), Before::Created);
        assert_eq!(journal.len(), 0, "no stream ever followed: nothing to keep");
        let follower = journal.subscribe(None).expect("new stream");
        let instance = journal.instance;
        let position = follower.position;
        journal.record(task(), Before::Created);
        drop(follower);
        // The stream is gone, but its last token must still resume.
        tokio::time::advance(KEPT_FOR - Duration::from_secs(1)).await;
        journal.record(task(), Before::Created);
        assert_eq!(
            seqs(&journal.subscribe(Some((instance, position))).expect("kept")),
            vec![2, 3]
        );
        // That resume followed again; then nobody does for KEPT_FOR.
        tokio::time::advance(KEPT_FOR).await;
        journal.record(task(), Before::Created);
        assert_eq!(journal.len(), 0, "kept changes go once nobody can resume");
        assert_eq!(
            journal.subscribe(Some((instance, 3))).err(),
            Some(ResumeRefused::NotKept),
            "a token from before is refused, not bridged over the gap"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn numbered_by_the_change_log_it_keeps_nothing_and_resumes_through_the_log() {
        let mut journal = Journal::new(10);
        journal.numbered_by_log(77, 40);
        let mut live = journal.subscribe(None).expect("subscribed");
        assert_eq!((live.instance, live.position), (77, 40));
        journal.record_at(41, task(), Before::Created);
        // Heard twice (recorded while the replica started listening): once.
        journal.record_at(41, task(), Before::Created);
        journal.record_at(45, task(), Before::Unknown);
        let heard: Vec<u64> = [
            live.live.try_recv().expect("41").seq,
            live.live.try_recv().expect("45").seq,
        ]
        .into();
        assert_eq!(heard, [41, 45]);
        assert!(live.live.try_recv().is_err(), "nothing more");
        assert_eq!(journal.len(), 0, "the log keeps them, not the journal");

        let resumed = journal.subscribe(Some((77, 3))).expect("the log decides");
        assert_eq!(
            (resumed.read_log_after, resumed.backlog.len()),
            (Some(3), 0)
        );
        assert_eq!(
            journal.subscribe(Some((78, 41))).err(),
            Some(ResumeRefused::OtherInstance)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_reaches_every_stream_subscribed_before_it() {
        let mut journal = Journal::new(10);
        let mut before = journal.subscribe(None).expect("subscribed");
        assert!(!before.interrupted.has_changed().expect("open"));
        journal.interrupt();
        assert!(before.interrupted.has_changed().expect("open"));
        let after = journal.subscribe(None).expect("subscribed");
        assert!(!after.interrupted.has_changed().expect("open"));
        before.interrupted.mark_unchanged();
    }
}
