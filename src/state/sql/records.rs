//! The SQL of [`Records`](crate::state::Records): a running build's records: stages, steps, its commit's subject and its log, fenced by its lease.

/// `impl Records` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_records {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Records for $store {
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
                .bind_lease(lease)
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
                .bind_lease(lease)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn step(&self, lease: &Lease, attempt: u32, step: &StepRow) -> Result<()> {
                sqlx::query(&self.q(&format!(
                    "INSERT INTO steps (job_id, attempt, idx, command, exit_code, millis, network) \
                     SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE {FENCED}) \
                     ON CONFLICT (job_id, attempt, idx) DO UPDATE SET command = excluded.command, \
                     exit_code = excluded.exit_code, millis = excluded.millis, network = excluded.network"
                )))
                .bind(&lease.build_id)
                .bind(attempt as i64)
                .bind(step.index as i64)
                .bind(&step.command)
                .bind(step.exit_code)
                .bind(step.millis.map(|m| m as i64))
                .bind(step.network)
                .bind_lease(lease)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn set_subject(&self, lease: &Lease, subject: &str) -> Result<()> {
                sqlx::query(&self.q(&format!("UPDATE jobs SET subject = ? WHERE {FENCED}")))
                    .bind(subject)
                    .bind_lease(lease)
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
                .bind_lease(lease)
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
        }
    };
}

pub(crate) use sql_records;
