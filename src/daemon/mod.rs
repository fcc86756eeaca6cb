//! `kiln daemon`: the long-running worker. It only composes the library: triggers (GitHub
//! polling, webhooks, local repositories) queue jobs in the state; a scheduler claims them
//! with a lease and runs the pipeline's stages; results, tags and commit statuses are
//! recorded and sent fenced by that lease. The HTTP side reads the state.
//!
//! ```text
//! trigger -> state.enqueue -> scheduler.claim (lease, fence) -> worker: source, run, pack,
//!   image, publish -> state.finish (fenced) -> outbox -> GitHub commit status
//! ```

pub mod config;
pub mod github;
pub mod lease;
pub mod logship;
pub mod metrics;
pub mod watch;
pub mod worker;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runner::DockerRunner;
use crate::state::{JobStore, PgStore, SqliteStore, StateError};
use config::{Config, Database, RepoSource};
use github::GitHubClient;
use lease::{LeaseKeeper, STOP_SHUTDOWN, StopReason};
use metrics::Metrics;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::check::CheckError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another kiln daemon{} is using the state directory {}; stop it first (two daemons on one state directory would build every commit twice)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot start the lease keeper's {op}: {source}")]
    LeaseKeeper {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the database {url}: {source}")]
    Database { url: String, source: StateError },
    #[error(
        "host_id {host:?} is in use by another kiln daemon of the farm (with another state directory; its last heartbeat was {silent_s} s ago): give each host its own host_id"
    )]
    HostIdTaken { host: String, silent_s: u64 },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    GitHub(#[from] github::GitHubError),
}

impl DaemonError {
    /// Whether the database is only unavailable for now (down, restarting, unreachable), so
    /// waiting for it can help.
    pub fn worth_waiting(&self) -> bool {
        let e = match self {
            DaemonError::Database { source, .. } | DaemonError::State(source) => source,
            _ => return false,
        };
        let sql = match e {
            StateError::Database(e) => e,
            StateError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e,
            _ => return false,
        };
        match sql {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // 57P0x: the server is shutting down or starting up.
            sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
            _ => false,
        }
    }
}

/// What the daemon's tasks share.
pub struct Daemon {
    /// The running config; reloads replace it and wake the triggers.
    pub(crate) config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    pub store: Arc<dyn JobStore>,
    pub metrics: Arc<Metrics>,
    github: RwLock<Option<Arc<GitHubClient>>>,
    /// Fixed for the process: changing them needs a restart.
    pub host_id: String,
    /// This state directory's identity (kept in `state_dir/instance`), labelling containers.
    pub instance: String,
    pub state_dir: PathBuf,
    pub lease: Duration,
    pub(crate) keeper: LeaseKeeper,
    /// A job was queued (or a slot freed): claim now.
    pub wake_scheduler: Notify,
    /// A status was queued: send now.
    pub wake_outbox: Notify,
    /// A ref reached an already built commit: tag it now.
    pub wake_retag: Notify,
    /// Webhook pokes: the name of a repository to check now.
    pub pokes: tokio::sync::broadcast::Sender<String>,
    /// Fires when the HTTP server stops: long-lived answers (a live log) end then, so the
    /// graceful shutdown does not wait on an open browser tab.
    pub http_stop: CancellationToken,
    /// Live logs being streamed: each holds a permit, so open tabs cannot load the state
    /// without bound.
    pub live_logs: Arc<tokio::sync::Semaphore>,
    /// Builds running here, by build id and fencing token (one build can be claimed again
    /// by this host after its lease expired): their tokens and stop reasons.
    running: Mutex<HashMap<(String, i64), (CancellationToken, StopReason)>>,
    /// Held while tags are decided and moved, so two moves of one branch never interleave.
    pub(crate) tag_lock: tokio::sync::Mutex<()>,
    /// `GET /repos/{o}/{r}` answers, once per repository and config.
    repo_infos: Mutex<HashMap<String, github::RepoInfo>>,
    /// Whether this host leads the GitHub polls now (one host of a farm at a time).
    pub(crate) poller: AtomicBool,
    /// Until when the poller role is surely still ours (its lease, less a margin, from when
    /// it was asked for): a renewal that hangs does not keep this host polling.
    pub(crate) poller_until: Mutex<Option<std::time::Instant>>,
    /// When this process started (Unix milliseconds), for the hosts table.
    started_at: i64,
}

/// The farm role whose holder polls GitHub.
pub const ROLE_POLLER: &str = "poller";

