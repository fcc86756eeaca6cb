//! `kiln daemon`: the long-running worker. It only composes the library: triggers (forge
//! polls, webhooks, local repositories) queue jobs in the state; a scheduler claims them with
//! a lease and runs the pipeline's plan; results, tags and commit statuses are recorded and
//! sent fenced by that lease. The HTTP side (served by the daemon, written in `http`) reads
//! the state.
//!
//! ```text
//! trigger -> state.enqueue -> scheduler.claim (lease, fence) -> worker: the plan (source,
//!   run, pack, image, [verify], publish, tags) -> state.finish (fenced) -> outbox -> forge
//! ```
//!
//! - `startup.rs`: the state directory, the database, the tasks, the shutdown;
//! - `farm.rs`: this host's heartbeat and the poller role;
//! - `watch.rs`: triggers, and config reloads;
//! - `scheduler.rs`: claims, and the running builds;
//! - `worker/`: one claimed job, its plan and its hooks; `tags.rs` and `status.rs` its
//!   policies; `retag.rs` tags for refs that arrive later;
//! - `outbox.rs`: commit statuses, sent to the forges;
//! - `lease.rs`, `logship.rs`: keeping a lease, shipping a log.

pub mod config;
mod farm;
pub mod lease;
pub mod logship;
mod outbox;
mod retag;
mod scheduler;
mod startup;
pub mod status;
pub mod tags;
pub mod watch;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use farm::ROLE_POLLER;
pub use startup::{open_state, run};

use crate::forge::{Forge, Forges};
use crate::metrics::Metrics;
use crate::publish::Target;
use crate::state::{JobStore, StateError};
use crate::sync::{lock, read, write};
use config::{Config, Repo};
use lease::{LeaseKeeper, StopReason};

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
    Forge(#[from] crate::forge::ForgeError),
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
    /// The config's forges; a reload replaces them.
    forges: RwLock<Forges>,
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
    /// Builds running here, by build id and fencing token (one build can be claimed again
    /// by this host after its lease expired): their tokens and stop reasons.
    running: Mutex<HashMap<(String, i64), (CancellationToken, StopReason)>>,
    /// Held while tags are decided and moved, so two moves of one branch never interleave.
    pub(crate) tag_lock: Arc<tokio::sync::Mutex<()>>,
    /// Held while this host tells the farm which caches it holds (two builds ending at once
    /// would otherwise interleave the replacement).
    pub(crate) warm_lock: tokio::sync::Mutex<()>,
    /// Whether this host leads the polls now (one host of a farm at a time).
    pub(crate) poller: AtomicBool,
    /// Until when the poller role is surely still ours (its lease, less a margin, from when
    /// it was asked for): a renewal that hangs does not keep this host polling.
    pub(crate) poller_until: Mutex<Option<std::time::Instant>>,
    /// When this process started (Unix milliseconds), for the hosts table.
    started_at: i64,
}

impl Daemon {
    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config_tx.borrow().clone()
    }

    /// The config's forges.
    fn forges(&self) -> Forges {
        read(&self.forges).clone()
    }

    /// The forge `repo` lives on.
    pub fn forge(&self, repo: &Repo) -> Option<Arc<dyn Forge>> {
        self.forge_of_kind(repo.forge())
    }

    /// The forge of `kind`, if the config has one.
    pub fn forge_of_kind(&self, kind: &str) -> Option<Arc<dyn Forge>> {
        read(&self.forges).get(kind).cloned()
    }

    /// Whether commit statuses are reported for `repo` (a state name): a repository of the
    /// config whose forge takes them.
    pub fn reports_statuses(&self, repo: &str) -> bool {
        self.config()
            .repos
            .iter()
            .any(|r| r.is_named(repo) && self.forge(r).is_some_and(|f| f.has_statuses()))
    }

    /// The config's entry for `repo` (a state name) and `recipe`.
    pub fn repo(&self, repo: &str, recipe: &str) -> Option<Repo> {
        self.config()
            .repos
            .iter()
            .find(|r| r.is_named(repo) && r.recipe_key() == recipe)
            .cloned()
    }

    /// The forge of a repository named `repo` in the state: its config entry's, else the one
    /// its name's shape belongs to (a repository no longer in the config).
    pub fn forge_of(&self, repo: &str) -> Option<Arc<dyn Forge>> {
        let cfg = self.config();
        let forges = read(&self.forges);
        match cfg.repos.iter().find(|r| r.is_named(repo)) {
            Some(r) => forges.get(r.forge()).cloned(),
            None => forges.claiming(repo).cloned(),
        }
    }

    /// How builds reach registries: the configured registry's CA and `insecure`.
    pub fn registry_options(&self) -> crate::registry::RegistryOptions {
        match &self.config().registry {
            Some(r) => crate::registry::RegistryOptions {
                ca_file: r.ca_file.clone(),
                insecure: r.insecure,
                retry: None,
            },
            None => Default::default(),
        }
    }

    /// Where the daemon publishes: the configured registry, else the local layouts.
    pub fn target(&self) -> Arc<dyn Target> {
        match &self.config().registry {
            Some(r) => Arc::new(crate::publish::Registry {
                prefix: r.url.clone(),
                options: self.registry_options(),
            }),
            None => Arc::new(crate::publish::Layouts {
                root: self.state_dir.join("layout"),
            }),
        }
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

    /// Put a new config in place (what can change without a restart). A config whose forges
    /// cannot be set up is not used: the running one stays.
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
        let running = self.forges();
        match new.forges(&self.store, &self.metrics, Some(&running)) {
            Ok(f) => *write(&self.forges) = f,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the new forge settings; keeping the running config");
                return;
            }
        }
        tracing::info!(repos = new.repos.len(), "config reloaded");
        self.config_tx.send_replace(Arc::new(new));
    }

    /// The builds running here, by build id and fence.
    pub(crate) fn running(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, i64), (CancellationToken, StopReason)>> {
        lock(&self.running)
    }
}
