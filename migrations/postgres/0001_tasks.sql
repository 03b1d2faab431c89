-- One row per task, shared by every replica. Timestamps are microseconds
-- since the Unix epoch, as in the SQLite store; data, result and labels are
-- JSON text rather than jsonb, because jsonb refuses \u0000 and must come
-- back exactly as sent. lease_until uses the database clock, so replicas
-- with skewed clocks still agree on whose lease has run out.
CREATE TABLE tasks (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT,
    result TEXT,
    error TEXT NOT NULL,
    timeout_seconds BIGINT NOT NULL,
    labels TEXT NOT NULL,
    progress_percent BIGINT,
    progress_message TEXT,
    attempt BIGINT NOT NULL,
    node TEXT NOT NULL,
    revision BIGINT NOT NULL,
    request_id TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    completed_at BIGINT,
    lease_until TIMESTAMPTZ
);

-- Claiming walks pending tasks in id (= FIFO) order.
CREATE INDEX tasks_pending_fifo ON tasks (id) WHERE status = 'pending';
-- Takeover looks for running tasks whose lease ran out.
CREATE INDEX tasks_running_lease ON tasks (lease_until) WHERE status = 'running';
-- Retention deletes the oldest finished tasks.
CREATE INDEX tasks_finished ON tasks (completed_at) WHERE completed_at IS NOT NULL;
