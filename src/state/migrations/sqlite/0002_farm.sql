-- kiln daemon state, version 2: the farm. Each host records a heartbeat; one host at a time
-- holds a role (the GitHub poller) through a lease row. Times are Unix milliseconds.

CREATE TABLE hosts (
    id            TEXT PRIMARY KEY,                -- host_id
    instance      TEXT NOT NULL,                   -- its state directory's identity
    version       TEXT NOT NULL,                   -- the kiln version it runs
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL,
    running       BIGINT NOT NULL DEFAULT 0,       -- jobs it runs now
    stopped_at    BIGINT                           -- set by a clean stop
);

CREATE TABLE leaders (
    role         TEXT PRIMARY KEY,                 -- e.g. "poller"
    holder       TEXT NOT NULL,                    -- the host holding it
    lease_until  BIGINT NOT NULL,
    term         BIGINT NOT NULL                   -- grows whenever the holder changes
);
