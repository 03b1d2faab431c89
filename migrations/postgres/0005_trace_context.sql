-- The W3C trace context each task was created in (traceparent, and
-- tracestate if any), so its runs join the create's trace on whichever
-- replica claims them. Empty when the create was not traced; existing rows
-- were not. A constant default: adding the columns rewrites no row.
ALTER TABLE tasks
    ADD COLUMN traceparent TEXT NOT NULL DEFAULT '',
    ADD COLUMN tracestate TEXT NOT NULL DEFAULT '';
