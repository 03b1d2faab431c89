-- Scheduling (v1.1): priority, run_after, queue timeout and the retry policy
-- each task was created with, and its retry state. Existing rows get what a
-- task created without these fields has: priority 0, no delay, no queue
-- timeout, one run without retry. Times are microseconds since the Unix
-- epoch, as in the other columns.
ALTER TABLE tasks
    ADD COLUMN priority BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN run_after BIGINT,
    ADD COLUMN queue_timeout_seconds BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN max_attempts BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN initial_backoff_us BIGINT NOT NULL DEFAULT 1000000,
    ADD COLUMN max_backoff_us BIGINT NOT NULL DEFAULT 300000000,
    ADD COLUMN backoff_multiplier DOUBLE PRECISION NOT NULL DEFAULT 2.0,
    -- When the back-off after the last failed run ends.
    ADD COLUMN retry_at BIGINT,
    ADD COLUMN failed_runs BIGINT NOT NULL DEFAULT 0,
    -- Runs in a row cut short by a replica that died or handed it over.
    ADD COLUMN cut_short_runs BIGINT NOT NULL DEFAULT 0,
    -- Not task fields. due_at: while a waiting task's run_after (or the end
    -- of its back-off) is still ahead, when it becomes due; NULL once it is
    -- ready. Claims read only ready tasks, and first clear due_at of those
    -- now due, so thousands of delayed tasks cost an index range, not a
    -- scan. queue_deadline: when a waiting task that has a queue timeout
    -- has waited too long, for the sweep that fails it. Microseconds.
    ADD COLUMN due_at BIGINT,
    ADD COLUMN queue_deadline BIGINT;

-- Claims take the ready tasks of each kind by priority, then FIFO: one
-- short index walk per kind (kinds have their own limits), which never
-- passes a finished or a delayed row. (tasks_pending_fifo stays, for
-- counting what waits against the queue capacity.)
CREATE INDEX tasks_ready ON tasks (kind, priority DESC, id)
    WHERE status IN ('pending', 'retrying') AND due_at IS NULL;
-- What becomes due next.
CREATE INDEX tasks_due ON tasks (due_at)
    WHERE status IN ('pending', 'retrying') AND due_at IS NOT NULL;
-- Counting the retrying tasks, for the metrics.
CREATE INDEX tasks_retrying ON tasks (id) WHERE status = 'retrying';
-- What has waited too long.
CREATE INDEX tasks_queue_deadline ON tasks (queue_deadline)
    WHERE status IN ('pending', 'retrying') AND queue_deadline IS NOT NULL;
