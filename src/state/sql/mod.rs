//! The SQL the two state engines share. SQLite (one host) and PostgreSQL (a farm) run the
//! same statements, written once with `?` placeholders; each engine's store rewrites them for
//! its dialect (`q`), supplies the time (`now`), its row-locking clause for claims
//! (`SKIP_LOCKED`) and its own consistency check (`check`), then expands [`sql_store!`].
//!
//! Portable SQL only: `ON CONFLICT`, `RETURNING`, partial unique indexes, `CASE`; no
//! `rowid`, no two-argument `max`.

use super::*;

pub(super) mod farm;
pub(super) mod outbox;
pub(super) mod reads;
pub(super) mod records;
pub(super) mod retags;
pub(super) mod scheduling;
pub(super) mod triggers;

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

/// Binds [`FENCED`]'s parameters: the lease's build, owner and fence, in that order.
pub(super) trait BindLease<'q> {
    fn bind_lease(self, lease: &'q Lease) -> Self;
}

/// The [`JobStore`] implementation over an engine's pool, one macro per section of the trait
/// (`triggers.rs`, `scheduling.rs`, ...): `$store` has a `pool` of `$db`, and the inherent `q`,
/// `now`, `check`, `SKIP_LOCKED` and `FOR_SHARE`.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        impl<'q> BindLease<'q>
            for sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>
        {
            fn bind_lease(self, lease: &'q Lease) -> Self {
                self.bind(&lease.build_id)
                    .bind(&lease.owner)
                    .bind(lease.fence)
            }
        }

        impl<'q, O> BindLease<'q>
            for sqlx::query::QueryScalar<'q, $db, O, <$db as sqlx::Database>::Arguments<'q>>
        {
            fn bind_lease(self, lease: &'q Lease) -> Self {
                self.bind(&lease.build_id)
                    .bind(&lease.owner)
                    .bind(lease.fence)
            }
        }

        impl $store {
            async fn artifacts_of(&self, ids: &[String]) -> Result<Vec<(String, ArtifactRow)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT job_id, name, kind, digest, size, media_type, pushed_to, provenance, sbom \
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
                                sbom: r
                                    .get::<Option<String>, _>("sbom")
                                    .and_then(|j| serde_json::from_str(&j).ok()),
                                sbom_document: None,
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
                Ok(sqlx::query(&self.q(
                    "INSERT INTO statuses (job_id, repo, commit_sha, context, state, description, \
                     target_url, terminal, created_at) \
                     SELECT id, repo, commit_sha, ?, ?, ?, ?, ?, ? FROM jobs WHERE id = ? \
                     ON CONFLICT DO NOTHING",
                ))
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

        $crate::state::sql::triggers::sql_triggers!($store);
        $crate::state::sql::scheduling::sql_scheduling!($store);
        $crate::state::sql::records::sql_records!($store);
        $crate::state::sql::retags::sql_retags!($store);
        $crate::state::sql::outbox::sql_outbox!($store);
        $crate::state::sql::farm::sql_farm!($store);
        $crate::state::sql::reads::sql_reads!($store);
    };
}

pub(crate) use sql_store;
