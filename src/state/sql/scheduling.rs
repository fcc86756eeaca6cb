//! The SQL of [`Scheduling`](crate::state::Scheduling): claims, leases and their fences, and how jobs end.

/// `impl Scheduling` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_scheduling {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Scheduling for $store {
            async fn claim_near(
                &self,
                host: &str,
                lease: Duration,
                affinity: Duration,
            ) -> Result<Option<Claim>> {
                let now = self.now();
                let row = sqlx::query(
                    &self.q(&format!("UPDATE jobs SET state = 'running', owner = ?1, host = ?1, fence = fence + 1, \
                         lease_until = ?2, attempts = attempts + 1, started_at = ?3, finished_at = NULL, \
                         cancel_requested = 0 \
                     WHERE id = ( \
                         SELECT j.id FROM jobs j \
                         WHERE ((j.state = 'queued' AND j.run_after <= ?3) \
                            OR (j.state = 'running' AND j.lease_until < ?3)) \
                         AND (?4 = 0 OR j.queued_at <= ?3 - ?4 \
                            OR EXISTS (SELECT 1 FROM warm_caches w WHERE w.host = ?1 AND w.repo = j.repo) \
                            OR NOT EXISTS (SELECT 1 FROM warm_caches w JOIN hosts h ON h.id = w.host \
                                WHERE w.repo = j.repo AND w.host <> ?1 \
                                AND h.stopped_at IS NULL AND h.heartbeat_at >= ?3 - ?5 \
                                AND (SELECT count(*) FROM jobs r WHERE r.host = w.host \
                                     AND r.state = 'running' AND r.lease_until >= ?3) < w.slots)) \
                         ORDER BY (SELECT count(*) FROM jobs r WHERE r.repo = j.repo \
                                   AND r.state = 'running' AND r.lease_until >= ?3), \
                                  CASE WHEN ?4 = 0 THEN 0 ELSE \
                                  (SELECT count(*) FROM warm_caches w WHERE w.host = ?1 AND w.repo = j.repo) END DESC, \
                                  CASE WHEN ?4 = 0 THEN 0 ELSE \
                                  (SELECT count(*) FROM warm_caches w JOIN hosts h ON h.id = w.host \
                                   WHERE w.repo = j.repo AND w.host <> ?1 \
                                   AND h.stopped_at IS NULL AND h.heartbeat_at >= ?3 - ?5 \
                                   AND (SELECT count(*) FROM jobs r WHERE r.host = w.host \
                                        AND r.state = 'running' AND r.lease_until >= ?3) < w.slots) END, \
                                  j.queued_at, j.id \
                         LIMIT 1 {}) \
                     RETURNING id, repo, commit_sha, recipe, git_ref, fence, attempts, runs_from", $store::SKIP_LOCKED)),
                )
                .bind(host)
                .bind(now + ms(lease))
                .bind(now)
                .bind(ms(affinity))
                // A host is alive while its heartbeats (every third of a lease) are recent.
                .bind(ms(lease) * 2)
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

            async fn set_warm_caches(&self, host: &str, slots: u32, repos: &[String]) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(&self.q("DELETE FROM warm_caches WHERE host = ?"))
                    .bind(host)
                    .execute(&mut *tx)
                    .await?;
                for repo in repos {
                    sqlx::query(&self.q(
                        "INSERT INTO warm_caches (host, repo, slots, updated_at) VALUES (?, ?, ?, ?)",
                    ))
                    .bind(host)
                    .bind(repo)
                    .bind(slots as i64)
                    .bind(self.now())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Renewal> {
                let now = self.now();
                let row = sqlx::query(&self.q(&format!(
                    "UPDATE jobs SET lease_until = ? WHERE {FENCED} AND lease_until >= ? \
                     RETURNING cancel_requested"
                )))
                .bind(now + ms(duration))
                .bind_lease(lease)
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
                .bind_lease(lease)
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
                .bind_lease(lease)
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
                .bind_lease(lease)
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
                // count so the next sender looks on the forge before sending again.
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
                .bind_lease(lease)
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
                         provenance, sbom) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, name) DO UPDATE \
                         SET kind = excluded.kind, digest = excluded.digest, size = excluded.size, \
                         media_type = excluded.media_type, pushed_to = excluded.pushed_to, \
                         provenance = excluded.provenance, sbom = excluded.sbom"),
                    )
                    .bind(&lease.build_id)
                    .bind(&a.name)
                    .bind(&a.kind)
                    .bind(&a.digest)
                    .bind(a.size as i64)
                    .bind(&a.media_type)
                    .bind(&a.pushed_to)
                    .bind(&a.provenance)
                    .bind(a.sbom.as_ref().and_then(|s| serde_json::to_string(s).ok()))
                    .execute(&mut *tx)
                    .await?;
                    if let (Some(summary), Some(doc)) = (&a.sbom, &a.sbom_document) {
                        sqlx::query(&self.q(
                            "INSERT INTO sboms (job_id, name, digest, body) VALUES (?, ?, ?, ?) \
                             ON CONFLICT (job_id, name) DO UPDATE SET digest = excluded.digest, body = excluded.body",
                        ))
                        .bind(&lease.build_id)
                        .bind(&a.name)
                        .bind(&summary.digest)
                        .bind(String::from_utf8_lossy(doc).into_owned())
                        .execute(&mut *tx)
                        .await?;
                    }
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
        }
    };
}

pub(crate) use sql_scheduling;
