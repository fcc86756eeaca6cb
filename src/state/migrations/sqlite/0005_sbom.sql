-- kiln daemon state, version 5: what is inside. An artifact's SBOM in brief (JSON: its
-- referrer, digest, package and file counts, the first packages), and the SPDX document
-- itself, so any host of a farm serves it from the dashboard without reaching the registry.
ALTER TABLE artifacts ADD COLUMN sbom TEXT;
CREATE TABLE sboms (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,                     -- the artifact
    digest      TEXT NOT NULL,                     -- sha256 of body
    body        TEXT NOT NULL,                     -- the SPDX 2.3 JSON document
    PRIMARY KEY (job_id, name)
);
