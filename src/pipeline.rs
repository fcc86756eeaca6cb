//! `kiln build` as one library call: source -> recipe -> container build -> pack -> image ->
//! store (-> engine). The CLI and the daemon drive this; it owns no process-global state.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::{Event, Observer};
use crate::image::{ImageError, ImageSpec, Platform, RunConfig};
use crate::pack::{Compression, PackError, PackOptions};
use crate::recipe::{Artifact, ArtifactKind, FileMapping, Recipe, RecipeError};
use crate::runner::{BuildError, BuildRequest, DockerRunner};
use crate::source::{SourceError, SourceInfo, SourceOptions};
use crate::store::{OciLayout, Store, StoreError};

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

/// What to build and where to put it.
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
    pub registry: crate::registry::RegistryOptions,
}

/// `--push PREFIX [--tag T]...`.
#[derive(Clone, Debug)]
pub struct PushPlan {
    /// `host[:port]/path`: artifact `name` goes to `PREFIX/name`.
    pub prefix: String,
    /// Tags besides the full commit SHA.
    pub tags: Vec<String>,
    pub options: crate::registry::RegistryOptions,
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
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fetching base image {name}: {source}")]
    Base {
        name: String,
        source: Box<crate::registry::PushError>,
    },
    #[error("pushing {target}: {source}")]
    Push {
        target: String,
        source: Box<crate::registry::PushError>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("internal error: {0}")]
    Internal(String),
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
            PipelineError::Build { source, .. } => source.is_retryable(),
            PipelineError::Pack { source, .. } => source.is_retryable(),
            PipelineError::Store(e) => e.is_retryable(),
            PipelineError::Push { source, .. } | PipelineError::Base { source, .. } => {
                source.is_retryable()
            }
            _ => false,
        }
    }

    /// Whether the build stopped because it was cancelled (Ctrl-C, shutdown).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            PipelineError::Build {
                source: BuildError::Cancelled,
                ..
            } | PipelineError::Pack {
                source: PackError::Cancelled,
                ..
            } | PipelineError::Source(SourceError::Extract(PackError::Cancelled))
        )
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))
}

