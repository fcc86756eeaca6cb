-- kiln daemon state, version 3: finding a ref's builds quickly (status badges).
CREATE INDEX job_refs_ref ON job_refs (git_ref, job_id);
