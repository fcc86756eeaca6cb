//! The SQL of [`Farm`](crate::state::Farm): the farm: hosts, their heartbeats and roles, and the database's clock.

/// `impl Farm` for an engine's store (see [`sql_store!`](super::sql_store)).
macro_rules! sql_farm {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl Farm for $store {
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

            fn clock_ms(&self) -> i64 {
                self.now()
            }
        }
    };
}

pub(crate) use sql_farm;
