//! The change feed: how a replica announces each written change (`NOTIFY`,
//! inside the commit), the wire form of a change, and the `LISTEN` side that
//! follows every replica's changes.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgListener, PgPoolOptions},
};
use uuid::Uuid;

use crate::store::{StoreError, row::status_name};
use crate::task::{Progress, RetryPolicy, Scheduling, Task, TaskId, TaskStatus, TraceContext};

use super::*;

/// Follows the changes of every replica.
///
/// It holds a connection of its own (not one of the store's pool), since a
/// listening connection is never given back.
#[derive(Debug)]
pub struct ChangeFeed {
    /// A pool of one connection, used by `PgListener` to reconnect.
    pool: PgPool,
    channel: Arc<str>,
    /// `None` after an error: the next call listens anew and reports a gap,
    /// because changes made meanwhile were not heard.
    listener: Option<PgListener>,
}

impl ChangeFeed {
    /// Listens on `channel` over a connection of its own, with the settings
    /// of the store's pool.
    pub(super) async fn open(store_pool: &PgPool, channel: Arc<str>) -> Result<Self, StoreError> {
        let pool = listener_pool(store_pool);
        let listener = start_listener(&pool, &channel).await?;
        Ok(Self {
            pool,
            channel,
            listener: Some(listener),
        })
    }

    /// The next change, in commit order; or a gap when the connection was
    /// lost (the listener connects again by itself, but what was announced
    /// meanwhile is gone).
    ///
    /// An error (the database is unreachable) leaves the feed usable: the
    /// next call connects again and yields a gap first. Payloads that cannot
    /// be read are logged and skipped.
    pub async fn next(&mut self) -> Result<FeedEvent, StoreError> {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                let listener = start_listener(&self.pool, &self.channel).await?;
                self.listener = Some(listener);
                return Ok(FeedEvent::Gap);
            };
            match listener.try_recv().await {
                Ok(Some(notification)) if notification.payload() == WORK_WAITING => {
                    return Ok(FeedEvent::WorkWaiting);
                }
                Ok(Some(notification)) => match decode_change(notification.payload()) {
                    Ok(change) => return Ok(FeedEvent::Change(change)),
                    Err(reason) => {
                        tracing::warn!(
                            channel = %self.channel,
                            %reason,
                            "skipped a change notification that cannot be read"
                        );
                    }
                },
                Ok(None) => return Ok(FeedEvent::Gap),
                Err(error) => {
                    self.listener = None;
                    return Err(error.into());
                }
            }
        }
    }
}

/// A pool of one connection for a listener, with the store's settings
/// (schema included). A listening connection lives as long as it may.
pub(super) fn listener_pool(store_pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*store_pool.connect_options()).clone())
}

pub(super) async fn start_listener(pool: &PgPool, channel: &str) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// The payload that says tasks were given back; never a change's JSON.
pub(super) const WORK_WAITING: &str = "work-waiting";

/// The first key of the advisory lock that orders the change log's
/// positions (the second is the schema's channel, hashed): a constant of
/// ours, so the lock is told apart from other advisory locks in the
/// database ("tp" in ASCII).
const CHANGE_LOG_ORDER_CLASS: i32 = 0x7470;

/// The first key of the gate every announcing transaction holds shared, and
/// that turning the change log on takes exclusively
/// ([`super::PostgresStore::watch_change_log`]), so that once the log is on,
/// every transaction that commits later records its changes.
pub(super) const CHANGE_LOG_GATE_CLASS: i32 = 0x7471;

/// One change to announce: the notification's JSON, and whose change it is.
#[derive(Clone, Debug)]
pub(super) struct Announcement {
    task_id: Uuid,
    text: String,
}

