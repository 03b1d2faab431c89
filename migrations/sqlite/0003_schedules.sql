-- Schedules (v1.1): tasks created on a calendar. One row per schedule.
-- cron and time_zone are the text the client gave, parsed again when read.
-- template is the task each firing creates, as JSON text (name,
-- description, kind, data exactly as sent, \u0000 included, timeout,
-- labels, scheduling with times in microseconds). overlap is 'skip' or
-- 'allow'. Times are microseconds since the Unix epoch, as in tasks; the
-- ids are UUIDs as 16 bytes, so byte order is creation order.
CREATE TABLE schedules (
    id BLOB NOT NULL PRIMARY KEY,
    cron TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    template TEXT NOT NULL,
    paused INTEGER NOT NULL,
    overlap TEXT NOT NULL CHECK (overlap IN ('skip', 'allow')),
    next_fire_at INTEGER,
    last_fire_at INTEGER,
    last_task_id BLOB,
    created_at INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