impl Daemon {
    /// Whether this host polls GitHub now: it holds the poller role, and its lease on it has
    /// not run out even if the last renewal still hangs.
    pub fn polls(&self) -> bool {
        self.poller.load(Ordering::SeqCst)
            && crate::sync::lock(&self.poller_until).is_some_and(|t| std::time::Instant::now() < t)
    }
}

/// Everything the daemon needs from its database before it starts: the store, the lease
/// keeper (its own thread, runtime and connection: a busy build cannot starve it, and neither
/// can a pool the builds exhaust), and the jobs this host held when it last stopped, queued
/// again.
async fn connect(
    config: &Config,
    instance: &str,
) -> Result<(Arc<dyn JobStore>, LeaseKeeper, u64), DaemonError> {
    let store = open_state(config, 8).await?;
    // Two machines with one host_id would requeue (steal) each other's builds and remove each
    // other's work: refuse while the other one is alive.
    if let Some(h) = store
        .hosts()
        .await?
        .into_iter()
        .find(|h| h.id == config.host_id)
    {
        let silent_ms = store.clock_ms() - h.heartbeat_at;
        if h.instance != instance
            && h.stopped_at.is_none()
            && silent_ms < 2 * config.lease.as_millis() as i64
        {
            return Err(DaemonError::HostIdTaken {
                host: config.host_id.clone(),
                silent_s: silent_ms.max(0) as u64 / 1000,
            });
        }
    }
    let cfg = config.clone();
    let keeper = LeaseKeeper::start(
        move || Box::pin(async move { open_state(&cfg, 1).await }),
        config.lease,
    )
    .await?;
    let requeued = store.requeue_host(&config.host_id).await?;
    Ok((store, keeper, requeued))
}

/// Open the state the config names, with up to `connections` connections.
pub async fn open_state(
    config: &Config,
    connections: u32,
) -> Result<Arc<dyn JobStore>, DaemonError> {
    Ok(match &config.database {
        Database::Sqlite => {
            let path = config.state_dir.join("state.db");
            if connections <= 1 {
                Arc::new(SqliteStore::open_single(&path).await?)
            } else {
                Arc::new(SqliteStore::open(&path).await?)
            }
        }
        Database::Postgres { url, password } => Arc::new(
            PgStore::connect(url, password.as_ref().map(|p| p.expose()), connections)
                .await
                .map_err(|source| DaemonError::Database {
                    url: crate::state::redacted_url(url),
                    source,
                })?,
        ),
    })
}

/// Record this host's heartbeat, and take or keep the poller role (another host takes it
/// once this one stops renewing).
async fn farm_beat(d: &Daemon) {
    // A database call that hangs (a partition) must not keep a stale role: each call gets a
    // third of the lease, and the role counts only until its lease would run out.
    let limit = d.lease / 3;
    let running = crate::sync::lock(&d.running).len() as u32;
    let beat = d.store.heartbeat(
        &d.host_id,
        &d.instance,
        env!("CARGO_PKG_VERSION"),
        d.started_at,
        running,
    );
    match tokio::time::timeout(limit, beat).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this host's heartbeat"),
        Err(_) => tracing::warn!("the database did not record this host's heartbeat in time"),
    }
    let asked = std::time::Instant::now();
    let leads = match tokio::time::timeout(limit, d.store.lead(ROLE_POLLER, &d.host_id, d.lease))
        .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot renew the poller role; not polling until the database answers");
            false
        }
        Err(_) => {
            tracing::warn!("the database did not answer the poller role in time; not polling");
            false
        }
    };
    *crate::sync::lock(&d.poller_until) = leads.then(|| asked + d.lease - limit);
    if d.poller.swap(leads, Ordering::SeqCst) != leads {
        if leads {
            tracing::info!("this host polls GitHub for the farm now");
        } else {
            tracing::info!("another host polls GitHub now");
        }
    }
}

/// [`farm_beat`] every third of the lease; on stop, resign the role and record the stop.
async fn farm(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(d.lease / 3) => {}
            _ = stop.cancelled() => break,
        }
        farm_beat(&d).await;
    }
    d.poller.store(false, Ordering::SeqCst);
    *crate::sync::lock(&d.poller_until) = None;
    let _ = d.store.resign(ROLE_POLLER, &d.host_id).await;
    let _ = d.store.host_stopped(&d.host_id).await;
}

