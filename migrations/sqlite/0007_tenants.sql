-- Tenants (security step 2): each task belongs to the tenant of the
-- principal that created it, '' for none. Existing rows were created
-- before tenants existed: they get '', so only principals without a tenant
-- see them.
--
-- A request_id becomes unique within its tenant. The old rule is a UNIQUE
-- column constraint, which SQLite cannot drop, so the table is rebuilt (as
-- SQLite's documentation for ALTER TABLE describes) with the same columns
-- plus tenant, and the rule as UNIQUE (tenant, request_id). The server
-- checks request_ids in memory; this keeps the file from ever holding two
-- tasks of one tenant with the same key.
CREATE TABLE tasks_with_tenant (
    id BLOB NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT,
    result TEXT,
    error TEXT NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    labels TEXT NOT NULL,
    progress_percent INTEGER,
    progress_message TEXT,
    attempt INTEGER NOT NULL,
    node TEXT NOT NULL,
    revision INTEGER NOT NULL,
    request_id TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    priority INTEGER NOT NULL DEFAULT 0,
    run_after INTEGER,
    queue_timeout_seconds INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    initial_backoff_us INTEGER NOT NULL DEFAULT 1000000,
    max_backoff_us INTEGER NOT NULL DEFAULT 300000000,
    backoff_multiplier REAL NOT NULL DEFAULT 2.0,
    retry_at INTEGER,
    failed_runs INTEGER NOT NULL DEFAULT 0,
    cut_short_runs INTEGER NOT NULL DEFAULT 0,
    traceparent TEXT NOT NULL DEFAULT '',
    tracestate TEXT NOT NULL DEFAULT '',
    tenant TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant, request_id)
);
INSERT INTO tasks_with_tenant (
    id, name, description, kind, status, data, result, error, timeout_seconds, labels,
    progress_percent, progress_message, attempt, node, revision, request_id, created_at,
    started_at, completed_at, priority, run_after, queue_timeout_seconds, max_attempts,
    initial_backoff_us, max_backoff_us, backoff_multiplier, retry_at, failed_runs,
    cut_short_runs, traceparent, tracestate)
SELECT
    id, name, description, kind, status, data, result, error, timeout_seconds, labels,
    progress_percent, progress_message, attempt, node, revision, request_id, created_at,
    started_at, completed_at, priority, run_after, queue_timeout_seconds, max_attempts,
    initial_backoff_us, max_backoff_us, backoff_multiplier, retry_at, failed_runs,
    cut_short_runs, traceparent, tracestate
FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_with_tenant RENAME TO tasks;

-- A schedule belongs to its creator's tenant too, and its firings create
-- tasks of that tenant. Existing schedules get '', as existing tasks.
ALTER TABLE schedules ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
