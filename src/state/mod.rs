//! The daemon's state: jobs (one per repo, commit and recipe), their leases, the refs that
//! point at them, build records, heads and ETags for polling, webhook deliveries, and the
//! commit-status outbox.
//!
//! Everything goes through the [`JobStore`] trait (its sections, one trait each: [`Triggers`],
//! [`Scheduling`], [`Records`], [`Retags`], [`Outbox`], [`Farm`], [`Reads`]), so a farm can
//! share one PostgreSQL where a single host keeps SQLite. The SQL is written once
//! (`sql/`, a file per section) for both engines. The guarantees live in the database, not in the process:
//! - a job is keyed by (repo, commit, recipe) and inserting it again does nothing;
//! - a claim gives the claimer a lease and a fencing token that grows on every claim, and
//!   every write of a result checks that token, so a host that lost its lease records nothing;
//! - a job and context get at most one terminal commit status.

mod postgres;
mod sql;
mod sqlite;

use std::time::Duration;

use serde::Serialize;

pub use postgres::{PgStore, redacted_url};
pub use sqlite::SqliteStore;

/// The state a build is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Running,
    Success,
    /// The build's own fault: a failing step, a bad recipe.
    Failure,
    /// Not the build's fault: the engine, the registry, the network, kiln.
    Error,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Success => "success",
            BuildState::Failure => "failure",
            BuildState::Error => "error",
            BuildState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BuildState> {
        Some(match s {
            "queued" => BuildState::Queued,
            "running" => BuildState::Running,
            "success" => BuildState::Success,
            "failure" => BuildState::Failure,
            "error" => BuildState::Error,
            "cancelled" => BuildState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

/// Something to build, as a trigger (poll, webhook, local watcher) found it.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub repo: String,
    pub commit: String,
    pub recipe: String,
    /// `refs/heads/main`, `refs/tags/v1.2.3`.
    pub git_ref: String,
}

/// What [`Triggers::enqueue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub build_id: String,
    /// A new job was inserted (else one existed for the same repo, commit and recipe).
    pub created: bool,
    /// The ref now needs its tags moved to this job's artifacts (always true: a ref that
    /// moves back to a built commit must be tagged again).
    pub ref_added: bool,
    pub state: BuildState,
}

/// A claimed job: the right to run it until the lease expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub build_id: String,
    pub owner: String,
    /// The fencing token: every write of a result must present it.
    pub fence: i64,
}

/// What renewing a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Extended.
    Held,
    /// Extended, and someone asked for the build to be cancelled.
    CancelRequested,
    /// Gone: expired (and perhaps claimed by another host) or finished.
    Lost,
}

/// A job as a worker needs it.
#[derive(Clone, Debug)]
pub struct Claim {
    pub lease: Lease,
    pub repo: String,
    pub commit: String,
    pub recipe: String,
    pub git_ref: String,
    /// 1 for the first run; attempts keep counting across rebuilds.
    pub attempt: u32,
    /// The attempt count when the job was last queued by a rebuild (0 if never): this run's
    /// attempts are `attempt - runs_from`.
    pub runs_from: u32,
}

/// One published artifact of a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub kind: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub pushed_to: String,
    pub provenance: Option<String>,
    /// Its SBOM in brief.
    pub sbom: Option<crate::artifact::SbomSummary>,
    /// The SBOM document, when this row is being recorded (never read back with the row).
    #[serde(skip)]
    pub sbom_document: Option<std::sync::Arc<Vec<u8>>>,
}

impl ArtifactRow {
    /// The artifact as the pipeline knows it.
    pub fn to_artifact(&self) -> crate::artifact::ArtifactResult {
        crate::artifact::ArtifactResult {
            name: self.name.clone(),
            kind: self.kind.clone(),
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
            loaded_as: None,
            pushed_to: Some(self.pushed_to.clone()),
            provenance: self.provenance.clone(),
            sbom: self.sbom.clone(),
            sbom_document: self.sbom_document.clone(),
        }
    }