impl Daemon {
    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config_tx.borrow().clone()
    }

    /// The GitHub client, when a `[github]` section is configured.
    pub fn github(&self) -> Option<Arc<GitHubClient>> {
        crate::sync::read(&self.github).clone()
    }

    /// Whether `repo` (a state name) is a GitHub repository of the current config.
    pub fn is_github(&self, repo: &str) -> bool {
        self.config()
            .repos
            .iter()
            .any(|r| r.name() == repo && matches!(r.source, RepoSource::GitHub { .. }))
    }

    /// The build's page, for a commit status.
    pub fn target_url(&self, build_id: &str) -> Option<String> {
        self.config()
            .public_url
            .as_ref()
            .map(|u| format!("{u}/builds/{build_id}"))
    }

    /// Where a build's log lives.
    pub fn log_path(&self, build_id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{build_id}.log"))
    }

    /// A GitHub repository's clone and web URLs: asked once per config, waiting out a rate
    /// limit rather than failing the build that needs them.
    pub(crate) async fn repo_info(
        &self,
        gh: &GitHubClient,
        owner: &str,
        name: &str,
    ) -> Result<github::RepoInfo, crate::pipeline::PipelineError> {
        let key = format!("{owner}/{name}");
        if let Some(i) = crate::sync::lock(&self.repo_infos).get(&key) {
            return Ok(i.clone());
        }
        loop {
            match gh.repo(owner, name).await {
                Ok(info) => {
                    crate::sync::lock(&self.repo_infos).insert(key, info.clone());
                    return Ok(info);
                }
                Err(github::GitHubError::RateLimited { .. }) => gh.wait_gate().await,
                Err(e) => {
                    return Err(crate::pipeline::PipelineError::Source(
                        crate::source::SourceError::Git {
                            dir: self.state_dir.clone(),
                            args: format!("(GitHub API) repository {owner}/{name}"),
                            message: e.to_string(),
                            retryable: e.is_retryable(),
                        },
                    ));
                }
            }
        }
    }

    /// Put a new config in place (what can change without a restart).
    pub fn apply(&self, new: Config) {
        let old = self.config();
        for (what, changed) in [
            ("state_dir", old.state_dir != new.state_dir),
            ("listen", old.listen != new.listen),
            ("host_id", old.host_id != new.host_id),
            ("lease", old.lease != new.lease),
            ("concurrency", old.concurrency != new.concurrency),
        ] {
            if changed {
                tracing::warn!("{what} changed in the config; it takes effect after a restart");
            }
        }
        let gh_changed = match (&old.github, &new.github) {
            (None, None) => false,
            (Some(a), Some(b)) => {
                a.api_url != b.api_url
                    || a.token.as_ref().map(|t| t.expose()) != b.token.as_ref().map(|t| t.expose())
            }
            _ => true,
        };
        if gh_changed {
            match new.github.as_ref().map(|g| {
                GitHubClient::new(
                    &g.api_url,
                    g.token.clone(),
                    self.store.clone(),
                    self.metrics.clone(),
                )
            }) {
                Some(Ok(c)) => *crate::sync::write(&self.github) = Some(Arc::new(c)),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot use the new [github] settings; keeping the old ones");
                    return;
                }
                None => *crate::sync::write(&self.github) = None,
            }
        }
        crate::sync::lock(&self.repo_infos).clear();
        tracing::info!(repos = new.repos.len(), "config reloaded");
        self.config_tx.send_replace(Arc::new(new));
    }
}

/// Hold the state directory for this process: a second daemon on it refuses to start.
fn lock_state_dir(dir: &Path) -> Result<File, DaemonError> {
    let path = dir.join("daemon.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(DaemonError::Locked {
                dir: dir.to_owned(),
                pid: s.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(DaemonError::Io {
                op: "lock",
                path,
                source,
            });
        }
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// The state directory's identity: made once, kept in `state_dir/instance`.
fn instance_id(dir: &Path) -> Result<String, DaemonError> {
    let path = dir.join("instance");
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_owned());
    }
    let id = crate::ids::new_id();
    let tmp = dir.join("instance.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| DaemonError::Io {
            op: "write",
            path,
            source,
        })?;
    Ok(id)
}

fn mkdir(p: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(p).map_err(|source| DaemonError::Io {
        op: "create directory",
        path: p.to_owned(),
        source,
    })
}

