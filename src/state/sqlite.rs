//! The state in SQLite: one file under `state_dir`, WAL mode, fully synchronous commits (a
//! power loss never forgets a finished build), and versioned migrations.
//!
//! SQLite has no `SKIP LOCKED`; it needs none: every claim is a single `UPDATE ... RETURNING`
//! statement, which SQLite runs under its one write lock.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::sql::*;
use super::*;

/// A [`JobStore`] in a SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// New build ids, in the order they are made.
    ids: std::sync::Arc<crate::ids::Sequence>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/state/migrations/sqlite");

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(opts).await
    }

    /// The same database through one connection of its own (for the lease keeper).
    pub async fn open_single(path: &Path) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            ids: Default::default(),
        })
    }

    /// A private in-memory database (for tests).
    pub async fn memory() -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        Self::connect(opts).await
    }

    async fn connect(opts: SqliteConnectOptions) -> Result<SqliteStore> {
        let in_memory = opts.get_filename() == Path::new(":memory:");
        let pool = SqlitePoolOptions::new()
            // One connection for memory databases: each connection would be its own database.
            .max_connections(if in_memory { 1 } else { 4 })
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            ids: Default::default(),
        })
    }

    /// SQLite takes the statements as written.
    fn q<'s>(&self, sql: &'s str) -> std::borrow::Cow<'s, str> {
        std::borrow::Cow::Borrowed(sql)
    }

    /// One host: its own clock.
    fn now(&self) -> i64 {
        now_ms()
    }

    /// SQLite runs each statement under its one write lock: claims need no row locks.
    const SKIP_LOCKED: &'static str = "";
    /// One writer at a time: a fenced insert cannot interleave with a claim.
    const FOR_SHARE: &'static str = "";

    async fn check(&self) -> Result<String> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.join("\n"))
    }
}

sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);