    /// The record of an artifact the pipeline published.
    pub fn of(a: &crate::artifact::ArtifactResult) -> ArtifactRow {
        ArtifactRow {
            name: a.name.clone(),
            kind: a.kind.clone(),
            digest: a.digest.clone(),
            size: a.size,
            media_type: a.media_type.clone(),
            pushed_to: a.pushed_to.clone().unwrap_or_default(),
            provenance: a.provenance.clone(),
            sbom: a.sbom.clone(),
            sbom_document: a.sbom_document.clone(),
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub state: BuildState,
    pub error: Option<String>,
    pub artifacts: Vec<ArtifactRow>,
    /// Refs whose tags the worker moved (or deliberately left to a newer build).
    pub tagged_refs: Vec<String>,
    /// Terminal commit statuses to send, recorded in the same transaction.
    pub statuses: Vec<NewStatus>,
}

/// A commit status to send to the repository's forge (through the outbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStatus {
    pub context: String,
    /// pending, success, failure, error.
    pub state: String,
    pub description: String,
    pub target_url: Option<String>,
}

/// A status in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRow {
    pub id: i64,
    pub build_id: String,
    pub repo: String,
    pub commit: String,
    pub status: NewStatus,
    pub attempts: u32,
    /// How many times a sender claimed it: more than once means a sender that died may have
    /// sent it before it could record that.
    pub claims: u32,
}

/// A stage's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageRow {
    pub attempt: u32,
    pub name: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// ok, failed, cancelled, skipped; none while it runs.
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// A step's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRow {
    pub attempt: u32,
    pub index: u32,
    pub command: String,
    pub exit_code: Option<i64>,
    pub millis: Option<u64>,
    /// The step ran with the network.
    pub network: bool,
}

/// A build as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRow {
    pub id: String,
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    pub recipe: String,
    pub state: BuildState,
    pub host: Option<String>,
    pub attempts: u32,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The commit message's first line, once a worker fetched the commit.
    pub subject: Option<String>,
    pub artifacts: Vec<ArtifactRow>,
}

/// A build with its stages and steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildDetail {
    pub build: BuildRow,
    pub refs: Vec<String>,
    pub stages: Vec<StageRow>,
    pub steps: Vec<StepRow>,
}

/// A host of the farm, as `GET /api/hosts` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub id: String,
    /// The identity of the host's state directory: two processes claiming one `host_id`
    /// from two state directories are two machines configured alike, not a restart.
    pub instance: String,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// Jobs it was running at its last heartbeat.
    pub running: u32,
    /// When it stopped cleanly (none while it runs, or when it died).
    pub stopped_at: Option<i64>,
}

/// Which builds to list.
#[derive(Clone, Debug, Default)]
pub struct BuildQuery {
    pub repo: Option<String>,
    pub state: Option<BuildState>,
    /// Only builds older than this id (for paging: ids sort by time).
    pub before: Option<String>,
    pub limit: u32,
}

/// A ref of a finished job whose tags have not been moved yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntaggedRef {
    pub build_id: String,
    pub repo: String,
    pub commit: String,
    pub git_ref: String,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the state database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the state database did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("the state database holds {what} {value:?}, which this kiln does not know")]
    Corrupt { what: &'static str, value: String },
}

