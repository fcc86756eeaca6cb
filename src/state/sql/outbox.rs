//! The SQL of [`Outbox`](crate::state::Outbox): the commit-status outbox.

/// `impl Outbox` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_outbox {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Outbox for $store {
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
                .bind_lease(lease)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn status_contexts(&self, build_id: &str) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    &self.q("SELECT DISTINCT context FROM statuses WHERE job_id = ? ORDER BY context"),
                )
                .bind(build_id)
                .fetch_all(&self.pool)
                .await?)
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
        }
    };
}

pub(crate) use sql_outbox;
