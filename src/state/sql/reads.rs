//! The SQL of [`Reads`](crate::state::Reads): what the API and the dashboard read.

/// `impl Reads` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_reads {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Reads for $store {
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
                    &self.q("SELECT attempt, idx, command, exit_code, millis, network FROM steps WHERE job_id = ? \
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
                    network: r.get("network"),
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

            async fn sbom(&self, build_id: &str, artifact: &str) -> Result<Option<Vec<u8>>> {
                let body: Option<String> = sqlx::query_scalar(&self.q(
                    "SELECT body FROM sboms WHERE job_id = ? AND name = ?",
                ))
                .bind(build_id)
                .bind(artifact)
                .fetch_optional(&self.pool)
                .await?;
                Ok(body.map(String::into_bytes))
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

pub(crate) use sql_reads;
