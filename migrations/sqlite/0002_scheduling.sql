-- Scheduling (v1.1): priority, run_after, queue timeout and the retry policy
-- each task was created with, and its retry state. Existing rows get what a
-- task created without these fields has: priority 0, no delay, no queue
-- timeout, one run without retry. Times are microseconds since the Unix
-- epoch, as in the other columns.
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN run_after INTEGER;
ALTER TABLE tasks ADD COLUMN queue_timeout_seconds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN initial_backoff_us INTEGER NOT NULL DEFAULT 1000000;
ALTER TABLE tasks ADD COLUMN max_backoff_us INTEGER NOT NULL DEFAULT 300000000;
ALTER TABLE tasks ADD COLUMN backoff_multiplier REAL NOT NULL DEFAULT 2.0;
-- When the back-off after the last failed run ends.
ALTER TABLE tasks ADD COLUMN retry_at INTEGER;
ALTER TABLE tasks ADD COLUMN failed_runs INTEGER NOT NULL DEFAULT 0;
-- Runs in a row cut short by a server that died or handed the task over.
ALTER TABLE tasks ADD COLUMN cut_short_runs INTEGER NOT NULL DEFAULT 0;
