-- kiln daemon state, version 4: the dashboard. Build logs live in the state, so any host of a
-- farm shows (and streams) any build's log; each row is a run of whole lines, numbered from 1
-- across all attempts. A commit's first line, for the build list. A rebuild runs a finished
-- job again: `runs_from` is the attempt count when it was asked for, so the crash-loop limit
-- counts this run's attempts only.
CREATE TABLE log_chunks (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_line  INTEGER NOT NULL,
    lines       INTEGER NOT NULL,
    body        TEXT NOT NULL,                     -- the lines, joined by newlines
    PRIMARY KEY (job_id, first_line)
);
ALTER TABLE jobs ADD COLUMN subject TEXT;
ALTER TABLE jobs ADD COLUMN runs_from INTEGER NOT NULL DEFAULT 0;
-- The build list, filtered by repo or state, newest (highest id) first.
CREATE INDEX jobs_repo_id ON jobs (repo, id);
CREATE INDEX jobs_state_id ON jobs (state, id);
