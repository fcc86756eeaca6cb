//! The build pipeline as separate stages, each a library call with a record between it and
//! the next: [`source`] -> [`run`] -> [`pack`] -> [`image`] -> [`publish_content`] /
//! [`publish_tags`].
//!
//! Every stage takes the [`Build`] (its id, cancellation token, observer and store) and
//! returns a typed [`PipelineError`] that says whether a retry can help. The CLI composes the
//! stages in [`build`]; the daemon composes the same calls and records each stage's outcome.

mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Observer};
use crate::pack::{Compression, PackError};
use crate::recipe::RecipeError;
use crate::registry::RegistryOptions;
use crate::runner::{BuildError, DockerRunner};
use crate::source::{SourceError, SourceInfo, SourceOptions};
use crate::store::{ContentStore, OciLayout, StoreError};

pub use stage::{
    Packed, SourceSpec, Sourced, Target, build_again_and_compare, find_published, image, pack,
    publish_content, publish_tags, resolve_bases, retag, run, source,
};

/// Manifest annotations kiln adds to every artifact.
pub mod annotations {
    pub const REVISION: &str = "org.opencontainers.image.revision";
    pub const SOURCE: &str = "org.opencontainers.image.source";
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// sha256 of the recipe file.
    pub const RECIPE_DIGEST: &str = "dev.kiln.recipe.digest";
    /// The builder image reference from the recipe.
    pub const BUILDER_IMAGE: &str = "dev.kiln.builder.image";
    /// The builder image's content-addressed ID, as the engine resolved it.
    pub const BUILDER_DIGEST: &str = "dev.kiln.builder.digest";
    /// "true" when built from uncommitted changes.
    pub const DIRTY: &str = "dev.kiln.dirty";
}

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

/// One stored artifact, as `--json` reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArtifactResult {
    pub name: String,
    pub kind: String,
    /// The manifest digest.
    pub digest: String,
    /// The manifest size.
    pub size: u64,
    /// The manifest media type.
    pub media_type: String,
    /// Where `--load` put it in the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_as: Option<String>,
    /// Where `--push` put it: `host/repo@sha256:...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_to: Option<String>,
    /// The provenance referrer's manifest digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

