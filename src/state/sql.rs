//! The SQL the two state engines share. SQLite (one host) and PostgreSQL (a farm) run the
//! same statements, written once with `?` placeholders; each engine's store rewrites them for
//! its dialect (`q`), supplies the time (`now`), its row-locking clause for claims
//! (`SKIP_LOCKED`) and its own consistency check (`check`), then expands [`sql_store!`].
//!
//! Portable SQL only: `ON CONFLICT`, `RETURNING`, partial unique indexes, `CASE`; no
//! `rowid`, no two-argument `max`.

use super::*;

/// Retries of a failed status send are spaced at most this far apart.
pub const MAX_STATUS_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

/// Milliseconds of a duration, for the state's Unix-millisecond times.
pub(super) fn ms(d: std::time::Duration) -> i64 {
    d.as_millis() as i64
}

pub(super) fn state_of(s: &str) -> Result<BuildState> {
    BuildState::parse(s).ok_or_else(|| StateError::Corrupt {
        what: "build state",
        value: s.to_owned(),
    })
}

pub(super) const JOB_COLUMNS: &str = "id, repo, commit_sha, recipe, git_ref, state, host, attempts, \
                           queued_at, started_at, finished_at, error, subject";

/// Record a ref's head (binds: repo, recipe, git_ref, commit, time).
pub(super) const UPSERT_HEAD: &str = "INSERT INTO heads (repo, recipe, git_ref, commit_sha, updated_at) \
     VALUES (?, ?, ?, ?, ?) ON CONFLICT (repo, recipe, git_ref) DO UPDATE \
     SET commit_sha = excluded.commit_sha, updated_at = excluded.updated_at";

/// `WHERE` clause pieces that hold only while `lease` does.
pub(super) const FENCED: &str = "id = ? AND owner = ? AND fence = ? AND state = 'running'";

