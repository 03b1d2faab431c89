-- Every write of a task (its insert, its claim, the end of its run) changes
-- its status, so none is a HOT update: each new row version gets an entry
-- in every index whose predicate it meets, and the entries of versions that
-- are gone stay until the table is vacuumed (autovacuum comes at most once
-- a minute). Three indexes cost more than they gave:
--
-- * The UNIQUE constraint on request_id indexed every version, NULL
--   included, though only tasks created with a request_id need the rule.
--   A partial unique index keeps it (ON CONFLICT and the lookups by
--   request_id use it) without the entries.
-- * tasks_pending_fifo duplicated what tasks_ready (ready tasks) and
--   tasks_due (delayed ones) hold; pending tasks are counted through those.
-- * tasks_running_lease (WHERE status = 'running') matched any query on
--   running rows, so the planner, taking it for a dozen rows, read it whole
--   to find the few rows a replica ends or renews by id: every entry left by
--   every run since the last vacuum, 15 000 at a time in task-bench. Its
--   replacements serve only the take-over walks, whose conditions imply
--   their predicates; a lookup by status alone cannot use them.
ALTER TABLE tasks DROP CONSTRAINT tasks_request_id_key;
CREATE UNIQUE INDEX tasks_request_id ON tasks (request_id) WHERE request_id IS NOT NULL;
DROP INDEX tasks_pending_fifo;
DROP INDEX tasks_running_lease;
-- Runs whose lease ran out, in lease order.
CREATE INDEX tasks_lease_expiry ON tasks (lease_until)
    WHERE status = 'running' AND lease_until IS NOT NULL;
-- Running rows that never had a lease (stored running by an insert).
CREATE INDEX tasks_never_leased ON tasks (id)
    WHERE status = 'running' AND lease_until IS NULL;

-- A queue table churns: every task leaves two or three dead row versions
-- and their index entries, which claims walk past until a vacuum removes
-- them. By default autovacuum waits for 20 % of the table to be dead, which
-- for a table keeping a million finished tasks is 600 000 versions; here it
-- vacuums after 10 000 whatever the size (it still looks at most once per
-- autovacuum_naptime), and analyzes as often, so plans see today's rows.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
