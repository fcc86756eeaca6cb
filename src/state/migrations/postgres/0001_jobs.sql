-- kiln daemon state, version 1: jobs (one per repo, commit and recipe), the refs that point
-- at them, their stages and steps, heads and ETags for polling, webhook deliveries, and the
-- commit-status outbox. Times are Unix milliseconds. The same schema as SQLite's, in
-- PostgreSQL types (whole numbers are BIGINT so both engines decode them alike).

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,                 -- the build id (a ULID)
    repo         TEXT NOT NULL,                    -- "owner/name" or a local path
    commit_sha   TEXT NOT NULL,
    recipe       TEXT NOT NULL,                    -- recipe path in the repo, or recipe_file
    git_ref      TEXT NOT NULL,                    -- the ref that first led to the commit
    state        TEXT NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'success', 'failure', 'error', 'cancelled')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    owner        TEXT,                             -- the host holding the lease
    fence        BIGINT NOT NULL DEFAULT 0,       -- grows on every claim
    lease_until  BIGINT,
    run_after    BIGINT NOT NULL DEFAULT 0,       -- retry backoff
    host         TEXT,                             -- the host of the latest attempt
    queued_at    BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    error        TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    UNIQUE (repo, commit_sha, recipe)
);
CREATE INDEX jobs_claimable ON jobs (state, run_after, queued_at);
CREATE INDEX jobs_newest ON jobs (queued_at DESC, id DESC);
CREATE INDEX jobs_repo ON jobs (repo, queued_at DESC);

CREATE TABLE job_refs (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    git_ref  TEXT NOT NULL,
    tagged   BIGINT NOT NULL DEFAULT 0,           -- its tags point at the artifacts
    PRIMARY KEY (job_id, git_ref)
);
CREATE INDEX job_refs_untagged ON job_refs (tagged) WHERE tagged = 0;

CREATE TABLE artifacts (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    media_type  TEXT NOT NULL,
    pushed_to   TEXT NOT NULL,
    provenance  TEXT,
    PRIMARY KEY (job_id, name)
);

CREATE TABLE stages (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    outcome      TEXT,                             -- ok, failed, cancelled, skipped
    detail       TEXT,
    PRIMARY KEY (job_id, attempt, name)
);

CREATE TABLE steps (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt    BIGINT NOT NULL,
    idx        BIGINT NOT NULL,
    command    TEXT NOT NULL,
    exit_code  BIGINT,
    millis     BIGINT,
    PRIMARY KEY (job_id, attempt, idx)
);

CREATE TABLE heads (
    repo        TEXT NOT NULL,
    recipe      TEXT NOT NULL,                     -- one [[repo]] entry: repo and recipe
    git_ref     TEXT NOT NULL,
    commit_sha  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, recipe, git_ref)
);

CREATE TABLE etags (
    key         TEXT PRIMARY KEY,                  -- token fingerprint, URL and Accept
    etag        TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE deliveries (
    id           TEXT PRIMARY KEY,                 -- X-GitHub-Delivery
    received_at  BIGINT NOT NULL
);

CREATE TABLE statuses (
    id             BIGSERIAL PRIMARY KEY,
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    repo           TEXT NOT NULL,
    commit_sha     TEXT NOT NULL,
    context        TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'success', 'failure', 'error')),
    description    TEXT NOT NULL,
    target_url     TEXT,
    terminal       BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    sent_at        BIGINT,
    claimed_by     TEXT,
    claimed_until  BIGINT,
    claims         BIGINT NOT NULL DEFAULT 0,    -- >1: an earlier sender may have sent it
    attempts       BIGINT NOT NULL DEFAULT 0
);
-- Exactly one terminal status per job and context, whoever tries to record a second.
CREATE UNIQUE INDEX statuses_one_terminal ON statuses (job_id, context) WHERE terminal = 1;
CREATE INDEX statuses_unsent ON statuses (sent_at, id) WHERE sent_at IS NULL;
