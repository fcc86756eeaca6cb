-- kiln daemon state, version 6: build caches and per-step network. Whether a step ran with
-- the network (the dashboard marks it); and which repositories each host holds warm build
-- caches for, with how many builds it runs at once, so a claim can prefer a warm host that
-- has a free slot (cache_affinity).
ALTER TABLE steps ADD COLUMN network BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE warm_caches (
    host        TEXT NOT NULL,                     -- host_id
    repo        TEXT NOT NULL,                     -- the job's repo, as jobs.repo names it
    slots       BIGINT NOT NULL,                   -- the host's concurrency
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (host, repo)
);