/// Announces the changes on `channel`, in order, and, while the change log
/// is on (a replica has `WatchTasks` streams), records them in it; both
/// take effect when (and only if) the transaction commits. A recorded
/// change's notification carries its position in the log.
///
/// It must be the transaction's last statement before the commit: while the
/// log is on it holds the log's lock until then, so that positions rise in
/// commit order (a reader that sees a position sees every smaller one there
/// will ever be; PostgreSQL makes a commit visible before it releases the
/// transaction's locks), and a transaction that waits for nothing while it
/// holds the lock cannot be in a deadlock.
pub(super) async fn notify(
    transaction: &mut Transaction<'static, Postgres>,
    channel: &str,
    announcements: &[Announcement],
) -> Result<(), StoreError> {
    if announcements.is_empty() {
        return Ok(());
    }
    // The gate first, shared: a turn-on waits for this transaction. The
    // next statement's snapshot is taken once the gate is held, so it sees
    // any turn-on that finished before.
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
        .bind(CHANGE_LOG_GATE_CLASS)
        .bind(channel)
        .execute(&mut **transaction)
        .await?;
    notify_through_gate(transaction, channel, announcements).await
}

/// The statement that begins a transaction holding the change log's gate
/// shared from its start (see [`notify`]), in the same round trip as the
/// `BEGIN`: for the transactions that run most often, which then announce
/// with [`notify_through_gate`].
pub(super) fn gated_begin(channel: &str) -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock_shared({CHANGE_LOG_GATE_CLASS}, hashtext('{}'))",
        channel.replace('\'', "''")
    )
}

/// [`notify`] in a transaction that holds the gate already (begun with
/// [`gated_begin`]): while the log is off, as it is unless a replica has
/// `WatchTasks` streams, one round trip reads the switch and announces.
pub(super) async fn notify_through_gate(
    transaction: &mut Transaction<'static, Postgres>,
    channel: &str,
    announcements: &[Announcement],
) -> Result<(), StoreError> {
    if announcements.is_empty() {
        return Ok(());
    }
    let texts: Vec<&str> = announcements
        .iter()
        .map(|each| each.text.as_str())
        .collect();
    let recording: bool = sqlx::query_scalar(
        "SELECT switch.recording \
         FROM (SELECT coalesce(watched_until > now(), false) AS recording \
               FROM task_changes_horizon) AS switch, \
         LATERAL (SELECT count(*) FROM ( \
             SELECT pg_notify($1, payload) \
             FROM UNNEST($2::text[]) WITH ORDINALITY AS payloads(payload, n) \
             WHERE NOT switch.recording ORDER BY n) AS notified) AS sent",
    )
    .bind(channel)
    .bind(&texts)
    .fetch_one(&mut **transaction)
    .await?;
    if !recording {
        return Ok(());
    }
    // The log is on: take its lock (writers of the log wait for each
    // other; nothing else waits for them), then record and announce.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(CHANGE_LOG_ORDER_CLASS)
        .bind(channel)
        .execute(&mut **transaction)
        .await?;
    let task_ids: Vec<Uuid> = announcements.iter().map(|each| each.task_id).collect();
    // The position goes in front of the change's other fields: the text is
    // a JSON object, so `{"position":N,` + the rest is one too.
    sqlx::query(
        "WITH recorded AS ( \
             INSERT INTO task_changes (task_id, change) \
             SELECT task_id, change \
             FROM UNNEST($2::uuid[], $3::text[]) WITH ORDINALITY AS changes(task_id, change, n) \
             ORDER BY n \
             RETURNING position, change \
         ) \
         SELECT pg_notify($1, '{\"position\":' || position || ',' || substr(change, 2)) \
         FROM recorded ORDER BY position",
    )
    .bind(channel)
    .bind(task_ids)
    .bind(texts)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// A task as announced: everything but `data` and the trace context. Times are nanoseconds since
/// the Unix epoch, so the task read back equals the one published.
#[derive(Serialize, Deserialize)]
pub(super) struct ChangePayload<'a> {
    /// The change's position in the change log: set by the statement that
    /// records it (never serialized here); absent from an older replica's.
    #[serde(default, skip_serializing)]
    position: Option<u64>,
    /// The change deleted the task; the rest is its last state.
    #[serde(default, skip_serializing_if = "is_false")]
    deleted: bool,
    #[serde(borrow)]
    origin: Cow<'a, str>,
    complete: bool,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    result: Option<Cow<'a, JsonValue>>,
    #[serde(borrow)]
    error: Cow<'a, str>,
    timeout_seconds: u32,
    labels: Cow<'a, BTreeMap<String, String>>,
    #[serde(borrow)]
    progress: Option<ProgressPayload<'a>>,
    attempt: u32,
    #[serde(borrow)]
    node: Cow<'a, str>,
    revision: u64,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    created_at: i128,
    started_at: Option<i128>,
    completed_at: Option<i128>,
    /// Absent in the payloads of replicas older than v1.1 (rolling update):
    /// those tasks have the defaults.
    #[serde(default)]
    scheduling: SchedulingPayload,
    /// The task's tenant, so a `WatchTasks` stream of a tenant can leave
    /// out the others' changes. Absent in the payloads of replicas older
    /// than tenants (rolling update) and in the change log rows they
    /// wrote: '' (no tenant), as the migration gave their rows.
    #[serde(default, borrow)]
    tenant: Cow<'a, str>,
}

