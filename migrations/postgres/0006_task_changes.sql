-- The change log behind WatchTasks on PostgreSQL: every change a replica
-- announces, numbered in commit order, so that a stream resumes on any
-- replica after the last change it sent, with nothing lost or repeated.
--
-- `position` is taken while the writing transaction holds the log's
-- advisory lock (taken at its last statements and held until it has
-- committed), so positions rise in commit order and a reader that sees a
-- position sees every smaller one that will ever exist. Positions may skip
-- numbers (a rolled-back transaction used some). `change` is the JSON the
-- change notification carries (the task without its data); `task_id` lets a
-- resumed stream read the data with it.
CREATE TABLE task_changes (
    position BIGSERIAL PRIMARY KEY,
    task_id UUID NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    change TEXT NOT NULL
);

-- One row: `instance` names this database's log in resume tokens (a token
-- from another database is refused rather than misread); `pruned_through`
-- is the last position let go: a token at or after it can resume, an older
-- one cannot. Changes are recorded only while `watched_until` is in the
-- future: a replica with WatchTasks streams keeps it there, so a cluster
-- nobody watches this way pays nothing per change.
CREATE TABLE task_changes_horizon (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    instance BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL DEFAULT 0,
    watched_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO task_changes_horizon (instance)
    VALUES (floor(random() * 9007199254740991)::bigint);

-- Pruning deletes from the log's old end all the time: vacuum it every
-- 10 000 dead rows, as the tasks table, not at 20 % of the table.
ALTER TABLE task_changes SET (
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_scale_factor = 0
);
