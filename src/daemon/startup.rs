//! Starting the daemon (its state directory, its database, its tasks) and stopping it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{Config, Database};
use super::lease::{LeaseKeeper, STOP_SHUTDOWN};
use super::{Daemon, DaemonError};
use crate::metrics::Metrics;
use crate::state::{JobStore, PgStore, SqliteStore};

/// Builds the HTTP side's router over the daemon; its streams end when the token fires.
pub type Http = fn(Arc<Daemon>, CancellationToken) -> axum::Router;

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
/// `shutdown` resolves, serving `http`'s router; then stop taking jobs, give running builds
/// the configured grace, cancel what is left (their jobs go back to the queue) and return.
pub async fn run(
    config: Config,
    config_path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
    http: Http,
) -> Result<(), DaemonError> {
    let state_dir = config.state_dir.clone();
    let (_lock, instance) = prepare(&state_dir)?;
    tokio::pin!(shutdown);
    let Some((store, keeper, requeued)) =
        connect_waiting(&config, &instance, &mut shutdown).await?
    else {
        return Ok(());
    };
    if let Database::Postgres { url, .. } = &config.database {
        tracing::info!(database = %crate::state::redacted_url(url), "the state is the farm's PostgreSQL");
    }
    if requeued > 0 {
        tracing::info!(
            jobs = requeued,
            "builds this host was running when it stopped go back to the queue"
        );
    }
    let d = Arc::new(daemon(&config, store, keeper, instance)?);
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: listen,
            source,
        })?;
    let (stop, http_stop) = (CancellationToken::new(), CancellationToken::new());
    let tasks = TaskTracker::new();
    {
        let (router, hs) = (http(d.clone(), http_stop.clone()), http_stop.clone());
        tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { hs.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
    }
    super::farm::farm_beat(&d).await;
    tasks.spawn(super::watch::triggers(d.clone(), stop.clone()));
    tasks.spawn(super::watch::reload_on_change(
        d.clone(),
        config_path.to_owned(),
        stop.clone(),
    ));
    tasks.spawn(super::outbox::send_statuses(d.clone(), stop.clone()));
    tasks.spawn(super::retag::retagger(d.clone(), stop.clone()));
    tasks.spawn(super::scheduler::gauges(d.clone(), stop.clone()));
    tasks.spawn(super::farm::farm(d.clone(), stop.clone()));
    let builds = TaskTracker::new();
    let scheduler = tokio::spawn(super::scheduler::schedule(
        d.clone(),
        stop.clone(),
        builds.clone(),
    ));
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
    finish_builds(&d, builds, config.shutdown_grace).await;
    http_stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The state directory, made and held for this process; its identity. Whatever a crashed
/// run left in its scratch space is garbage now.
fn prepare(state_dir: &Path) -> Result<(File, String), DaemonError> {
    for sub in ["", "logs", "git", "tmp", "layout"] {
        mkdir(&state_dir.join(sub))?;
    }
    let lock = lock_state_dir(state_dir)?;
    let instance = instance_id(state_dir)?;
    if let Ok(entries) = std::fs::read_dir(state_dir.join("tmp")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok((lock, instance))
}

/// [`connect`], waiting for a database that is down (restarting, unreachable) rather than
/// exiting into a restart loop; a wrong password or schema is an error. `None` if `shutdown`
/// came first.
async fn connect_waiting(
    config: &Config,
    instance: &str,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Option<(Arc<dyn JobStore>, LeaseKeeper, u64)>, DaemonError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match connect(config, instance).await {
            Ok(s) => return Ok(Some(s)),
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
                    _ = shutdown.as_mut() => return Ok(None),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The daemon's shared state over its store: metrics, the config's forges, the wake-ups.
fn daemon(
    config: &Config,
    store: Arc<dyn JobStore>,
    keeper: LeaseKeeper,
    instance: String,
) -> Result<Daemon, DaemonError> {
    let metrics = Arc::new(Metrics::new());
    crate::forge::register_metrics(&metrics);
    let forges = config.forges(&store, &metrics, None)?;
    Ok(Daemon {
        config_tx: tokio::sync::watch::Sender::new(Arc::new(config.clone())),
        started_at: store.clock_ms(),
        store,
        metrics,
        forges: RwLock::new(forges),
        host_id: config.host_id.clone(),
        instance,
        state_dir: config.state_dir.clone(),
        lease: config.lease,
        keeper,
        wake_scheduler: Notify::new(),
        wake_outbox: Notify::new(),
        wake_retag: Notify::new(),
        pokes: tokio::sync::broadcast::channel(256).0,
        running: Mutex::new(HashMap::new()),
        tag_lock: Arc::new(tokio::sync::Mutex::new(())),
        warm_lock: tokio::sync::Mutex::new(()),
        poller: AtomicBool::new(false),
        poller_until: Mutex::new(None),
    })
}

/// Give running builds `grace` to finish, then cancel what is left (their jobs go back to
/// the queue) and give that a minute.
async fn finish_builds(d: &Daemon, builds: TaskTracker, grace: Duration) {
    builds.close();
    if builds.is_empty() || tokio::time::timeout(grace, builds.wait()).await.is_ok() {
        return;
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "grace period over: cancelling running builds"
    );
    for (_, (cancel, why)) in d.running().iter() {
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
