-- The W3C trace context each task was created in (traceparent, and
-- tracestate if any), so its runs join the create's trace after a restart.
-- Empty when the create was not traced; existing rows were not.
ALTER TABLE tasks ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN tracestate TEXT NOT NULL DEFAULT '';