/// A task's scheduling fields and retry state, as announced.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct SchedulingPayload {
    priority: i32,
    run_after: Option<i128>,
    queue_timeout_seconds: u32,
    max_attempts: u32,
    initial_backoff_us: u64,
    max_backoff_us: u64,
    backoff_multiplier: f64,
    retry_at: Option<i128>,
    failed_runs: u32,
    cut_short_runs: u32,
}

impl SchedulingPayload {
    fn of(task: &Task) -> Self {
        let policy = &task.scheduling.retry_policy;
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Self {
            priority: task.scheduling.priority,
            run_after: task.scheduling.run_after.map(nanos),
            queue_timeout_seconds: task.scheduling.queue_timeout_seconds,
            max_attempts: policy.max_attempts,
            initial_backoff_us: micros(policy.initial_backoff),
            max_backoff_us: micros(policy.max_backoff),
            backoff_multiplier: policy.backoff_multiplier,
            retry_at: task.retry_at.map(nanos),
            failed_runs: task.failed_runs,
            cut_short_runs: task.cut_short_runs,
        }
    }

    /// The scheduling and retry state; a payload without them (an older
    /// replica's) means the defaults.
    fn into_parts(self) -> (Scheduling, Option<SystemTime>, u32, u32) {
        let default_policy = RetryPolicy::default();
        let retry_policy = if self.max_attempts == 0 {
            default_policy
        } else {
            RetryPolicy {
                max_attempts: self.max_attempts,
                initial_backoff: Duration::from_micros(self.initial_backoff_us),
                max_backoff: Duration::from_micros(self.max_backoff_us),
                backoff_multiplier: self.backoff_multiplier,
            }
        };
        let scheduling = Scheduling {
            retry_policy,
            run_after: self.run_after.map(from_nanos),
            priority: self.priority,
            queue_timeout_seconds: self.queue_timeout_seconds,
        };
        (
            scheduling,
            self.retry_at.map(from_nanos),
            self.failed_runs,
            self.cut_short_runs,
        )
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct ProgressPayload<'a> {
    percent: u32,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

impl<'a> ChangePayload<'a> {
    fn of(origin: &'a str, task: &'a Task) -> Self {
        Self {
            position: None,
            deleted: false,
            origin: Cow::Borrowed(origin),
            complete: true,
            id: Cow::Owned(task.id.to_string()),
            name: Cow::Borrowed(&task.name),
            description: Cow::Borrowed(&task.description),
            kind: Cow::Borrowed(&task.kind),
            status: Cow::Borrowed(status_name(task.status)),
            result: task.result.as_deref().map(Cow::Borrowed),
            error: Cow::Borrowed(&task.error),
            timeout_seconds: task.timeout_seconds,
            labels: Cow::Borrowed(&task.labels),
            progress: task.progress.as_ref().map(|progress| ProgressPayload {
                percent: progress.percent,
                message: Cow::Borrowed(&progress.message),
            }),
            attempt: task.attempt,
            node: Cow::Borrowed(&task.node),
            revision: task.revision,
            request_id: task.request_id.as_deref().map(Cow::Borrowed),
            created_at: nanos(task.created_at),
            started_at: task.started_at.map(nanos),
            completed_at: task.completed_at.map(nanos),
            scheduling: SchedulingPayload::of(task),
            tenant: Cow::Borrowed(&task.tenant),
        }
    }

    fn into_change(self) -> Result<Change, String> {
        let id = Uuid::try_parse(&self.id).map_err(|error| format!("bad id: {error}"))?;
        let status = TaskStatus::ALL
            .into_iter()
            .find(|status| status_name(*status) == self.status)
            .ok_or_else(|| format!("unknown status {:?}", self.status))?;
        let (scheduling, retry_at, failed_runs, cut_short_runs) = self.scheduling.into_parts();
        Ok(Change {
            position: self.position,
            deleted: self.deleted,
            origin: self.origin.into_owned(),
            complete: self.complete,
            task: Task {
                id: TaskId::from_uuid(id),
                name: self.name.into_owned(),
                description: self.description.into_owned(),
                kind: self.kind.into_owned(),
                status,
                data: None,
                result: self.result.map(|result| Arc::new(result.into_owned())),
                error: self.error.into_owned(),
                timeout_seconds: self.timeout_seconds,
                labels: self.labels.into_owned(),
                progress: self.progress.map(|progress| Progress {
                    percent: progress.percent,
                    message: progress.message.into_owned(),
                }),
                attempt: self.attempt,
                node: self.node.into_owned(),
                revision: self.revision,
                request_id: self.request_id.map(Cow::into_owned),
                created_at: from_nanos(self.created_at),
                started_at: self.started_at.map(from_nanos),
                completed_at: self.completed_at.map(from_nanos),
                scheduling,
                retry_at,
                failed_runs,
                cut_short_runs,
                payload: crate::task::PayloadLocation::InTask,
                // Not announced: a change tells watchers and the claim
                // scheduling what happened, and the replica that runs the
                // task reads its trace from the row it claims.
                trace_context: TraceContext::default(),
                tenant: self.tenant.into_owned(),
            },
        })
    }
}

/// The notification text for `task` as changed by `origin`, small enough
/// for PostgreSQL. Too large whole, it leaves out `result` and `error`
/// (`complete: false`); still too large (a huge description, labels or
/// progress message), those go too. `None` (logged) only when even that
/// does not fit, which no valid task reaches.
pub(super) fn change_payload(origin: &str, task: &Task) -> Option<Announcement> {
    announcement(ChangePayload::of(origin, task), task)
}

/// [`change_payload`] for the delete of `task`, with its last state.
pub(super) fn deleted_payload(origin: &str, task: &Task) -> Option<Announcement> {
    let mut payload = ChangePayload::of(origin, task);
    payload.deleted = true;
    announcement(payload, task)
}

fn announcement(payload: ChangePayload<'_>, task: &Task) -> Option<Announcement> {
    let text = payload_text(payload, task)?;
    Some(Announcement {
        task_id: *task.id.as_uuid(),
        text,
    })
}

fn payload_text(mut payload: ChangePayload<'_>, task: &Task) -> Option<String> {
    let mut text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    payload.complete = false;
    payload.result = None;
    payload.error = Cow::Borrowed("");
    text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    payload.description = Cow::Borrowed("");
    payload.labels = Cow::Owned(BTreeMap::new());
    if let Some(progress) = payload.progress.as_mut() {
        progress.message = Cow::Borrowed("");
    }
    text = encode_payload(&payload, task.id)?;
    if text.len() <= MAX_PAYLOAD_BYTES {
        return Some(text);
    }
    tracing::warn!(
        task_id = %task.id,
        bytes = text.len(),
        "a change is too large to announce even without its large fields; other replicas \
         will not hear of it"
    );
    None
}

pub(super) fn encode_payload(payload: &ChangePayload<'_>, id: TaskId) -> Option<String> {
    match serde_json::to_string(payload) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::warn!(task_id = %id, %error, "a change cannot be encoded; not announced");
            None
        }
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

pub(super) fn decode_change(text: &str) -> Result<Change, String> {
    let payload: ChangePayload<'_> =
        serde_json::from_str(text).map_err(|error| format!("not a change: {error}"))?;
    payload.into_change()
}

/// Nanoseconds since the Unix epoch (negative before it).
fn nanos(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn from_nanos(value: i128) -> SystemTime {
    let magnitude = value.unsigned_abs();
    let seconds = u64::try_from(magnitude / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let subsec = u32::try_from(magnitude % 1_000_000_000).unwrap_or(0);
    let duration = Duration::new(seconds, subsec);
    if value >= 0 {
        UNIX_EPOCH.checked_add(duration).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(duration).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::task::NewTask;

    fn task(name: &str) -> Task {
        Task::new(
            TaskId::generate(),
            NewTask {
                tenant: Default::default(),
                name: name.to_owned(),
                description: format!("the {name} task"),
                kind: "echo".to_owned(),
                data: Some(Arc::new(json!({"name": name, "n": 1}))),
                timeout_seconds: 60,
                labels: BTreeMap::new(),
                request_id: None,
                scheduling: Default::default(),
                trace_context: Default::default(),
            },
            SystemTime::now(),
        )
    }

    /// A task as a notification carries it: without `data` nor the trace
    /// context.
    fn without_data(task: &Task) -> Task {
        let mut task = task.clone();
        task.data = None;
        task.trace_context = TraceContext::default();
        task
    }

    #[test]
    fn payloads_fit_a_notification_and_read_back_as_published() {
        let mut task = task("payload");
        task.created_at = SystemTime::now();
        task.error = "a\u{0}b \"quoted\"".to_owned();
        task.progress = Some(Progress {
            percent: 5,
            message: "π".to_owned(),
        });
        task.labels = BTreeMap::from([("team".to_owned(), "ä".to_owned())]);
        task.request_id = Some("key".to_owned());
        task.result = Some(Arc::new(json!({"text": "c\u{0}d"})));
        task.trace_context = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: "vendor=value".to_owned(),
        };
        let text = change_payload("n1", &task).expect("fits").text;
        let change = decode_change(&text).expect("decodes");
        assert_eq!(change.origin, "n1");
        assert!(change.complete);
        assert_eq!(change.task, without_data(&task));

        // Too large with its result: result and error are left out.
        task.result = Some(Arc::new(json!("x".repeat(8_000))));
        let text = change_payload("n1", &task).expect("fits").text;
        assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let change = decode_change(&text).expect("decodes");
        assert!(!change.complete);
        let mut expected = without_data(&task);
        expected.result = None;
        expected.error = String::new();
        assert_eq!(change.task, expected);

        // Too large without them too: the large free texts go as well.
        task.description = "\u{1F600}".repeat(4096);
        task.labels = (0..64)
            .map(|index| (format!("key{index}"), "v".repeat(256)))
            .collect();
        let text = change_payload("n1", &task).expect("fits").text;
        assert!(text.len() <= MAX_PAYLOAD_BYTES);
        let change = decode_change(&text).expect("decodes");
        assert!(!change.complete);
        assert_eq!(change.task.status, task.status);
        assert_eq!(change.task.revision, task.revision);
        assert_eq!(change.task.description, "");

        assert!(decode_change("{\"origin\": 1}").is_err());
        assert!(decode_change("not json").is_err());
    }

    #[test]
    fn a_logged_change_reads_back_with_its_position_and_a_delete_as_such() {
        let task = task("logged");
        let text = deleted_payload("n1", &task).expect("fits").text;
        // As the statement that records it puts the position in front.
        let logged = format!("{{\"position\":42,{}", &text[1..]);
        let change = decode_change(&logged).expect("decodes");
        assert_eq!((change.position, change.deleted), (Some(42), true));
        assert_eq!(change.task, without_data(&task));
        let plain = change_payload("n1", &task).expect("fits").text;
        let change = decode_change(&plain).expect("decodes");
        assert_eq!((change.position, change.deleted), (None, false));
    }

    #[test]
    fn times_survive_as_nanoseconds() {
        for time in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(5, 1),
        ] {
            assert_eq!(from_nanos(nanos(time)), time);
        }
    }
}
