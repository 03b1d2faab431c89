-- Schedules (v1.1): tasks created on a calendar, shared by every replica;
-- whichever replica locks a due row fires it, and moves next_fire_at on in
-- the same transaction, so each firing happens once. cron and time_zone are
-- the text the client gave, parsed again when read. template is the task
-- each firing creates, as JSON text rather than jsonb (jsonb refuses
-- \u0000, and data must come back exactly as sent). overlap is 'skip' or
-- 'allow'. Times are microseconds since the Unix epoch, as in tasks.
CREATE TABLE schedules (
    id UUID NOT NULL PRIMARY KEY,
    cron TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    template TEXT NOT NULL,
    paused BOOLEAN NOT NULL,
    overlap TEXT NOT NULL CHECK (overlap IN ('skip', 'allow')),
    next_fire_at BIGINT,
    last_fire_at BIGINT,
    last_task_id UUID,
    created_at BIGINT NOT NULL,
    revision BIGINT NOT NULL
);

-- What is due: the firing loop of every replica reads the earliest
-- next_fire_at of the schedules that are not paused.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused;
