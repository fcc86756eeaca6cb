//! The run stage: a recipe's steps in a container on an exact source tree, handing back the
//! output directory. Knows nothing of layers or registries; it runs, it never publishes.
//!
//! A [`Runner`] is an engine that runs builds. The Docker engine (`docker.rs`, through
//! bollard) is the one there is; [`connect`] is the one place that picks it. It honours
//! `DOCKER_HOST`, so an engine that speaks Docker's API on another socket (Podman's service)
//! works through it; a second engine would be a second file here behind the same trait.

pub mod cache;
mod docker;
mod markers;
mod steplog;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::Observer;
use crate::recipe::BuildSection;

/// An engine that runs builds in containers.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    /// Run a build: its steps in a fresh container on `req.source`, then its output directory
    /// spooled to local disk. Whatever the engine made for it is gone when this returns,
    /// whatever happened (success, failure, timeout, cancellation).
    async fn run(
        &self,
        req: &RunRequest<'_>,
        cancel: &CancellationToken,
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<RunOutput, BuildError>;

    /// The builder image as the engine has it (pulled if it is missing and can be pulled).
    async fn resolve_image(
        &self,
        reference: &str,
        cancel: &CancellationToken,
    ) -> Result<BuilderImage, BuildError>;

    /// Load an image archive in `docker save` format into the engine (`--load`).
    async fn load_archive(
        &self,
        archive: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError>;

    /// Remove every container carrying `label=value` (what a dead run left behind); returns
    /// their names.
    async fn remove_labelled(&self, label: &str, value: &str) -> Result<Vec<String>, BuildError>;

    /// Create a named volume (for a build cache) with these labels.
    async fn create_volume(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), BuildError>;

    /// Whether the named volume exists.
    async fn has_volume(&self, name: &str) -> Result<bool, BuildError>;

    /// Remove a named volume; one that is gone already is fine.
    async fn remove_volume(&self, name: &str) -> Result<(), BuildError>;
}

/// The engine builds run on: Docker's API at `DOCKER_HOST`, else the local socket.
pub async fn connect() -> Result<Arc<dyn Runner>, BuildError> {
    Ok(Arc::new(docker::DockerRunner::connect().await?))
}

/// Label on every container kiln creates, so leftovers can be found:
/// `docker ps -a --filter label=dev.kiln.build`.
pub const LABEL_BUILD: &str = "dev.kiln.build";

/// What the host allows a build, whatever its recipe asks: a recipe may ask for less, never
/// more. The defaults are never unlimited.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Memory in bytes (swap is not added on top). Default: half the host's memory.
    pub memory: u64,
    /// CPUs. Default: the host's count.
    pub cpus: f64,
    /// Processes and threads. Default: 4096.
    pub pids: i64,
    /// Bytes of output collected from the container. Default: 10 GiB.
    pub output: u64,
    /// Bytes of step output kept in the build log. Default: 64 MiB.
    pub log: u64,
    /// Whether a recipe's `network = true` is honoured. Default: no.
    pub allow_network: bool,
}

impl Limits {
    pub const DEFAULT_PIDS: i64 = 4096;
    pub const DEFAULT_OUTPUT: u64 = 10 << 30;
    pub const DEFAULT_LOG: u64 = 64 << 20;

    /// The defaults for this host.
    pub fn host_defaults() -> Limits {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(4 << 30, |kib| kib * 1024);
        Limits {
            memory: total / 2,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            pids: Self::DEFAULT_PIDS,
            output: Self::DEFAULT_OUTPUT,
            log: Self::DEFAULT_LOG,
            allow_network: false,
        }
    }

    /// Memory and CPUs for a recipe: what it asks, capped by these limits.
    pub fn effective(&self, b: &BuildSection) -> (u64, f64) {
        (
            b.memory.map_or(self.memory, |m| m.min(self.memory)),
            b.cpus.map_or(self.cpus, |c| c.min(self.cpus)),
        )
    }
}

/// Capabilities a build keeps: enough to install packages and run as other users inside the
/// container (chown, setuid, setgid, file ownership and permission overrides, signals).
/// Everything else Docker grants by default goes: raw sockets (NET_RAW), device nodes
/// (MKNOD), audit (AUDIT_WRITE), file capabilities (SETFCAP, SETPCAP), chroot (SYS_CHROOT),
/// binding low ports (NET_BIND_SERVICE).
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETGID",
    "SETUID",
    "KILL",
];

/// What to run.
pub struct RunRequest<'a> {
    pub build: &'a BuildSection,
    /// The exact tree copied to the recipe's `workdir`.
    pub source: &'a Path,
    /// SOURCE_DATE_EPOCH, set in the container and used for the copied tree's mtimes.
    pub epoch: u64,
    /// Unique per run (a ULID): names the container and labels it.
    pub build_id: &'a str,
    /// Extra container labels (revision, ...), besides [`LABEL_BUILD`].
    pub labels: BTreeMap<String, String>,
    /// The per-build log file: every step's command and output.
    pub log: &'a Path,
    /// Where to spool the source tar and the outputs.
    pub scratch: &'a Path,
    /// What the host allows.
    pub limits: &'a Limits,
    /// Build caches mounted for this run (none for a cold build).
    pub caches: Vec<cache::CacheMount>,
    /// The builder image as already resolved (the one the caches were named for); else the
    /// runner resolves `build.image` itself.
    pub builder: Option<&'a BuilderImage>,
    /// Source files (relative to `source`) changed since a warm cache was saved, and the
    /// mtime they get instead of `epoch` ([`cache::Taking::fresh`]).
    pub fresh: Option<(&'a std::collections::BTreeSet<Vec<u8>>, u64)>,
}