/// The [`JobStore`] implementation over an engine's pool: `$store` has a `pool` of `$db`, and
/// the inherent `q`, `now`, `check`, `SKIP_LOCKED` and `FOR_SHARE`.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        impl $store {
            async fn artifacts_of(&self, ids: &[String]) -> Result<Vec<(String, ArtifactRow)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT job_id, name, kind, digest, size, media_type, pushed_to, provenance \
                     FROM artifacts WHERE job_id IN (",
                );
                let mut sep = q.separated(", ");
                for id in ids {
                    sep.push_bind(id);
                }
                q.push(") ORDER BY job_id, name");
                let rows = q.build().fetch_all(&self.pool).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        (
                            r.get::<String, _>("job_id"),
                            ArtifactRow {
                                name: r.get("name"),
                                kind: r.get("kind"),
                                digest: r.get("digest"),
                                size: r.get::<i64, _>("size") as u64,
                                media_type: r.get("media_type"),
                                pushed_to: r.get("pushed_to"),
                                provenance: r.get("provenance"),
                            },
                        )
                    })
                    .collect())
            }

            async fn insert_status(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                build_id: &str,
                s: &NewStatus,
                terminal: bool,
            ) -> Result<bool> {
                Ok(sqlx::query(
                    &self.q("INSERT INTO statuses (job_id, repo, commit_sha, context, state, description, \
                     target_url, terminal, created_at) \
                     SELECT id, repo, commit_sha, ?, ?, ?, ?, ?, ? FROM jobs WHERE id = ? \
                     ON CONFLICT DO NOTHING"),
                )
                .bind(&s.context)
                .bind(&s.state)
                .bind(&s.description)
                .bind(&s.target_url)
                .bind(terminal as i64)
                .bind(self.now())
                .bind(build_id)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1)
            }
        }

        fn build_row(r: &$row) -> Result<BuildRow> {
            Ok(BuildRow {
                id: r.get("id"),
                repo: r.get("repo"),
                git_ref: r.get("git_ref"),
                commit: r.get("commit_sha"),
                recipe: r.get("recipe"),
                state: state_of(r.get::<&str, _>("state"))?,
                host: r.get("host"),
                attempts: r.get::<i64, _>("attempts") as u32,
                queued_at: r.get("queued_at"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
                error: r.get("error"),
                subject: r.get("subject"),
                artifacts: Vec::new(),
            })
        }

        #[async_trait::async_trait]
        impl JobStore for $store {
            async fn enqueue(&self, job: &NewJob) -> Result<Enqueued> {
                let mut tx = self.pool.begin().await?;
                let id = self.ids.next();
                let created = sqlx::query(
                    &self.q("INSERT INTO jobs (id, repo, commit_sha, recipe, git_ref, queued_at) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (repo, commit_sha, recipe) DO NOTHING"),
                )
                .bind(&id)
                .bind(&job.repo)
                .bind(&job.commit)
                .bind(&job.recipe)
                .bind(&job.git_ref)
                .bind(self.now())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                let row = sqlx::query(
                    &self.q("SELECT id, state FROM jobs WHERE repo = ? AND commit_sha = ? AND recipe = ?"),
                )
                .bind(&job.repo)
                .bind(&job.commit)
                .bind(&job.recipe)
                .fetch_one(&mut *tx)
                .await?;
                let build_id: String = row.get("id");
                let state = state_of(row.get::<&str, _>("state"))?;
                // A ref that comes back to a commit (a branch reset to an earlier build) must have its
                // tags moved again: it is untagged until they are.
                let ref_added = sqlx::query(
                    &self.q("INSERT INTO job_refs (job_id, git_ref) VALUES (?, ?) \
                     ON CONFLICT (job_id, git_ref) DO UPDATE SET tagged = 0"),
                )
                .bind(&build_id)
                .bind(&job.git_ref)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                sqlx::query(
                    &self.q(UPSERT_HEAD),
                )
                .bind(&job.repo)
                .bind(&job.recipe)
                .bind(&job.git_ref)
                .bind(&job.commit)
                .bind(self.now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Enqueued {
                    build_id,
                    created,
                    ref_added,
                    state,
                })
            }

            async fn head(&self, repo: &str, recipe: &str, git_ref: &str) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    &self.q("SELECT commit_sha FROM heads WHERE repo = ? AND recipe = ? AND git_ref = ?"),
                )
                .bind(repo)
                .bind(recipe)
                .bind(git_ref)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn set_head(&self, repo: &str, recipe: &str, git_ref: &str, commit: &str) -> Result<()> {
                sqlx::query(
                    &self.q(UPSERT_HEAD),
                )
                .bind(repo)
                .bind(recipe)
                .bind(git_ref)
                .bind(commit)
                .bind(self.now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn status_contexts(&self, build_id: &str) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    &self.q("SELECT DISTINCT context FROM statuses WHERE job_id = ? ORDER BY context"),
                )
                .bind(build_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn etag(&self, key: &str) -> Result<Option<(String, String)>> {
                Ok(sqlx::query(&self.q("SELECT etag, body FROM etags WHERE key = ?"))
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| (r.get("etag"), r.get("body"))))
            }

            async fn set_etag(&self, key: &str, etag: &str, body: &str) -> Result<()> {
                sqlx::query(
                    &self.q("INSERT INTO etags (key, etag, body, updated_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, body = excluded.body, \
                     updated_at = excluded.updated_at"),
                )
                .bind(key)
                .bind(etag)
                .bind(body)
                .bind(self.now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn record_delivery(&self, id: &str) -> Result<bool> {
                let now = self.now();
                // Deliveries older than a week cannot be replayed usefully; forget them.
                sqlx::query(&self.q("DELETE FROM deliveries WHERE received_at < ?"))
                    .bind(now - 7 * 24 * 3600 * 1000)
                    .execute(&self.pool)
                    .await?;
                Ok(sqlx::query(
                    &self.q("INSERT INTO deliveries (id, received_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"),
                )
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn claim(&self, host: &str, lease: Duration) -> Result<Option<Claim>> {
                let now = self.now();
                let row = sqlx::query(
                    &self.q(&format!("UPDATE jobs SET state = 'running', owner = ?1, host = ?1, fence = fence + 1, \
                         lease_until = ?2, attempts = attempts + 1, started_at = ?3, finished_at = NULL, \
                         cancel_requested = 0 \
                     WHERE id = ( \
                         SELECT j.id FROM jobs j \
                         WHERE (j.state = 'queued' AND j.run_after <= ?3) \
                            OR (j.state = 'running' AND j.lease_until < ?3) \
                         ORDER BY (SELECT count(*) FROM jobs r WHERE r.repo = j.repo \
                                   AND r.state = 'running' AND r.lease_until >= ?3), \
                                  j.queued_at, j.id \
                         LIMIT 1 {}) \
                     RETURNING id, repo, commit_sha, recipe, git_ref, fence, attempts, runs_from", $store::SKIP_LOCKED)),
                )
                .bind(host)
                .bind(now + ms(lease))
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| Claim {
                    lease: Lease {
                        build_id: r.get("id"),
                        owner: host.to_owned(),
                        fence: r.get("fence"),
                    },
                    repo: r.get("repo"),
                    commit: r.get("commit_sha"),
                    recipe: r.get("recipe"),
                    git_ref: r.get("git_ref"),
                    attempt: r.get::<i64, _>("attempts") as u32,
                    runs_from: r.get::<i64, _>("runs_from") as u32,
                }))
            }

            async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Renewal> {
                let now = self.now();
                let row = sqlx::query(&self.q(&format!(
                    "UPDATE jobs SET lease_until = ? WHERE {FENCED} AND lease_until >= ? \
                     RETURNING cancel_requested"
                )))
                .bind(now + ms(duration))
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    None => Renewal::Lost,
                    Some(r) if r.get::<i64, _>("cancel_requested") != 0 => Renewal::CancelRequested,
                    Some(_) => Renewal::Held,
                })
            }

            async fn holds(&self, lease: &Lease, margin: Duration) -> Result<bool> {
                let n: i64 = sqlx::query_scalar(&self.q(&format!(
                    "SELECT count(*) FROM jobs WHERE {FENCED} AND lease_until > ?"
                )))
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .bind(self.now() + ms(margin))
                .fetch_one(&self.pool)
                .await?;
                Ok(n == 1)
            }

            async fn release(&self, lease: &Lease) -> Result<()> {
                sqlx::query(&self.q(&format!(
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, run_after = 0, \
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE {FENCED}"
                )))
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn retry_later(&self, lease: &Lease, error: &str, delay: Duration) -> Result<bool> {
                Ok(sqlx::query(&self.q(&format!(
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, run_after = ?, \
                     error = ? WHERE {FENCED}"
                )))
                .bind(self.now() + ms(delay))
                .bind(error)
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn requeue_host(&self, host: &str) -> Result<u64> {
                let mut tx = self.pool.begin().await?;
                let n = sqlx::query(
                    &self.q("UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, run_after = 0 \
                     WHERE state = 'running' AND owner = ?"),
                )
                .bind(host)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // Statuses this host's dead sender held: claimable now, and `claims` keeps the
                // count so the next sender looks on GitHub before sending again.
                sqlx::query(
                    &self.q("UPDATE statuses SET claimed_by = NULL, claimed_until = NULL \
                     WHERE sent_at IS NULL AND claimed_by = ?"),
                )
                .bind(host)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn finish(&self, lease: &Lease, outcome: &Outcome) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let now = self.now();
                let done = sqlx::query(&self.q(&format!(
                    "UPDATE jobs SET state = ?, error = ?, finished_at = ?, owner = NULL, \
                     lease_until = NULL WHERE {FENCED}"
                )))
                .bind(outcome.state.as_str())
                .bind(&outcome.error)
                .bind(now)
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !done {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for a in &outcome.artifacts {
                    sqlx::query(
                        &self.q("INSERT INTO artifacts (job_id, name, kind, digest, size, media_type, pushed_to, \
                         provenance) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, name) DO UPDATE \
                         SET kind = excluded.kind, digest = excluded.digest, size = excluded.size, \
                         media_type = excluded.media_type, pushed_to = excluded.pushed_to, \
                         provenance = excluded.provenance"),
                    )
                    .bind(&lease.build_id)
                    .bind(&a.name)
                    .bind(&a.kind)
                    .bind(&a.digest)
                    .bind(a.size as i64)
                    .bind(&a.media_type)
                    .bind(&a.pushed_to)
                    .bind(&a.provenance)
                    .execute(&mut *tx)
                    .await?;
                }
                for r in &outcome.tagged_refs {
                    sqlx::query(&self.q("UPDATE job_refs SET tagged = 1 WHERE job_id = ? AND git_ref = ?"))
                        .bind(&lease.build_id)
                        .bind(r)
                        .execute(&mut *tx)
                        .await?;
                }
                for s in &outcome.statuses {
                    self.insert_status(&mut tx, &lease.build_id, s, true).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn cancel(&self, build_id: &str) -> Result<bool> {
                let now = self.now();
                let queued = sqlx::query(
                    &self.q("UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'cancelled' \
                     WHERE id = ? AND state = 'queued'"),
                )
                .bind(now)
                .bind(build_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
                let running =
                    sqlx::query(&self.q("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'"))
                        .bind(build_id)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                Ok(queued + running > 0)
            }

            async fn rebuild(&self, build_id: &str) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let queued = sqlx::query(&self.q(
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, run_after = 0, \
                     queued_at = ?, started_at = NULL, finished_at = NULL, host = NULL, error = NULL, \
                     cancel_requested = 0, runs_from = attempts \
                     WHERE id = ? AND state IN ('success', 'failure', 'error', 'cancelled')",
                ))
                .bind(self.now())
                .bind(build_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !queued {
                    tx.rollback().await?;
                    return Ok(false);
                }
                // The new run publishes its own artifacts and sends its own final statuses.
                sqlx::query(&self.q("DELETE FROM artifacts WHERE job_id = ?"))
                    .bind(build_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&self.q("UPDATE statuses SET terminal = 0 WHERE job_id = ? AND terminal = 1"))
                    .bind(build_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn set_subject(&self, lease: &Lease, subject: &str) -> Result<()> {
                sqlx::query(&self.q(&format!("UPDATE jobs SET subject = ? WHERE {FENCED}")))
                    .bind(subject)
                    .bind(&lease.build_id)
                    .bind(&lease.owner)
                    .bind(lease.fence)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn append_log(&self, lease: &Lease, first_line: u64, lines: &[String]) -> Result<bool> {
                if lines.is_empty() {
                    return Ok(true);
                }
                Ok(sqlx::query(&self.q(&format!(
                    "INSERT INTO log_chunks (job_id, first_line, lines, body) \
                     SELECT id, ?, ?, ? FROM jobs WHERE {FENCED} {} ON CONFLICT DO NOTHING",
                    $store::FOR_SHARE
                )))
                .bind(first_line as i64)
                .bind(lines.len() as i64)
                .bind(lines.join("\n"))
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn log_end(&self, build_id: &str) -> Result<u64> {
                let end: Option<i64> = sqlx::query_scalar(&self.q(
                    "SELECT max(first_line + lines) FROM log_chunks WHERE job_id = ?",
                ))
                .bind(build_id)
                .fetch_one(&self.pool)
                .await?;
                Ok(end.unwrap_or(1) as u64)
            }

            async fn log_lines(&self, build_id: &str, after: u64, limit: u32) -> Result<Vec<(u64, String)>> {
                let after = after as i64;
                // Runs are contiguous: the one holding line `after + 1` starts at or before
                // it, so the scan starts there (the primary key), a batch of runs at a time,
                // and stops once it has `limit` lines.
                let mut from: i64 = sqlx::query_scalar::<_, Option<i64>>(&self.q(
                    "SELECT max(first_line) FROM log_chunks WHERE job_id = ? AND first_line <= ?",
                ))
                .bind(build_id)
                .bind(after + 1)
                .fetch_one(&self.pool)
                .await?
                .unwrap_or(0);
                let mut out = Vec::new();
                while out.len() < limit as usize {
                    let rows = sqlx::query(&self.q(
                        "SELECT first_line, body FROM log_chunks WHERE job_id = ? AND first_line >= ? \
                         AND first_line + lines > ? ORDER BY first_line LIMIT 64",
                    ))
                    .bind(build_id)
                    .bind(from)
                    .bind(after)
                    .fetch_all(&self.pool)
                    .await?;
                    let Some(last) = rows.last() else { break };
                    from = last.get::<i64, _>("first_line") + 1;
                    let batch = rows.len();
                    for r in rows {
                        let first = r.get::<i64, _>("first_line");
                        for (i, line) in r.get::<&str, _>("body").split('\n').enumerate() {
                            let n = first + i as i64;
                            if n > after {
                                out.push((n as u64, line.to_owned()));
                            }
                        }
                        if out.len() >= limit as usize {
                            break;
                        }
                    }
                    if batch < 64 {
                        break;
                    }
                }
                Ok(out)
            }

            async fn stage_started(&self, lease: &Lease, attempt: u32, name: &str) -> Result<()> {
                sqlx::query(&self.q(&format!(
                    "INSERT INTO stages (job_id, attempt, name, started_at) \
                     SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE {FENCED}) \
                     ON CONFLICT (job_id, attempt, name) DO UPDATE SET started_at = excluded.started_at, \
                     finished_at = NULL, outcome = NULL, detail = NULL"
                )))
                .bind(&lease.build_id)
                .bind(attempt as i64)
                .bind(name)
                .bind(self.now())
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn stage_finished(
                &self,
                lease: &Lease,
                attempt: u32,
                name: &str,
                outcome: &str,
                detail: Option<&str>,
            ) -> Result<()> {
                sqlx::query(&self.q(&format!(
                    "UPDATE stages SET finished_at = ?, outcome = ?, detail = ? \
                     WHERE job_id = ? AND attempt = ? AND name = ? \
                     AND EXISTS (SELECT 1 FROM jobs WHERE {FENCED})"
                )))
                .bind(self.now())
                .bind(outcome)
                .bind(detail)
                .bind(&lease.build_id)
                .bind(attempt as i64)
                .bind(name)
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn step(&self, lease: &Lease, attempt: u32, step: &StepRow) -> Result<()> {
                sqlx::query(&self.q(&format!(
                    "INSERT INTO steps (job_id, attempt, idx, command, exit_code, millis) \
                     SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE {FENCED}) \
                     ON CONFLICT (job_id, attempt, idx) DO UPDATE SET command = excluded.command, \
                     exit_code = excluded.exit_code, millis = excluded.millis"
                )))
                .bind(&lease.build_id)
                .bind(attempt as i64)
                .bind(step.index as i64)
                .bind(&step.command)
                .bind(step.exit_code)
                .bind(step.millis.map(|m| m as i64))
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn untagged_refs(&self, limit: u32) -> Result<Vec<UntaggedRef>> {
                let rows = sqlx::query(
                    &self.q("SELECT r.job_id, j.repo, j.commit_sha, r.git_ref FROM job_refs r \
                     JOIN jobs j ON j.id = r.job_id WHERE r.tagged = 0 AND j.state = 'success' \
                     ORDER BY j.finished_at LIMIT ?"),
                )
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| UntaggedRef {
                        build_id: r.get("job_id"),
                        repo: r.get("repo"),
                        commit: r.get("commit_sha"),
                        git_ref: r.get("git_ref"),
                    })
                    .collect())
            }

            async fn mark_tagged(&self, build_id: &str, git_ref: &str) -> Result<()> {
                sqlx::query(&self.q("UPDATE job_refs SET tagged = 1 WHERE job_id = ? AND git_ref = ?"))
                    .bind(build_id)
                    .bind(git_ref)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn untag_head(&self, repo: &str, recipe: &str, git_ref: &str) -> Result<()> {
                sqlx::query(&self.q(
                    "UPDATE job_refs SET tagged = 0 WHERE git_ref = ? AND job_id IN ( \
                         SELECT j.id FROM jobs j JOIN heads h ON h.repo = j.repo \
                         AND h.recipe = j.recipe AND h.commit_sha = j.commit_sha \
                         WHERE h.repo = ? AND h.recipe = ? AND h.git_ref = ? AND j.state = 'success')",
                ))
                .bind(git_ref)
                .bind(repo)
                .bind(recipe)
                .bind(git_ref)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn add_status(&self, lease: &Lease, status: &NewStatus) -> Result<bool> {
                // One statement: the fence check and the insert cannot be split by another writer.
                Ok(sqlx::query(&self.q(&format!(
                    "INSERT INTO statuses (job_id, repo, commit_sha, context, state, description, \
                     target_url, terminal, created_at) \
                     SELECT id, repo, commit_sha, ?, ?, ?, ?, 0, ? FROM jobs WHERE {FENCED}"
                )))
                .bind(&status.context)
                .bind(&status.state)
                .bind(&status.description)
                .bind(&status.target_url)
                .bind(self.now())
                .bind(&lease.build_id)
                .bind(&lease.owner)
                .bind(lease.fence)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn claim_statuses(
                &self,
                host: &str,
                ttl: Duration,
                limit: u32,
            ) -> Result<Vec<StatusRow>> {
                let now = self.now();
                // Rows another host is claiming right now are skipped (PostgreSQL), and the
                // claimable condition is checked again on the row as updated, so two hosts
                // claiming at once never both get a status.
                let rows = sqlx::query(
                    &self.q(&format!("UPDATE statuses SET claimed_by = ?1, claimed_until = ?2, claims = claims + 1 \
                     WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < ?3) AND id IN ( \
                         SELECT s.id FROM statuses s WHERE s.sent_at IS NULL \
                         AND (s.claimed_until IS NULL OR s.claimed_until < ?3) \
                         AND NOT EXISTS (SELECT 1 FROM statuses e WHERE e.job_id = s.job_id \
                             AND e.context = s.context AND e.sent_at IS NULL AND e.id < s.id) \
                         ORDER BY s.id LIMIT ?4 {}) \
                     RETURNING id, job_id, repo, commit_sha, context, state, description, target_url, \
                               attempts, claims", $store::SKIP_LOCKED)),
                )
                .bind(host)
                .bind(now + ms(ttl))
                .bind(now)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                let mut out: Vec<StatusRow> = rows
                    .iter()
                    .map(|r| StatusRow {
                        id: r.get("id"),
                        build_id: r.get("job_id"),
                        repo: r.get("repo"),
                        commit: r.get("commit_sha"),
                        status: NewStatus {
                            context: r.get("context"),
                            state: r.get("state"),
                            description: r.get("description"),
                            target_url: r.get("target_url"),
                        },
                        attempts: r.get::<i64, _>("attempts") as u32,
                        claims: r.get::<i64, _>("claims") as u32,
                    })
                    .collect();
                out.sort_by_key(|s| s.id);
                Ok(out)
            }

            async fn status_sent(&self, id: i64, ok: bool, retry_in: Duration) -> Result<()> {
                let now = self.now();
                if ok {
                    sqlx::query(&self.q("UPDATE statuses SET sent_at = ?, attempts = attempts + 1 WHERE id = ?"))
                        .bind(now)
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                } else {
                    sqlx::query(
                        &self.q("UPDATE statuses SET claimed_until = ?, attempts = attempts + 1 WHERE id = ?"),
                    )
                    .bind(now + ms(retry_in.min(MAX_STATUS_RETRY)))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                }
                Ok(())
            }

            fn clock_ms(&self) -> i64 {
                self.now()
            }

            async fn heartbeat(
                &self,
                host: &str,
                instance: &str,
                version: &str,
                started_at: i64,
                running: u32,
            ) -> Result<()> {
                sqlx::query(&self.q(
                    "INSERT INTO hosts (id, instance, version, started_at, heartbeat_at, running) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
                     instance = excluded.instance, version = excluded.version, started_at = excluded.started_at, \
                     heartbeat_at = excluded.heartbeat_at, running = excluded.running, \
                     stopped_at = NULL",
                ))
                .bind(host)
                .bind(instance)
                .bind(version)
                .bind(started_at)
                .bind(self.now())
                .bind(running as i64)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn host_stopped(&self, host: &str) -> Result<()> {
                sqlx::query(&self.q("UPDATE hosts SET stopped_at = ?, running = 0 WHERE id = ?"))
                    .bind(self.now())
                    .bind(host)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn hosts(&self) -> Result<Vec<HostRow>> {
                let rows = sqlx::query(&self.q(
                    "SELECT id, instance, version, started_at, heartbeat_at, running, stopped_at \
                     FROM hosts ORDER BY id",
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| HostRow {
                        id: r.get("id"),
                        instance: r.get("instance"),
                        version: r.get("version"),
                        started_at: r.get("started_at"),
                        heartbeat_at: r.get("heartbeat_at"),
                        running: r.get::<i64, _>("running") as u32,
                        stopped_at: r.get("stopped_at"),
                    })
                    .collect())
            }

            async fn lead(&self, role: &str, host: &str, ttl: Duration) -> Result<bool> {
                let now = self.now();
                Ok(sqlx::query(&self.q(
                    "INSERT INTO leaders (role, holder, lease_until, term) VALUES (?, ?, ?, 1) \
                     ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, \
                     lease_until = excluded.lease_until, term = leaders.term + \
                     CASE WHEN leaders.holder = excluded.holder THEN 0 ELSE 1 END \
                     WHERE leaders.holder = excluded.holder OR leaders.lease_until < ?",
                ))
                .bind(role)
                .bind(host)
                .bind(now + ms(ttl))
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn resign(&self, role: &str, host: &str) -> Result<()> {
                sqlx::query(&self.q(
                    "UPDATE leaders SET lease_until = 0 WHERE role = ? AND holder = ?",
                ))
                .bind(role)
                .bind(host)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn builds(&self, q: &BuildQuery) -> Result<Vec<BuildRow>> {
                let mut b = sqlx::QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
                if let Some(r) = &q.repo {
                    b.push(" AND repo = ").push_bind(r);
                }
                if let Some(s) = q.state {
                    b.push(" AND state = ").push_bind(s.as_str());
                }
                if let Some(before) = &q.before {
                    b.push(" AND id < ").push_bind(before);
                }
                b.push(" ORDER BY id DESC LIMIT ")
                    .push_bind(q.limit.clamp(1, 1000) as i64);
                let rows = b.build().fetch_all(&self.pool).await?;
                let mut builds = rows.iter().map(build_row).collect::<Result<Vec<_>>>()?;
                let ids: Vec<String> = builds.iter().map(|b| b.id.clone()).collect();
                for (id, a) in self.artifacts_of(&ids).await? {
                    if let Some(b) = builds.iter_mut().find(|b| b.id == id) {
                        b.artifacts.push(a);
                    }
                }
                Ok(builds)
            }

            async fn build(&self, id: &str) -> Result<Option<BuildDetail>> {
                let Some(row) = sqlx::query(&self.q(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                let mut build = build_row(&row)?;
                build.artifacts = self.artifacts(id).await?;
                let refs =
                    sqlx::query_scalar(&self.q("SELECT git_ref FROM job_refs WHERE job_id = ? ORDER BY git_ref"))
                        .bind(id)
                        .fetch_all(&self.pool)
                        .await?;
                let stages = sqlx::query(
                    &self.q("SELECT attempt, name, started_at, finished_at, outcome, detail FROM stages \
                     WHERE job_id = ? ORDER BY attempt, started_at, CASE name WHEN 'source' THEN 0 WHEN 'run' THEN 1 \
                     WHEN 'pack' THEN 2 WHEN 'image' THEN 3 WHEN 'verify' THEN 4 WHEN 'publish' THEN 5 ELSE 6 END, name"),
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| StageRow {
                    attempt: r.get::<i64, _>("attempt") as u32,
                    name: r.get("name"),
                    started_at: r.get("started_at"),
                    finished_at: r.get("finished_at"),
                    outcome: r.get("outcome"),
                    detail: r.get("detail"),
                })
                .collect();
                let steps = sqlx::query(
                    &self.q("SELECT attempt, idx, command, exit_code, millis FROM steps WHERE job_id = ? \
                     ORDER BY attempt, idx"),
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| StepRow {
                    attempt: r.get::<i64, _>("attempt") as u32,
                    index: r.get::<i64, _>("idx") as u32,
                    command: r.get("command"),
                    exit_code: r.get("exit_code"),
                    millis: r.get::<Option<i64>, _>("millis").map(|m| m as u64),
                })
                .collect();
                Ok(Some(BuildDetail {
                    build,
                    refs,
                    stages,
                    steps,
                }))
            }

            async fn artifacts(&self, build_id: &str) -> Result<Vec<ArtifactRow>> {
                Ok(self
                    .artifacts_of(&[build_id.to_owned()])
                    .await?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect())
            }

            async fn build_state(&self, build_id: &str) -> Result<Option<BuildState>> {
                let state: Option<String> = sqlx::query_scalar(&self.q("SELECT state FROM jobs WHERE id = ?"))
                    .bind(build_id)
                    .fetch_optional(&self.pool)
                    .await?;
                state.map(|s| state_of(&s)).transpose()
            }

            async fn progress(&self, build_id: &str) -> Result<Option<(BuildState, u64)>> {
                let row = sqlx::query(&self.q(
                    "SELECT j.state, (SELECT max(c.first_line + c.lines) FROM log_chunks c \
                     WHERE c.job_id = j.id) AS log_end FROM jobs j WHERE j.id = ?",
                ))
                .bind(build_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    let end = r.get::<Option<i64>, _>("log_end").unwrap_or(1) as u64;
                    Ok((state_of(r.get::<&str, _>("state"))?, end))
                })
                .transpose()
            }

            async fn last_finished(
                &self,
                repo: &str,
                git_ref: &str,
            ) -> Result<Option<BuildState>> {
                let state: Option<String> = sqlx::query_scalar(&self.q(
                    "SELECT j.state FROM job_refs r JOIN jobs j ON j.id = r.job_id \
                     WHERE r.git_ref = ? AND j.repo = ? \
                     AND j.state IN ('success', 'failure', 'error') \
                     ORDER BY j.finished_at DESC, j.id DESC LIMIT 1",
                ))
                .bind(git_ref)
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?;
                state.map(|s| state_of(&s)).transpose()
            }

            async fn queue_depth(&self) -> Result<u64> {
                let n: i64 = sqlx::query_scalar(&self.q("SELECT count(*) FROM jobs WHERE state = 'queued'"))
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n as u64)
            }

            async fn integrity_check(&self) -> Result<String> {
                self.check().await
            }
        }
    };
}

pub(crate) use sql_store;
