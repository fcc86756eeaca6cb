//! The SQL of [`Triggers`](crate::state::Triggers): what triggers need: jobs queued once per commit, heads, ETags and webhook deliveries.

/// `impl Triggers` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_triggers {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Triggers for $store {
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
        }
    };
}

pub(crate) use sql_triggers;