/// The builder image as the engine resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuilderImage {
    /// The reference from the recipe.
    pub reference: String,
    /// The engine's image ID: the config digest in Docker's classic store, the manifest
    /// digest in the containerd store. Not recorded: it depends on the engine.
    pub id: String,
    /// What the build ran on, named by content: the same image gives the same digest on every
    /// engine ([`content_digest`]). Recorded in annotations and provenance.
    pub digest: String,
    /// Registry digests the engine knows for it, if it was pulled.
    pub repo_digests: Vec<String>,
}

/// The builder's content digest: sha256 of the canonical JSON
/// `{"architecture","diff_ids","env","os","user","variant","working_dir"}` taken from the
/// image (its rootfs layers and the parts of its config a build sees). Docker's classic and
/// containerd image stores give different image IDs for one image; this is the same on both.
pub fn content_digest(
    diff_ids: &[String],
    env: &[String],
    user: &str,
    working_dir: &str,
    os: &str,
    architecture: &str,
    variant: &str,
) -> String {
    let v = serde_json::json!({
        "architecture": architecture,
        "diff_ids": diff_ids,
        "env": env,
        "os": os,
        "user": user,
        "variant": variant,
        "working_dir": working_dir,
    });
    let bytes = crate::json::to_canonical_vec(&v).unwrap_or_default();
    crate::Digest::of(&bytes).to_string()
}

/// The fixed world every build sees, whatever the host: these go into the container.
pub const HOSTNAME: &str = "kiln";
pub const TZ: &str = "UTC";
/// Every step runs under this umask.
pub const UMASK: &str = "022";

/// One step as it ran.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StepRecord {
    /// 1-based.
    pub index: usize,
    pub command: String,
    pub exit_code: i64,
    pub millis: u64,
    /// Whether the step ran with the network.
    pub network: bool,
}

/// A finished run: the output directory, spooled to local disk.
pub struct RunOutput {
    dir: tempfile::TempDir,
    root: PathBuf,
    pub builder: BuilderImage,
    pub steps: Vec<StepRecord>,
    /// Bytes in each mounted cache after the steps (by container path), where the builder
    /// could measure them (`du`).
    pub cache_bytes: BTreeMap<String, u64>,
    /// The caches this run used, for provenance (set by the caller that took them).
    pub caches: Vec<cache::CacheUse>,
    /// The source tree it ran on, where caches were mounted (saved with them).
    pub tree: Option<cache::Manifest>,
}

impl RunOutput {
    /// The collected output directory (the recipe's `output`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the spool lives (removed on drop).
    pub fn spool(&self) -> &Path {
        self.dir.path()
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot talk to the Docker engine ({op}): {source}")]
    Engine {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "builder image {image:?} is not available: it is not in the local engine and pulling it failed ({reason}).\n\
         On a host without registry access, preload it: `docker save {image} -o builder.tar` on a \
         connected host, then `docker load -i builder.tar` here (or build it locally with `docker import`/`docker build` and tag it {image})"
    )]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "pulling builder image {image:?} did not finish within {}; the engine or its registry is slow or unreachable",
        humantime(*after)
    )]
    PullTimeout { image: String, after: Duration },
    #[error(
        "step {index} of {total} failed with exit code {code}: {command}\n--- last output ---\n{tail}"
    )]
    StepFailed {
        index: usize,
        total: usize,
        command: String,
        code: i64,
        tail: String,
    },
    #[error("the build exceeded its timeout of {}; the container was killed", humantime(*after))]
    Timeout { after: Duration },
    #[error(
        "the recipe asks for the network (network = true{}), which this host does not allow{hint}",
        if *step { " on a step" } else { "" }
    )]
    NetworkNotAllowed { hint: &'static str, step: bool },
    #[error(
        "the engine left the build container attached to {networks:?} before a step without the network; refusing to run it"
    )]
    NotOffline { networks: Vec<String> },
    #[error("the build's output exceeds the host's limit of {limit} bytes; nothing was packed")]
    OutputTooLarge { limit: u64 },
    #[error("the build did not produce its output directory {path}")]
    NoOutput { path: String },
    #[error("the build replaced its output directory {path} with a symlink; refusing to follow it")]
    OutputIsSymlink { path: String },
    #[error("collecting the output: {0}")]
    Output(#[from] crate::pack::PackError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build was cancelled")]
    Cancelled,
}

/// The error of an I/O `op` on `path`, for `map_err`.
fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl BuildError {
    /// Whether running the same build again could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            // The engine may be restarting or briefly overloaded.
            BuildError::Engine { source, .. } => !matches!(
                source,
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 400..=499,
                    ..
                }
            ),
            BuildError::PullTimeout { .. } => true,
            BuildError::Io { source, .. } => crate::errors::io_retryable(source),
            BuildError::Output(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_tells_the_truth() {
        let io = |kind| BuildError::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::Error::from(kind),
        };
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_retryable());
        assert!(!io(std::io::ErrorKind::NotFound).is_retryable());
        assert!(io(std::io::ErrorKind::ConnectionReset).is_retryable());
        assert!(io(std::io::ErrorKind::TimedOut).is_retryable());
        let pull = BuildError::PullTimeout {
            image: "x".into(),
            after: Duration::from_secs(300),
        };
        assert!(pull.is_retryable());
        assert!(
            !BuildError::ImageUnavailable {
                image: "x".into(),
                reason: "manifest unknown".into()
            }
            .is_retryable()
        );
        assert!(!BuildError::Cancelled.is_retryable());
    }
}
