//! The SQL of [`Retags`](crate::state::Retags): refs whose tags have not moved yet.

/// `impl Retags` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_retags {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Retags for $store {
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
        }
    };
}

pub(crate) use sql_retags;