/// Run the daemon with `config` (read from `config_path`, which is watched for changes) until
/// `shutdown` resolves; then stop taking jobs, give running builds the configured grace,
/// cancel what is left (their jobs go back to the queue) and return.
pub async fn run(
    config: Config,
    config_path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let state_dir = config.state_dir.clone();
    for sub in ["", "logs", "git", "tmp", "layout"] {
        mkdir(&state_dir.join(sub))?;
    }
    let _lock = lock_state_dir(&state_dir)?;
    let instance = instance_id(&state_dir)?;
    // Whatever a crashed run left in the scratch space is garbage now.
    if let Ok(entries) = std::fs::read_dir(state_dir.join("tmp")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    tokio::pin!(shutdown);
    // A database that is down (restarting, unreachable) is waited for, not a reason to exit
    // and be restarted in a loop; a wrong password or schema is.
    let mut wait = Duration::from_secs(1);
    let (store, keeper, requeued) = loop {
        match connect(&config, &instance).await {
            Ok(s) => break s,
            Err(e) if e.worth_waiting() => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "the database does not answer; waiting for it");
                // Tell systemd the start is slow, not stuck (a start timeout would restart
                // the service in a loop while the database is away).
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Status("waiting for the database"),
                    sd_notify::NotifyState::ExtendTimeoutUsec(
                        (wait + Duration::from_secs(30)).as_micros() as u32,
                    ),
                ]);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    };
    if let Database::Postgres { url, .. } = &config.database {
        tracing::info!(database = %crate::state::redacted_url(url), "the state is the farm's PostgreSQL");
    }
    let store_clock = store.clock_ms();
    if requeued > 0 {
        tracing::info!(
            jobs = requeued,
            "builds this host was running when it stopped go back to the queue"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let github = match &config.github {
        Some(g) => {
            if g.token.is_none() {
                tracing::warn!(
                    "no GitHub token (github.token_file or $KILN_GITHUB_TOKEN): polling is unauthenticated, and every poll costs rate limit"
                );
            }
            Some(Arc::new(GitHubClient::new(
                &g.api_url,
                g.token.clone(),
                store.clone(),
                metrics.clone(),
            )?))
        }
        None => None,
    };
    let listen = config.listen;
    let d = Arc::new(Daemon {
        config_tx: tokio::sync::watch::Sender::new(Arc::new(config.clone())),
        store,
        metrics,
        github: RwLock::new(github),
        host_id: config.host_id.clone(),
        instance,
        state_dir: state_dir.clone(),
        lease: config.lease,
        keeper,
        wake_scheduler: Notify::new(),
        wake_outbox: Notify::new(),
        wake_retag: Notify::new(),
        pokes: tokio::sync::broadcast::channel(256).0,
        http_stop: CancellationToken::new(),
        live_logs: Arc::new(tokio::sync::Semaphore::new(
            crate::http::dashboard::MAX_LIVE_LOGS,
        )),
        running: Mutex::new(HashMap::new()),
        tag_lock: tokio::sync::Mutex::new(()),
        repo_infos: Mutex::new(HashMap::new()),
        poller: AtomicBool::new(false),
        poller_until: Mutex::new(None),
        started_at: store_clock,
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: listen,
            source,
        })?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let http_stop = d.http_stop.clone();
    {
        let (router, hs) = (crate::http::router(d.clone()), http_stop.clone());
        tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { hs.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
    }
    farm_beat(&d).await;
    tasks.spawn(watch::triggers(d.clone(), stop.clone()));
    tasks.spawn(watch::reload_on_change(
        d.clone(),
        config_path.to_owned(),
        stop.clone(),
    ));
    tasks.spawn(send_statuses(d.clone(), stop.clone()));
    tasks.spawn(retagger(d.clone(), stop.clone()));
    tasks.spawn(gauges(d.clone(), stop.clone()));
    tasks.spawn(farm(d.clone(), stop.clone()));
    let builds = TaskTracker::new();
    let scheduler = tokio::spawn(schedule(d.clone(), stop.clone(), builds.clone()));
    tracing::info!(
        host = %d.host_id,
        listen = %listen,
        state_dir = %state_dir.display(),
        repos = config.repos.len(),
        "kiln daemon ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_pinger(stop.clone());

    (&mut shutdown).await;
    tracing::info!("stopping: no new builds");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    // Once the scheduler has stopped, no build can start behind our back.
    let _ = scheduler.await;
    builds.close();
    let grace = config.shutdown_grace;
    if !builds.is_empty() && tokio::time::timeout(grace, builds.wait()).await.is_err() {
        tracing::info!(
            grace_s = grace.as_secs(),
            "grace period over: cancelling running builds"
        );
        for (_, (cancel, why)) in crate::sync::lock(&d.running).iter() {
            why.set(STOP_SHUTDOWN);
            cancel.cancel();
        }
        if tokio::time::timeout(Duration::from_secs(60), builds.wait())
            .await
            .is_err()
        {
            tracing::warn!("builds did not stop within a minute of being cancelled");
        }
    }
    http_stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Ping systemd's watchdog at half its interval, when `WatchdogSec=` is set.
fn watchdog_pinger(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let every = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }))
}

/// Claim jobs while there are free slots, and run each.
async fn schedule(d: Arc<Daemon>, stop: CancellationToken, builds: TaskTracker) {
    let runner = loop {
        match DockerRunner::connect().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the Docker engine; no builds until it answers (retrying every 10s)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    // Containers of this state directory's runs that died with an earlier process.
    match runner
        .remove_labelled(worker::LABEL_INSTANCE, &d.instance)
        .await
    {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(containers = %gone.join(", "), "removed containers left by an earlier run")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot look for leftover containers"),
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(d.config().concurrency));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let claim = loop {
            if stop.is_cancelled() {
                return;
            }
            match d.store.claim(&d.host_id, d.lease).await {
                Ok(Some(c)) => break c,
                Ok(None) => {
                    tokio::select! {
                        _ = d.wake_scheduler.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim jobs; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        if stop.is_cancelled() {
            // Claimed while stopping: give it straight back.
            let _ = d.store.release(&claim.lease).await;
            return;
        }
        let cancel = CancellationToken::new();
        let why = StopReason::default();
        let id = (claim.lease.build_id.clone(), claim.lease.fence);
        crate::sync::lock(&d.running).insert(id.clone(), (cancel.clone(), why.clone()));
        let (d2, runner) = (d.clone(), runner.clone());
        builds.spawn(async move {
            worker::run(d2.clone(), claim, runner, cancel, why).await;
            crate::sync::lock(&d2.running).remove(&id);
            drop(permit);
        });
    }
}

/// Send queued commit statuses, oldest first, spaced and retried by the GitHub client.
async fn send_statuses(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        let batch = match d
            .store
            .claim_statuses(&d.host_id, Duration::from_secs(120), 20)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the status outbox");
                Vec::new()
            }
        };
        let idle = batch.is_empty();
        for s in batch {
            if stop.is_cancelled() {
                return;
            }
            let Some(gh) = d.github() else {
                let _ = d
                    .store
                    .status_sent(s.id, false, Duration::from_secs(60))
                    .await;
                continue;
            };
            let Some((owner, name)) = s.repo.split_once('/') else {
                let _ = d.store.status_sent(s.id, true, Duration::ZERO).await;
                continue;
            };
            // Claimed before by a sender that died: it may be on GitHub already. Look first,
            // so a crash never makes a second terminal status.
            if s.claims > 1 {
                let desc = crate::text::truncate(&s.status.description, 140);
                let already = gh.statuses(owner, name, &s.commit).await.is_ok_and(|list| {
                    list.iter().any(|(c, st, d)| {
                        *c == s.status.context && *st == s.status.state && *d == desc
                    })
                });
                if already {
                    tracing::info!(context = %s.status.context, state = %s.status.state, "commit status already on GitHub (sent before a restart)");
                    let _ = d.store.status_sent(s.id, true, Duration::ZERO).await;
                    continue;
                }
            }
            let sent = tokio::select! {
                r = gh.create_status(owner, name, &s.commit, &s.status) => r,
                _ = stop.cancelled() => return,
            };
            match sent {
                Ok(()) => {
                    tracing::info!(repo = %s.repo, commit = %s.commit, context = %s.status.context, state = %s.status.state, "commit status sent");
                    d.metrics
                        .statuses
                        .get_or_create(&Metrics::label("sent"))
                        .inc();
                    let _ = d.store.status_sent(s.id, true, Duration::ZERO).await;
                }
                Err(e) if e.is_retryable() => {
                    let wait = match &e {
                        github::GitHubError::RateLimited { until } => {
                            until.saturating_duration_since(std::time::Instant::now())
                        }
                        _ => Duration::from_secs(5 << s.attempts.min(7)),
                    };
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "commit status not sent; will retry");
                    d.metrics
                        .statuses
                        .get_or_create(&Metrics::label("failed"))
                        .inc();
                    let _ = d.store.status_sent(s.id, false, wait).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, context = %s.status.context, "GitHub refused a commit status; dropping it");
                    d.metrics
                        .statuses
                        .get_or_create(&Metrics::label("failed"))
                        .inc();
                    let _ = d.store.status_sent(s.id, true, Duration::ZERO).await;
                }
            }
        }
        if idle {
            tokio::select! {
                _ = d.wake_outbox.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Tag published builds for refs that reached them after they finished.
async fn retagger(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        worker::retag_pending(&d, &stop).await;
        tokio::select! {
            _ = d.wake_retag.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Keep the gauges that come from the state current.
async fn gauges(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        if let Ok(n) = d.store.queue_depth().await {
            d.metrics.queue_depth.set(n as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