/// Run a whole build: everything `kiln build` does.
pub async fn build(
    plan: &BuildPlan,
    runner: &DockerRunner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<BuildResult, PipelineError> {
    let started = unix_now();
    if let Some(p) = &plan.push {
        for t in &p.tags {
            crate::store::validate_tag(t)?;
        }
    }
    let layout = OciLayout::open_or_create(&plan.layout)?;
    let scratch = layout.root().join(".kiln").join("tmp");
    fs::create_dir_all(&scratch).map_err(|source| StoreError::Io {
        op: "create directory",
        path: scratch.clone(),
        source,
    })?;

    let checkout = {
        let (dir, opts, scratch, cancel) = (
            plan.dir.clone(),
            plan.source.clone(),
            scratch.clone(),
            cancel.clone(),
        );
        blocking(move || crate::source::open(&dir, &opts, &scratch, &cancel)).await??
    };
    let info = checkout.info.clone();
    // Refuse before building what could not be pushed.
    if let Some(p) = &plan.push
        && info.revision.is_none()
        && p.tags.is_empty()
    {
        return Err(PipelineError::Usage(
            "a plain directory has no commit to tag with: pass --tag".into(),
        ));
    }
    let recipe_path = plan
        .recipe
        .clone()
        .unwrap_or_else(|| checkout.tree().join("kiln.toml"));
    if !recipe_path.is_file() {
        let shown = plan
            .recipe
            .clone()
            .unwrap_or_else(|| plan.dir.join("kiln.toml"));
        return Err(PipelineError::NoRecipe { path: shown });
    }
    let recipe = Recipe::load(&recipe_path)?;

    let short = info
        .revision
        .as_deref()
        .map_or("dir".to_owned(), |r| r[..12.min(r.len())].to_owned());
    let build_id = format!("{short}-{}-{}", unix_now(), std::process::id());
    let logs = layout.root().join(".kiln").join("logs");
    fs::create_dir_all(&logs).map_err(|source| StoreError::Io {
        op: "create directory",
        path: logs.clone(),
        source,
    })?;
    let log = logs.join(format!("{build_id}.log"));
    let mut labels = BTreeMap::new();
    if let Some(r) = &info.revision {
        labels.insert("dev.kiln.revision".to_owned(), r.clone());
    }
    let span = tracing::info_span!("build", id = %build_id, revision = info.revision.as_deref().unwrap_or("-"));
    let req = BuildRequest {
        build: &recipe.build,
        source: checkout.tree(),
        epoch: info.epoch,
        build_id: &build_id,
        labels,
        log: &log,
        scratch: &scratch,
    };
    let output = runner
        .run(&req, cancel, observer.as_ref())
        .instrument(span)
        .await
        .map_err(|source| PipelineError::Build {
            source,
            log: log.clone(),
        })?;
    drop(checkout);

    let mut common = BTreeMap::new();
    if let Some(r) = &info.revision {
        common.insert(annotations::REVISION.to_owned(), r.clone());
    }
    if let Some(u) = &info.url {
        common.insert(annotations::SOURCE.to_owned(), u.clone());
    }
    common.insert(
        annotations::RECIPE_DIGEST.to_owned(),
        recipe.digest.to_string(),
    );
    common.insert(
        annotations::BUILDER_IMAGE.to_owned(),
        output.builder.reference.clone(),
    );
    common.insert(
        annotations::BUILDER_DIGEST.to_owned(),
        output.builder.id.clone(),
    );
    if info.dirty {
        common.insert(annotations::DIRTY.to_owned(), "true".to_owned());
    }

    let mut artifacts = Vec::new();
    for artifact in &recipe.artifacts {
        let base = match &artifact.base {
            Some(name) => Some(
                crate::registry::base::fetch(name, &Platform::host(), &layout, &plan.registry)
                    .await
                    .map_err(|source| PipelineError::Base {
                        name: name.clone(),
                        source: Box::new(source),
                    })?,
            ),
            None => None,
        };
        let base_ref = base.as_ref().map(|b| (b.name.clone(), b.digest));
        let desc = {
            let (artifact, layout, root, spool) = (
                artifact.clone(),
                layout.clone(),
                output.root().to_owned(),
                output.spool().to_owned(),
            );
            let (info, common, cancel, observer, compression) = (
                info.clone(),
                common.clone(),
                cancel.clone(),
                observer.clone(),
                plan.compression,
            );
            blocking(move || {
                store_artifact(
                    base,
                    &artifact,
                    &layout,
                    &root,
                    &spool,
                    &info,
                    &common,
                    compression,
                    &cancel,
                    observer.as_ref(),
                )
            })
            .await??
        };
        layout.tag(Some(&artifact.name), &desc)?;
        observer.event(&Event::ImageWritten {
            digest: crate::digest::Digest::from_oci(desc.digest())
                .map_err(|e| PipelineError::Internal(e.to_string()))?,
            tag: Some(artifact.name.clone()),
        });
        let recipe_path = match &plan.recipe {
            Some(p) => p.display().to_string(),
            None => format!("{}kiln.toml", info.subdir),
        };
        let prov = crate::provenance::Provenance {
            name: artifact.name.clone(),
            digest: crate::digest::Digest::from_oci(desc.digest())
                .map_err(|e| PipelineError::Internal(e.to_string()))?,
            source_url: info.url.clone(),
            revision: info.revision.clone(),
            git_ref: info.git_ref.clone(),
            recipe_path,
            recipe_digest: recipe.digest,
            dirty: info.dirty,
            compression: plan.compression.to_string(),
            compressor: plan.compression.describe(plan.compression.default_level()),
            level: plan.compression.default_level(),
            builder_image: output.builder.reference.clone(),
            builder_image_id: output.builder.id.clone(),
            base: base_ref,
            builder_id: plan.builder_id.clone(),
            invocation_id: build_id.clone(),
            started,
            finished: unix_now(),
        };
        let referrer = crate::provenance::attach(&layout, &desc, &prov.statement(), prov.finished)?;
        artifacts.push(ArtifactResult {
            name: artifact.name.clone(),
            kind: artifact.kind.to_string(),
            digest: desc.digest().to_string(),
            size: desc.size(),
            media_type: desc.media_type().to_string(),
            loaded_as: None,
            pushed_to: None,
            provenance: Some(referrer.digest().to_string()),
        });
    }

    if plan.load {
        for (a, r) in recipe.artifacts.iter().zip(artifacts.iter_mut()) {
            if a.kind != ArtifactKind::Image {
                continue;
            }
            let tag = format!("kiln/{}:{}", a.name, short_tag(&info, &r.digest));
            let archive = scratch.join(format!("load-{build_id}-{}.tar", a.name));
            let digest: crate::digest::Digest =
                r.digest
                    .parse()
                    .map_err(|e: crate::digest::DigestParseError| {
                        PipelineError::Internal(e.to_string())
                    })?;
            {
                let (layout, archive, tag) = (layout.clone(), archive.clone(), tag.clone());
                blocking(move || -> Result<(), PipelineError> {
                    let f = fs::File::create(&archive).map_err(|source| StoreError::Io {
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
            let loaded = runner.load_archive(&archive).await;
            let _ = fs::remove_file(&archive);
            loaded.map_err(|source| PipelineError::Build {
                source,
                log: log.clone(),
            })?;
            r.loaded_as = Some(tag);
        }
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
        for (a, r) in recipe.artifacts.iter().zip(artifacts.iter_mut()) {
            let target = format!("{}/{}", p.prefix.trim_end_matches('/'), a.name);
            let pushed = push_artifact(
                &layout,
                &r.digest,
                &target,
                &tags,
                &p.options,
                observer.as_ref(),
            )
            .await
            .map_err(|source| PipelineError::Push {
                target: target.clone(),
                source: Box::new(source),
            })?;
            r.pushed_to = Some(pushed);
        }
    }
    Ok(BuildResult {
        source: info,
        artifacts,
        log,
    })
}

/// Push the manifest `digest` from `layout` to `target` (`host/repo`) with `tags`; returns
/// `host/repo@digest`.
pub async fn push_artifact(
    layout: &OciLayout,
    digest: &str,
    target: &str,
    tags: &[String],
    options: &crate::registry::RegistryOptions,
    observer: &(dyn Observer + Send + Sync),
) -> Result<String, crate::registry::PushError> {
    use crate::registry::PushError;
    let reference: crate::reference::Reference = target
        .parse()
        .map_err(|e: crate::reference::ReferenceError| PushError::Invalid(e.to_string()))?;
    let client = crate::registry::RegistryClient::for_reference(&reference, options)?;
    let mut pusher = crate::registry::Pusher::new(&client, layout, &reference.repository);
    let d: crate::digest::Digest = digest
        .parse()
        .map_err(|e: crate::digest::DigestParseError| PushError::Invalid(e.to_string()))?;
    let bytes = layout.read_blob(&d)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| oci_spec::image::MediaType::ImageManifest.to_string());
    let desc = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(media_type.as_str()),
        bytes.len() as u64,
        d.to_oci(),
    );
    pusher.mount_from = base_mounts(&bytes, &reference);
    pusher.observer = observer;
    pusher.push(&desc, tags).await?;
    Ok(format!(
        "{}/{}@{d}",
        reference.registry, reference.repository
    ))
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[allow(clippy::too_many_arguments)]
fn store_artifact(
    base: Option<crate::image::BaseImage>,
    artifact: &Artifact,
    layout: &OciLayout,
    output: &Path,
    spool: &Path,
    info: &SourceInfo,
    common: &BTreeMap<String, String>,
    compression: Compression,
    cancel: &CancellationToken,
    observer: &(dyn Observer + Send + Sync),
) -> Result<oci_spec::image::Descriptor, PipelineError> {
    let whole =
        artifact.files.len() == 1 && artifact.files[0].from == "." && artifact.files[0].to == "/";
    let staged;
    let root = if whole {
        output.to_owned()
    } else {
        staged = tempfile::Builder::new()
            .prefix("kiln-stage-")
            .tempdir_in(spool)
            .map_err(|e| PipelineError::Files {
                artifact: artifact.name.clone(),
                reason: e.to_string(),
            })?;
        stage(output, &artifact.files, staged.path()).map_err(|reason| PipelineError::Files {
            artifact: artifact.name.clone(),
            reason,
        })?;
        staged.path().to_owned()
    };
    let mut opts = PackOptions::new(info.epoch);
    opts.compression = compression;
    let layer =
        crate::pack::pack_dir(&root, &opts, layout, cancel, observer).map_err(|source| {
            PipelineError::Pack {
                artifact: artifact.name.clone(),
                source,
            }
        })?;
    let mut ann = common.clone();
    ann.insert(annotations::TITLE.to_owned(), artifact.name.clone());
    let desc = match artifact.kind {
        ArtifactKind::Image => {
            let ours = RunConfig {
                entrypoint: artifact.entrypoint.clone(),
                cmd: artifact.cmd.clone(),
                env: artifact
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                working_dir: artifact.workdir.clone(),
                user: artifact.user.clone(),
                labels: artifact.labels.clone(),
            };
            let run = match &base {
                Some(b) => crate::image::merge_run(&b.run, &ours),
                None => ours,
            };
            let spec = ImageSpec {
                platform: Platform::host(),
                epoch: info.epoch,
                run,
                base,
                annotations: ann,
                created_by: format!(
                    "kiln build ({})",
                    compression.describe(compression.default_level())
                ),
            };
            crate::image::write_image(layout, std::slice::from_ref(&layer), &spec)?
        }
        ArtifactKind::Files => {
            let t = artifact
                .artifact_type
                .as_deref()
                .unwrap_or(crate::recipe::DEFAULT_FILES_ARTIFACT_TYPE);
            crate::image::write_artifact(layout, std::slice::from_ref(&layer), t, info.epoch, &ann)?
        }
    };
    Ok(desc)
}

/// Lay out `files` mappings from `output` into `dst`. Hard links where possible (the packer
/// reads contents, so links never reach the layer), symlinks recreated as they are. A `from`
/// must stay inside the output directory: no `..` (checked by the recipe) and no symlinked
/// directory on the way.
fn stage(output: &Path, files: &[FileMapping], dst: &Path) -> Result<(), String> {
    for m in files {
        let mut src = output.to_owned();
        if m.from != "." {
            for part in m.from.split('/') {
                let md = fs::symlink_metadata(&src)
                    .map_err(|e| format!("files.from {:?}: {e}", m.from))?;
                if md.file_type().is_symlink() {
                    return Err(format!(
                        "files.from {:?} passes through a symlink and could leave the output directory",
                        m.from
                    ));
                }
                src.push(part);
            }
        }
        if fs::symlink_metadata(&src).is_err() {
            return Err(format!(
                "files.from {:?} does not exist in the build output",
                m.from
            ));
        }
        // An earlier mapping may have staged a symlink on this one's way: never write through it.
        let mut at = dst.to_owned();
        for part in
            m.to.trim_start_matches('/')
                .split('/')
                .filter(|p| !p.is_empty())
        {
            at.push(part);
            if fs::symlink_metadata(&at).is_ok_and(|md| md.file_type().is_symlink()) {
                return Err(format!(
                    "files.to {:?} passes through a symlink staged by another mapping",
                    m.to
                ));
            }
        }
        let target = dst.join(m.to.trim_start_matches('/'));
        copy_tree(&src, &target).map_err(|e| format!("staging {:?} at {:?}: {e}", m.from, m.to))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    if md.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if md.is_dir() {
        if fs::symlink_metadata(dst).is_ok_and(|d| d.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symlink staged by another mapping",
                dst.display()
            )));
        }
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        let _ = fs::remove_file(dst);
        fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))
    }
}