impl ArtifactResult {
    /// The manifest's descriptor, to push or tag it.
    pub fn descriptor(&self) -> Result<oci_spec::image::Descriptor, PipelineError> {
        let d: crate::digest::Digest = self
            .digest
            .parse()
            .map_err(|e: crate::digest::DigestParseError| PipelineError::Internal(e.to_string()))?;
        Ok(oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(self.media_type.as_str()),
            self.size,
            d.to_oci(),
        ))
    }
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
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fetching base image {name}: {source}")]
    Base {
        name: String,
        source: Box<crate::registry::PushError>,
    },
    #[error("publishing to {target}: {source}")]
    Push {
        target: String,
        source: Box<crate::registry::PushError>,
    },
    #[error("{}", not_reproducible(.0))]
    NotReproducible(Vec<(String, crate::compare::Comparison)>),
    #[error("{0}")]
    Usage(String),
    /// A condition outside the build that may pass by itself (the state database was busy).
    #[error("{0}")]
    Retryable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn not_reproducible(d: &[(String, crate::compare::Comparison)]) -> String {
    // The first line stands alone (a commit status shows only it); the details follow.
    let mut s = format!(
        "not reproducible: {}",
        d.iter()
            .map(|(name, c)| format!("{name}: {}", c.summary()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    s.push_str("\ntwo builds in fresh containers differ:");
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
            PipelineError::Store(e) => e.is_retryable(),
            PipelineError::Image(crate::image::ImageError::Store(e)) => e.is_retryable(),
            PipelineError::Push { source, .. } | PipelineError::Base { source, .. } => {
                source.is_retryable()
            }
            _ => false,
        }
    }

    /// Whether the build stopped because it was cancelled (Ctrl-C, shutdown).
    pub fn is_cancelled(&self) -> bool {
        use crate::registry::PushError;
        matches!(
            self,
            PipelineError::Build {
                source: BuildError::Cancelled,
                ..
            } | PipelineError::Pack {
                source: PackError::Cancelled,
                ..
            } | PipelineError::Source(SourceError::Cancelled)
                | PipelineError::Source(SourceError::Extract(PackError::Cancelled))
        ) || matches!(self, PipelineError::Push { source, .. } | PipelineError::Base { source, .. } if matches!(**source, PushError::Cancelled))
    }

    /// Whether the failure is the build's own (its recipe, its steps, its outputs) rather
    /// than kiln's or the infrastructure's: a commit status of `failure`, not `error`.
    pub fn is_build_failure(&self) -> bool {
        match self {
            PipelineError::Recipe(_)
            | PipelineError::NoRecipe { .. }
            | PipelineError::Files { .. }
            | PipelineError::NotReproducible(_)
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

/// Run a whole build, everything `kiln build` does: the stages in order, then `--load` and
/// `--push`.
pub async fn build(
    plan: &BuildPlan,
    runner: &DockerRunner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<BuildResult, PipelineError> {
    if let Some(p) = &plan.push {
        for t in &p.tags {
            crate::store::validate_tag(t)?;
        }
    }
    let output_layout = OciLayout::open_or_create(&plan.layout)?;
    let logs = output_layout.root().join(".kiln").join("logs");
    let scratch = output_layout.scratch()?;
    // With --verify, both builds go to scratch layouts; the output layout receives the
    // artifacts only once they proved reproducible.
    let verify_dirs = if plan.verify {
        std::fs::create_dir_all(&scratch).map_err(|source| StoreError::Io {
            op: "create directory",
            path: scratch.clone(),
            source,
        })?;
        Some((
            tempfile::Builder::new()
                .prefix("verify-a-")
                .tempdir_in(&scratch)
                .map_err(|source| StoreError::Io {
                    op: "create a directory in",
                    path: scratch.clone(),
                    source,
                })?,
            tempfile::Builder::new()
                .prefix("verify-b-")
                .tempdir_in(&scratch)
                .map_err(|source| StoreError::Io {
                    op: "create a directory in",
                    path: scratch.clone(),
                    source,
                })?,
        ))
    } else {
        None
    };
    let layout = match &verify_dirs {
        Some((a, _)) => OciLayout::open_or_create(a.path())?,
        None => output_layout.clone(),
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
    let spec = SourceSpec::Dir {
        dir: plan.dir.clone(),
        options: plan.source.clone(),
    };
    let sourced = source(&b, &spec, plan.recipe.as_deref()).await?;
    let info = sourced.checkout.info.clone();
    // Refuse before building what could not be pushed.
    if let Some(p) = &plan.push
        && info.revision.is_none()
        && p.tags.is_empty()
    {
        return Err(PipelineError::Usage(
            "a plain directory has no commit to tag with: pass --tag".into(),
        ));
    }
    let mut labels = BTreeMap::new();
    if let Some(r) = &info.revision {
        labels.insert("dev.kiln.revision".to_owned(), r.clone());
    }
    let output = run(&b, &sourced, runner, labels.clone()).await?;
    let packed = pack(&b, &sourced, &output, plan.compression).await?;
    let bases = resolve_bases(&b, &sourced.recipe, &plan.registry, &BTreeMap::new()).await?;
    let mut artifacts = image(
        &b,
        &sourced,
        &output,
        &packed,
        &bases,
        plan.compression,
        &plan.builder_id,
    )
    .await?;
    drop(output);
    if let Some((_, again)) = &verify_dirs {
        build_again_and_compare(
            &b,
            &sourced,
            runner,
            labels,
            plan.compression,
            &bases,
            &artifacts,
            OciLayout::open_or_create(again.path())?,
        )
        .await?;
        // Reproducible: now the artifacts (and their provenance) go to the output layout.
        for a in &artifacts {
            output_layout.import(&b.layout, &a.descriptor()?)?;
        }
        b.layout = output_layout;
    }
    for a in &artifacts {
        let desc = a.descriptor()?;
        b.layout.tag(Some(&a.name), &desc)?;
        b.observer.event(&Event::ImageWritten {
            digest: crate::image::descriptor_digest(&desc)
                .map_err(|e| PipelineError::Internal(e.to_string()))?,
            tag: Some(a.name.clone()),
        });
    }
    if plan.load {
        load(&b, runner, &sourced, &mut artifacts).await?;
    }
    if let Some(p) = &plan.push {
        // A dirty build never takes its commit's tag: that belongs to the committed tree.
        let suffix = if info.dirty { "-dirty" } else { "" };
        let mut tags: Vec<String> = info
            .revision
            .iter()
            .map(|r| format!("{r}{suffix}"))
            .collect();
        tags.extend(p.tags.iter().cloned());
        let target = Target::Registry {
            prefix: p.prefix.clone(),
            options: p.options.clone(),
        };
        for a in &mut artifacts {
            a.pushed_to = Some(publish_content(&b, &target, a).await?);
            publish_tags(&b, &target, a, &tags).await?;
        }
    }
    Ok(BuildResult {
        source: info,
        artifacts,
        log: b.log.clone(),
    })
}

/// `--load`: image artifacts into the engine as `kiln/<name>:<short commit>`.
async fn load(
    b: &Build,
    runner: &DockerRunner,
    sourced: &Sourced,
    artifacts: &mut [ArtifactResult],
) -> Result<(), PipelineError> {
    let info = &sourced.checkout.info;
    for r in artifacts.iter_mut() {
        if r.kind != crate::recipe::ArtifactKind::Image.to_string() {
            continue;
        }
        let tag = format!("kiln/{}:{}", r.name, short_tag(info, &r.digest));
        let archive = b.scratch.join(format!("load-{}-{}.tar", b.run_id, r.name));
        let digest: crate::digest::Digest = r
            .digest
            .parse()
            .map_err(|e: crate::digest::DigestParseError| PipelineError::Internal(e.to_string()))?;
        {
            let (layout, archive, tag) = (b.layout.clone(), archive.clone(), tag.clone());
            stage::blocking(move || -> Result<(), PipelineError> {
                let f = std::fs::File::create(&archive).map_err(|source| StoreError::Io {
                    op: "create",
                    path: archive.clone(),
                    source,
                })?;
                crate::image::write_docker_archive(
                    &layout,
                    &digest,
                    &tag,
                    std::io::BufWriter::new(f),
                )?;
                Ok(())
            })
            .await??;
        }
        let loaded = runner.load_archive(&archive, &b.cancel).await;
        let _ = std::fs::remove_file(&archive);
        loaded.map_err(|source| PipelineError::Build {
            source,
            log: b.log.clone(),
        })?;
        r.loaded_as = Some(tag);
    }
    Ok(())
}

/// Base layers that can be mounted from the base's repository: when the base lives in the
/// registry being pushed to, its layers (the first `dev.kiln.base.layers`) need no upload.
pub fn base_mounts(
    manifest: &[u8],
    target: &crate::reference::Reference,
) -> std::collections::HashMap<crate::digest::Digest, String> {
    let mut out = std::collections::HashMap::new();
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return out;
    };
    let ann = &m["annotations"];
    let (Some(name), Some(n)) = (
        ann[crate::image::ANNOTATION_BASE_NAME].as_str(),
        ann[crate::image::ANNOTATION_BASE_LAYERS]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok()),
    ) else {
        return out;
    };
    let Ok(base) = name.parse::<crate::reference::Reference>() else {
        return out;
    };
    if base.registry != target.registry {
        return out;
    }
    for l in m["layers"].as_array().into_iter().flatten().take(n) {
        if let Some(d) = l["digest"].as_str().and_then(|d| d.parse().ok()) {
            out.insert(d, base.repository.clone());
        }
    }
    out
}

/// The engine tag for `--load`: the short commit, else the short manifest digest.
fn short_tag(info: &SourceInfo, digest: &str) -> String {
    match &info.revision {
        Some(r) => r[..12.min(r.len())].to_owned(),
        None => digest.trim_start_matches("sha256:")[..12].to_owned(),
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
