//! The state in PostgreSQL, shared by the daemons of a farm. The same versioned migrations and
//! statements as SQLite (see `sql.rs`); what differs is here:
//! - a claim locks the row it takes with `FOR UPDATE SKIP LOCKED`, so hosts claiming at once
//!   never wait on each other and never take the same job;
//! - times come from the database's clock (read at connection and every minute, advanced in
//!   between by this host's monotonic clock), so leases mean the same on every host even when
//!   their wall clocks differ or jump;
//! - `sqlx`'s migrator holds an advisory lock while it migrates, so hosts upgraded and
//!   started together run each migration once.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::sql::*;
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/state/migrations/postgres");

/// A [`JobStore`] in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The database's clock (Unix ms) at an instant of this host's monotonic clock: times
    /// are that plus the time elapsed since, so a jump of the host's wall clock (an NTP step,
    /// a resumed VM) changes nothing.
    clock: Arc<Mutex<(i64, Instant)>>,
    /// New build ids, in the order this host makes them.
    ids: Arc<crate::ids::Sequence>,
}

/// Where to connect, without the password: for logs and errors.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // libpq-style `?password=...` (and `sslpassword`) too.
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let hide = k.to_ascii_lowercase().contains("password");
                        (
                            k.into_owned(),
                            if hide { "***".into() } else { v.into_owned() },
                        )
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "(an unparsable database URL)".to_owned(),
    }
}

impl PgStore {
    /// Connect with up to `connections` connections (the password, when given, overrides the
    /// URL's and `PGPASSWORD`), bring the schema up to date and measure the clock offset.
    pub async fn connect(url: &str, password: Option<&str>, connections: u32) -> Result<PgStore> {
        let mut opts = PgConnectOptions::from_str(url)?;
        if let Some(p) = password {
            opts = opts.password(p);
        }
        opts = opts.application_name("kiln");
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        let store = PgStore {
            pool,
            clock: Arc::new(Mutex::new((now_ms(), Instant::now()))),
            ids: Default::default(),
        };
        store.sync_clock().await?;
        // Clocks drift: measure again every minute, on a connection of its own, for as long
        // as the store is in use.
        let (clock, opts) = (Arc::downgrade(&store.clock), store.pool.connect_options());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(clock) = clock.upgrade() else { return };
                if let Ok(mut c) = sqlx::PgConnection::connect_with(&opts).await {
                    if let Ok(at) = db_clock(&mut c).await {
                        *crate::sync::lock(&clock) = at;
                    }
                    let _ = c.close().await;
                }
            }
        });
        Ok(store)
    }

    /// Measure the database's clock against this host's.
    pub async fn sync_clock(&self) -> Result<()> {
        let mut c = self.pool.acquire().await?;
        let at = db_clock(&mut c).await?;
        *crate::sync::lock(&self.clock) = at;
        Ok(())
    }

    /// `?` and `?N` placeholders become `$N` (outside quoted strings).
    fn q<'s>(&self, sql: &'s str) -> std::borrow::Cow<'s, str> {
        std::borrow::Cow::Owned(dollar_placeholders(sql))
    }

    fn now(&self) -> i64 {
        let (db, at) = *crate::sync::lock(&self.clock);
        db + at.elapsed().as_millis() as i64
    }

    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";
    /// A fenced insert locks the job's row, so a claim (which bumps the fence) waits for it
    /// and a new owner never reads the log's end before the old owner's last lines land.
    const FOR_SHARE: &'static str = "FOR SHARE";

    /// The server answers and the schema is the one this kiln migrated to.
    async fn check(&self) -> Result<String> {
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        let known = MIGRATOR.iter().count() as i64;
        Ok(if applied >= known {
            "ok".to_owned()
        } else {
            format!("{applied} of {known} migrations applied")
        })
    }
}

/// The database's clock (Unix ms), as of the returned instant (half the round trip corrected).
async fn db_clock(c: &mut sqlx::PgConnection) -> Result<(i64, Instant)> {
    let before = Instant::now();
    let db: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(&mut *c)
            .await?;
    Ok((db, before + before.elapsed() / 2))
}

fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push('$');
                    out.push_str(&digits);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

sql_store!(PgStore, sqlx::Postgres, sqlx::postgres::PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_strings() {
        assert_eq!(
            dollar_placeholders("UPDATE t SET a = ?, b = '?' WHERE c = ? AND d = ?3"),
            "UPDATE t SET a = $1, b = '?' WHERE c = $2 AND d = $3"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted_url("postgres://kiln:s3cret@db.internal:5432/kiln"),
            "postgres://kiln:***@db.internal:5432/kiln"
        );
        assert!(!redacted_url("postgres://kiln:s3cret@[bad").contains("s3cret"));
        let q =
            redacted_url("postgres://kiln@db/kiln?sslmode=require&password=s3cret&sslpassword=k3y");
        assert!(!q.contains("s3cret") && !q.contains("k3y"), "{q}");
        assert!(q.contains("sslmode=require"), "{q}");
    }
}
