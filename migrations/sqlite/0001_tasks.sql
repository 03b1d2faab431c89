-- One row per task. Timestamps are microseconds since the Unix epoch; data,
-- result and labels are JSON text (exactly what the client sent, \u0000
-- included). The id is a UUID v7 as 16 bytes, so byte order is creation
-- order and listing walks the primary key.
CREATE TABLE tasks (
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
    request_id TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER
);
