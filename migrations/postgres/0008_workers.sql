-- The remote workers (WorkerService) connected to each replica, so that
-- ListWorkers on any replica shows every one. Each replica rewrites its
-- own rows every second while it has workers; a row not refreshed for a
-- while belongs to a replica that is gone, and is neither listed nor kept.
-- Times are microseconds since the epoch, by the database's clock.
CREATE TABLE workers (
    id UUID PRIMARY KEY,
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    kinds TEXT[] NOT NULL,
    max_concurrent BIGINT NOT NULL,
    in_flight BIGINT NOT NULL,
    peer TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

CREATE INDEX workers_node ON workers (node);
