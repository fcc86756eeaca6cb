//! The build pipeline: a module per stage, each a library call with a record between it and
//! the next ([`stages`]: source, run, pack, image), composed once by a [`Plan`] that also
//! verifies, keeps, loads and publishes. `kiln build` ([`build`]), `kiln verify` and the
//! daemon's worker all run a plan; they differ in its steps and its [`Hooks`].
//!
//! Every stage takes the [`Build`] (its id, cancellation token, observer and store) and
//! returns a typed [`PipelineError`] that says whether a retry can help.

mod build;
mod files;
mod plan;
mod stages;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::events::Observer;
use crate::pack::PackError;
use crate::publish::PublishError;
use crate::recipe::RecipeError;
use crate::runner::BuildError;
use crate::source::SourceError;
use crate::store::{OciLayout, StoreError};

pub use build::{BuildPlan, BuildResult, PushPlan, build};
pub use plan::{
    Built, CachePlan, Hooks, LABEL_REVISION, NoHooks, Plan, Publication, Stage, StageEnd, Tags,
};
pub use stages::{FetchSpec, Fetched, Locate, Packed, SourceSpec, Sourced};

/// One build in progress: what every stage shares.
pub struct Build {
    /// The build's id: names its log, and its provenance's invocation.
    pub id: String,
    /// This attempt's id: names its container (a retried build gets a new one).
    pub run_id: String,
    /// Where the build's blobs go: the output layout for `kiln build`, a staging layout for
    /// the daemon.
    pub layout: OciLayout,
    /// Scratch space on the layout's filesystem (source trees, spooled outputs).
    pub scratch: PathBuf,
    /// The per-build log: every step's command and output.
    pub log: PathBuf,
    pub cancel: CancellationToken,
    pub observer: Arc<dyn Observer + Send + Sync>,
    /// Unix seconds, for provenance.
    pub started: u64,
    /// What the host allows the build (memory, CPUs, pids, output, log, network).
    pub limits: crate::runner::Limits,
}

impl Build {
    /// A build writing into `layout`, logging to `logs/<id>.log`.
    pub fn new(
        id: String,
        layout: OciLayout,
        logs: &Path,
        cancel: CancellationToken,
        observer: Arc<dyn Observer + Send + Sync>,
    ) -> Result<Build, PipelineError> {
        let scratch = layout.scratch()?;
        for d in [&scratch, &logs.to_owned()] {
            std::fs::create_dir_all(d).map_err(|source| StoreError::Io {
                op: "create directory",
                path: d.clone(),
                source,
            })?;
        }
        Ok(Build {
            log: logs.join(format!("{id}.log")),
            run_id: crate::ids::new_id(),
            id,
            layout,
            scratch,
            cancel,
            observer,
            started: unix_now(),
            limits: crate::runner::Limits::host_defaults(),
        })
    }
}