impl StateError {
    /// Whether trying again could help (a busy or unreachable database, not bad data).
    pub fn is_retryable(&self) -> bool {
        match self {
            StateError::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Database(_)
            ),
            StateError::Timeout(_) => true,
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StateError>;

/// What triggers record: the jobs they find (once per repo, commit and recipe), the heads they
/// saw, their conditional requests' ETags and the webhook deliveries they took.
#[async_trait::async_trait]
pub trait Triggers: Send + Sync {
    /// Record that `job.git_ref` points at `job.commit` (the ref's head, in the same
    /// transaction): the job is inserted unless one exists for the same repo, commit and
    /// recipe (then only the ref is added to it).
    async fn enqueue(&self, job: &NewJob) -> Result<Enqueued>;
    /// The last head seen for a ref of a repo and recipe.
    async fn head(&self, repo: &str, recipe: &str, git_ref: &str) -> Result<Option<String>>;
    /// Record a head without queueing a build (tags that existed before kiln watched).
    async fn set_head(&self, repo: &str, recipe: &str, git_ref: &str, commit: &str) -> Result<()>;
    /// A cached conditional GET: the ETag and the body it answered.
    async fn etag(&self, key: &str) -> Result<Option<(String, String)>>;
    async fn set_etag(&self, key: &str, etag: &str, body: &str) -> Result<()>;
    /// Record a webhook delivery id; false if it was seen before (a replay).
    async fn record_delivery(&self, id: &str) -> Result<bool>;
}

/// Claims and leases: a claim gives a lease and a fencing token that grows on every claim, and
/// every write of a result checks it.
#[async_trait::async_trait]
pub trait Scheduling: Send + Sync {
    /// Claim the next runnable job for `host`: a queued one whose backoff has passed, or a
    /// running one whose lease expired. Fair across repos: a repo with fewer running jobs
    /// goes first. The fencing token grows on every claim.
    async fn claim(&self, host: &str, lease: Duration) -> Result<Option<Claim>> {
        self.claim_near(host, lease, Duration::ZERO).await
    }
    /// [`claim`](Scheduling::claim) with cache affinity: a job whose repository another live
    /// host holds warm caches for, with a slot free, waits for that host until it has been
    /// queued for `affinity` (zero: no affinity at all). Jobs this host holds warm caches for
    /// go first among equals.
    async fn claim_near(
        &self,
        host: &str,
        lease: Duration,
        affinity: Duration,
    ) -> Result<Option<Claim>>;
    /// Record the repositories `host` holds warm build caches for (replacing what it said
    /// before), and how many builds it runs at once.
    async fn set_warm_caches(&self, host: &str, slots: u32, repos: &[String]) -> Result<()>;
    /// Extend a lease, unless it was lost (expired, taken, or the job finished).
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Renewal>;
    /// Whether the lease is still held, with at least `margin` left before it expires.
    async fn holds(&self, lease: &Lease, margin: Duration) -> Result<bool>;
    /// Give a job back (a graceful stop): queued again at once, for any host.
    async fn release(&self, lease: &Lease) -> Result<()>;
    /// Put a running job back in the queue after a retryable failure, to run after `delay`.
    async fn retry_later(&self, lease: &Lease, error: &str, delay: Duration) -> Result<bool>;
    /// Jobs `host` held when it died: queued again at once, and its status claims let go.
    /// Call at startup, holding the host's exclusive lock.
    async fn requeue_host(&self, host: &str) -> Result<u64>;
    /// Record how a job ended, its artifacts and terminal statuses, and mark its refs tagged
    /// (when it succeeded); all fenced by the lease. False if the lease was lost.
    async fn finish(&self, lease: &Lease, outcome: &Outcome) -> Result<bool>;
    /// Cancel a queued job, or mark a running one for cancellation by its owner.
    async fn cancel(&self, build_id: &str) -> Result<bool>;
    /// Queue a finished job (success, failure, error, cancelled) to run again: its artifacts
    /// and the finality of its statuses are cleared, its records and log are kept. False if
    /// it is not finished (or does not exist).
    async fn rebuild(&self, build_id: &str) -> Result<bool>;
}

/// A running build's records (stages, steps, subject, log), fenced by its lease.
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    async fn stage_started(&self, lease: &Lease, attempt: u32, name: &str) -> Result<()>;
    async fn stage_finished(
        &self,
        lease: &Lease,
        attempt: u32,
        name: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<()>;
    async fn step(&self, lease: &Lease, attempt: u32, step: &StepRow) -> Result<()>;
    /// Record the commit's first line, fenced by the lease.
    async fn set_subject(&self, lease: &Lease, subject: &str) -> Result<()>;
    /// Append whole log lines numbered from `first_line`, fenced by the lease: false if the
    /// lease was lost (or those lines exist).
    async fn append_log(&self, lease: &Lease, first_line: u64, lines: &[String]) -> Result<bool>;
    /// The number the next log line of a build gets (1 for an empty log).
    async fn log_end(&self, build_id: &str) -> Result<u64>;
    /// Log lines numbered above `after`, in order, about `limit` of them at most (whole
    /// stored runs: a few more may come).
    async fn log_lines(&self, build_id: &str, after: u64, limit: u32)
    -> Result<Vec<(u64, String)>>;
}

/// Tags of refs that arrived after their job finished.
#[async_trait::async_trait]
pub trait Retags: Send + Sync {
    async fn untagged_refs(&self, limit: u32) -> Result<Vec<UntaggedRef>>;
    async fn mark_tagged(&self, build_id: &str, git_ref: &str) -> Result<()>;
    /// Mark the ref untagged on the successful job of its current head, so its tags are moved
    /// (again) to that head.
    async fn untag_head(&self, repo: &str, recipe: &str, git_ref: &str) -> Result<()>;
}

/// Commit statuses: at most one terminal status per job and context, sent in order.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Queue a non-terminal status (pending), fenced by the lease, in one statement.
    async fn add_status(&self, lease: &Lease, status: &NewStatus) -> Result<bool>;
    /// Status contexts recorded for a job so far.
    async fn status_contexts(&self, build_id: &str) -> Result<Vec<String>>;
    /// Claim up to `limit` unsent statuses, oldest first, for `ttl`: for each job and context
    /// only the oldest unsent one, so the forge sees them in the order they were recorded (a
    /// pending that failed to send never lands after the terminal status).
    async fn claim_statuses(&self, host: &str, ttl: Duration, limit: u32)
    -> Result<Vec<StatusRow>>;
    /// Record a send: done, or failed and to be tried again after `retry_in`.
    async fn status_sent(&self, id: i64, ok: bool, retry_in: Duration) -> Result<()>;
}

/// The hosts of a farm: heartbeats, roles, and the clock the state's times use.
#[async_trait::async_trait]
pub trait Farm: Send + Sync {
    /// Record that `host` is alive, the version it runs, when it started and how many jobs
    /// it runs now.
    async fn heartbeat(
        &self,
        host: &str,
        instance: &str,
        version: &str,
        started_at: i64,
        running: u32,
    ) -> Result<()>;
    /// Record a clean stop.
    async fn host_stopped(&self, host: &str) -> Result<()>;
    async fn hosts(&self) -> Result<Vec<HostRow>>;
    /// Take `role` (say, the poller) or keep it, for `ttl`: true while `host` holds
    /// it. Another host can take it only once the holder's lease ran out.
    async fn lead(&self, role: &str, host: &str, ttl: Duration) -> Result<bool>;
    /// Give `role` up at once (a clean stop), if `host` holds it.
    async fn resign(&self, role: &str, host: &str) -> Result<()>;
    /// Now, in Unix milliseconds, on the clock the state's times use (the database's, for a
    /// farm): compare stored times with this, not with the host's clock.
    fn clock_ms(&self) -> i64;
}

/// What the API, the dashboard and the badges read.
#[async_trait::async_trait]
pub trait Reads: Send + Sync {
    async fn builds(&self, q: &BuildQuery) -> Result<Vec<BuildRow>>;
    async fn build(&self, id: &str) -> Result<Option<BuildDetail>>;
    async fn artifacts(&self, build_id: &str) -> Result<Vec<ArtifactRow>>;
    /// The SBOM document of a build's artifact, as recorded.
    async fn sbom(&self, build_id: &str, artifact: &str) -> Result<Option<Vec<u8>>>;
    /// A build's state alone (one indexed read, for pages that follow a build).
    async fn build_state(&self, build_id: &str) -> Result<Option<BuildState>>;
    /// A build's state and the number its next log line gets, read together (one snapshot:
    /// once the state is final, no line beyond that number will come).
    async fn progress(&self, build_id: &str) -> Result<Option<(BuildState, u64)>>;
    /// How the last finished build (success, failure or error) of `git_ref` in `repo` ended.
    async fn last_finished(&self, repo: &str, git_ref: &str) -> Result<Option<BuildState>>;
    /// Jobs waiting to run (queued).
    async fn queue_depth(&self) -> Result<u64>;
    /// A consistency check of the database file, where the engine has one ("ok" when fine).
    async fn integrity_check(&self) -> Result<String>;
}

/// The daemon's state, wherever it lives: every section of it, behind one object.
pub trait JobStore: Triggers + Scheduling + Records + Retags + Outbox + Farm + Reads {}

impl<T: Triggers + Scheduling + Records + Retags + Outbox + Farm + Reads> JobStore for T {}

/// The state's traits, to call a [`JobStore`]'s methods: `use crate::state::prelude::*`.
pub mod prelude {
    pub use super::{Farm, JobStore, Outbox, Reads, Records, Retags, Scheduling, Triggers};
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
