//! `kiln build`: a [`Plan`] over a project directory, kept in an OCI layout, optionally
//! checked by a second build, loaded into the engine and pushed.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::plan::{NoHooks, Plan, Publication, Tags};
use super::stages::SourceSpec;
use super::{Build, PipelineError};
use crate::artifact::ArtifactResult;
use crate::events::Observer;
use crate::pack::Compression;
use crate::registry::RegistryOptions;
use crate::runner::Runner;
use crate::source::{SourceInfo, SourceOptions};
use crate::store::{OciLayout, StoreError};

/// What to build and where to put it: everything `kiln build` does.
#[derive(Clone, Debug)]
pub struct BuildPlan {
    /// The project directory (a git work tree or a plain directory).
    pub dir: PathBuf,
    /// A recipe file to use instead of `kiln.toml` in the committed tree.
    pub recipe: Option<PathBuf>,
    /// The OCI layout to write.
    pub layout: PathBuf,
    pub source: SourceOptions,
    pub compression: Compression,
    /// Load image artifacts into the engine as `kiln/<name>:<tag>`.
    pub load: bool,
    /// Who is building, for provenance: a stable identity of this build host.
    pub builder_id: String,
    /// Push each artifact to a registry after it is stored.
    pub push: Option<PushPlan>,
    /// How to reach registries for base images.
    pub registry: RegistryOptions,
    /// Build twice, in two fresh containers, and compare before storing or pushing anything.
    pub verify: bool,
    /// What the host allows the build.
    pub limits: crate::runner::Limits,
    /// The key that signs the provenance (and, with `verify`, the verdict).
    pub signer: Option<Arc<crate::attest::sign::Signer>>,
    /// Mount the recipe's build caches from here (`--cache`); none: the build runs cold.
    pub caches: Option<crate::runner::cache::Caches>,
}

/// `--push PREFIX [--tag T]...`.
#[derive(Clone, Debug)]
pub struct PushPlan {
    /// `host[:port]/path`: artifact `name` goes to `PREFIX/name`.
    pub prefix: String,
    /// Tags besides the full commit SHA.
    pub tags: Vec<String>,
    pub options: RegistryOptions,
}

/// A finished build.
#[derive(Clone, Debug, Serialize)]
pub struct BuildResult {
    pub source: SourceInfo,
    pub artifacts: Vec<ArtifactResult>,
    /// The per-build log.
    #[serde(skip)]
    pub log: PathBuf,
}

/// Run a whole build, everything `kiln build` does: the plan with the output layout kept,
/// `--verify`, `--load` and `--push` as asked.
pub async fn build(
    plan: &BuildPlan,
    runner: &dyn Runner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<BuildResult, PipelineError> {
    if let Some(p) = &plan.push {
        for t in &p.tags {
            crate::store::validate_tag(t)?;
        }
    }
    let output = OciLayout::open_or_create(&plan.layout)?;
    let logs = output.root().join(".kiln").join("logs");
    let scratch = output.scratch()?;
    // With --verify, the first build goes to a scratch layout (the second makes its own); the
    // output layout receives the artifacts only once they proved reproducible.
    let first = match plan.verify {
        true => Some(
            tempfile::Builder::new()
                .prefix("verify-a-")
                .tempdir_in(&scratch)
                .map_err(|source| StoreError::Io {
                    op: "create a directory in",
                    path: scratch.clone(),
                    source,
                })?,
        ),
        false => None,
    };
    let layout = match &first {
        Some(a) => OciLayout::open_or_create(a.path())?,
        None => output.clone(),
    };
    let mut b = Build::new(
        crate::ids::new_id(),
        layout,
        &logs,
        cancel.clone(),
        observer,
    )?;
    b.scratch = scratch;
    b.limits = plan.limits.clone();
    let p = Plan {
        source: SourceSpec::Dir {
            dir: plan.dir.clone(),
            options: plan.source.clone(),
        },
        recipe_file: plan.recipe.clone(),
        compression: plan.compression,
        builder_id: plan.builder_id.clone(),
        signer: plan.signer.clone(),
        registry: plan.registry.clone(),
        pins: Default::default(),
        labels: Default::default(),
        verify: plan.verify,
        keep: Some(output),
        load: plan.load,
        publish: plan.push.as_ref().map(|p| Publication {
            target: Arc::new(crate::publish::Registry {
                prefix: p.prefix.clone(),
                options: p.options.clone(),
            }),
            tags: Tags::Commit(p.tags.clone()),
        }),
        // A work tree's caches are its own: named by its canonical path.
        caches: plan.caches.clone().map(|caches| super::plan::CachePlan {
            caches,
            repo: format!(
                "file://{}",
                plan.dir
                    .canonicalize()
                    .unwrap_or_else(|_| plan.dir.clone())
                    .display()
            ),
        }),
    };
    let built = p.run(&b, runner, &NoHooks).await?;
    Ok(BuildResult {
        source: built.source,
        artifacts: built.artifacts,
        log: b.log.clone(),
    })
}