/// Why a build failed, by stage.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("no recipe: {} does not exist (in the committed tree); commit a kiln.toml or pass --recipe", path.display())]
    NoRecipe { path: PathBuf },
    #[error("{}", build_message(.source, .log))]
    Build { source: BuildError, log: PathBuf },
    #[error("artifact {artifact:?}: {reason}")]
    Files { artifact: String, reason: String },
    #[error("artifact {artifact:?}: {source}")]
    Pack { artifact: String, source: PackError },
    /// The artifact's SBOM could not be made (a binary could not be read).
    #[error("artifact {artifact:?}: the SBOM: {source}")]
    Sbom {
        artifact: String,
        source: crate::sbom::SbomError,
    },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fetching base image {name}: {source}")]
    Base {
        name: String,
        source: Box<crate::registry::PushError>,
    },
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The commit could not be fetched from `url`.
    #[error("{source}")]
    Fetch { url: String, source: SourceError },
    #[error("{}", not_reproducible(.0))]
    NotReproducible(Vec<(String, crate::compare::Comparison)>),
    /// A build with caches differs from the cold rebuild of the same commit.
    #[error("{}", cache_changed(.0))]
    CacheChangedOutput(Vec<(String, crate::compare::Comparison)>),
    #[error(transparent)]
    Cache(#[from] crate::runner::cache::CacheError),
    #[error("{0}")]
    Usage(String),
    /// A condition outside the build that may pass by itself (the state database was busy).
    #[error("{0}")]
    Retryable(String),
    /// The host lost the right to publish this build (a daemon's lease): nothing more of it
    /// may be recorded or published.
    #[error("{0}")]
    Fenced(String),
    /// A hook found the source unfit to build (a rebuild whose recipe is not the recorded
    /// one).
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A record's digest that does not parse: kiln wrote it, so it is kiln's bug.
impl From<crate::digest::DigestParseError> for PipelineError {
    fn from(e: crate::digest::DigestParseError) -> Self {
        PipelineError::Internal(e.to_string())
    }
}

fn not_reproducible(d: &[(String, crate::compare::Comparison)]) -> String {
    differ_message(
        d,
        "",
        |name, summary| format!("{name}: {summary}"),
        "two builds in fresh containers differ:",
    )
}

fn cache_changed(d: &[(String, crate::compare::Comparison)]) -> String {
    differ_message(
        d,
        "the cache changed the output: ",
        |name, summary| format!("{summary} (artifact {name})"),
        "the build with caches and the cold rebuild of the same commit differ (the caches are discarded):",
    )
}

/// `not reproducible: <cause><each artifact's summary>`, alone on the first line (a commit
/// status shows only it), then `details` and each artifact's differences.
fn differ_message(
    d: &[(String, crate::compare::Comparison)],
    cause: &str,
    each: impl Fn(&str, String) -> String,
    details: &str,
) -> String {
    let mut s = format!(
        "not reproducible: {cause}{}",
        d.iter()
            .map(|(name, c)| each(name, c.summary()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    s.push('\n');
    s.push_str(details);
    for (name, c) in d {
        s.push_str(&format!("\nartifact {name}:\n{}", c.text()));
    }
    s.trim_end().to_owned()
}

fn build_message(e: &BuildError, log: &Path) -> String {
    if log.is_file() {
        format!("{e}\n(full build log: {})", log.display())
    } else {
        e.to_string()
    }
}

impl PipelineError {
    /// Whether running the same build again could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Retryable(_) => true,
            PipelineError::Source(e) => e.is_retryable(),
            PipelineError::Build { source, .. } => source.is_retryable(),
            PipelineError::Pack { source, .. } => source.is_retryable(),
            PipelineError::Sbom { source, .. } => source.is_retryable(),
            PipelineError::Store(e) => e.is_retryable(),
            PipelineError::Image(crate::image::ImageError::Store(e)) => e.is_retryable(),
            PipelineError::Base { source, .. } => source.is_retryable(),
            PipelineError::Publish(e) => e.is_retryable(),
            PipelineError::Fetch { source, .. } => source.is_retryable(),
            PipelineError::Cache(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the build stopped because it was cancelled (Ctrl-C, shutdown).
    pub fn is_cancelled(&self) -> bool {
        use crate::registry::PushError;
        match self {
            PipelineError::Build {
                source: BuildError::Cancelled,
                ..
            }
            | PipelineError::Pack {
                source: PackError::Cancelled,
                ..
            }
            | PipelineError::Source(SourceError::Cancelled)
            | PipelineError::Fetch {
                source: SourceError::Cancelled,
                ..
            }
            | PipelineError::Source(SourceError::Extract(PackError::Cancelled)) => true,
            PipelineError::Base { source, .. } => matches!(**source, PushError::Cancelled),
            PipelineError::Publish(e) => e.is_cancelled(),
            _ => false,
        }
    }

    /// Whether the failure is the build's own (its recipe, its steps, its outputs) rather
    /// than kiln's or the infrastructure's: a commit status of `failure`, not `error`.
    pub fn is_build_failure(&self) -> bool {
        match self {
            PipelineError::Recipe(_)
            | PipelineError::NoRecipe { .. }
            | PipelineError::Files { .. }
            | PipelineError::NotReproducible(_)
            | PipelineError::CacheChangedOutput(_)
            | PipelineError::Usage(_) => true,
            PipelineError::Build { source, .. } => matches!(
                source,
                BuildError::StepFailed { .. }
                    | BuildError::NetworkNotAllowed { .. }
                    | BuildError::OutputTooLarge { .. }
                    | BuildError::Timeout { .. }
                    | BuildError::NoOutput { .. }
                    | BuildError::OutputIsSymlink { .. }
                    | BuildError::Output(PackError::BadTar(_))
                    | BuildError::Output(PackError::Unsupported { .. })
            ),
            PipelineError::Pack { source, .. } => {
                matches!(source, PackError::Unsupported { .. } | PackError::BadTar(_))
            }
            _ => false,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
