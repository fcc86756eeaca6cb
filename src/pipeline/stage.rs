//! The stages themselves. Each is one call taking the [`Build`] and the records of the stages
//! before it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::Instrument;

use super::{ArtifactResult, Build, PipelineError, annotations, base_mounts, unix_now};
use crate::image::{BaseImage, ImageSpec, Platform, RunConfig};
use crate::pack::{Compression, Layer, PackOptions};
use crate::recipe::{Artifact, ArtifactKind, FileMapping, Recipe};
use crate::registry::{PushError, RegistryOptions};
use crate::runner::{BuildOutput, BuildRequest, DockerRunner};
use crate::source::{Checkout, CommitSource, SourceOptions};
use crate::store::{ContentStore, OciLayout, StoreError};

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))
}

/// Where the source comes from.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// A directory: a git work tree (its committed HEAD) or a plain directory.
    Dir {
        dir: PathBuf,
        options: SourceOptions,
    },
    /// An exact commit in a repository kiln keeps (the daemon's mirrors).
    Commit(CommitSource),
}

/// The source stage's record: the exact tree, what identifies it, and its recipe.
pub struct Sourced {
    pub checkout: Checkout,
    pub recipe: Recipe,
    /// The recipe as provenance records it: its path in the tree, or the file given instead.
    pub recipe_path: String,
}

/// Stage 1: the exact source tree and its recipe (`recipe_file` instead of the tree's
/// `kiln.toml` when given).
pub async fn source(
    b: &Build,
    spec: &SourceSpec,
    recipe_file: Option<&Path>,
) -> Result<Sourced, PipelineError> {
    let checkout = {
        let (spec, scratch, cancel) = (spec.clone(), b.scratch.clone(), b.cancel.clone());
        blocking(move || match &spec {
            SourceSpec::Dir { dir, options } => {
                crate::source::open(dir, options, &scratch, &cancel)
            }
            SourceSpec::Commit(c) => crate::source::open_commit(c, &scratch, &cancel),
        })
        .await??
    };
    let (recipe_path, recorded) = match recipe_file {
        Some(p) => (p.to_owned(), p.display().to_string()),
        None => (
            checkout.tree().join("kiln.toml"),
            format!("{}kiln.toml", checkout.info.subdir),
        ),
    };
    // The commit's own kiln.toml must be a file: a symlink could point anywhere on the host.
    if recipe_file.is_none()
        && std::fs::symlink_metadata(&recipe_path).is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(PipelineError::Usage(format!(
            "{recorded} is a symlink in the committed tree; kiln refuses to follow it"
        )));
    }
    if !recipe_path.is_file() {
        let shown = match (recipe_file, spec) {
            (Some(p), _) => p.to_owned(),
            (None, SourceSpec::Dir { dir, .. }) => dir.join("kiln.toml"),
            (None, SourceSpec::Commit(_)) => PathBuf::from(&recorded),
        };
        return Err(PipelineError::NoRecipe { path: shown });
    }
    let recipe = Recipe::load(&recipe_path)?;
    Ok(Sourced {
        checkout,
        recipe,
        recipe_path: recorded,
    })
}

/// Stage 2: run the recipe's steps in a container; the output directory, spooled locally.
/// `labels` go on the container (besides kiln's own).
pub async fn run(
    b: &Build,
    s: &Sourced,
    runner: &DockerRunner,
    labels: BTreeMap<String, String>,
) -> Result<BuildOutput, PipelineError> {
    let info = &s.checkout.info;
    let span = tracing::info_span!("run", revision = info.revision.as_deref().unwrap_or("-"));
    let req = BuildRequest {
        build: &s.recipe.build,
        source: s.checkout.tree(),
        epoch: info.epoch,
        build_id: &b.run_id,
        labels,
        log: &b.log,
        scratch: &b.scratch,
        limits: &b.limits,
    };
    runner
        .run(&req, &b.cancel, b.observer.as_ref())
        .instrument(span)
        .await
        .map_err(|source| PipelineError::Build {
            source,
            log: b.log.clone(),
        })
}

/// The pack stage's record: one layer per artifact, in the recipe's order.
#[derive(Clone, Debug)]
pub struct Packed {
    pub artifact: Artifact,
    pub layer: Layer,
}

/// Stage 3: each artifact's files (mapped from the output) packed into a deterministic layer
/// in the build's store.
pub async fn pack(
    b: &Build,
    s: &Sourced,
    output: &BuildOutput,
    compression: Compression,
) -> Result<Vec<Packed>, PipelineError> {
    let mut out = Vec::new();
    for artifact in &s.recipe.artifacts {
        let (artifact, layout, root, spool, epoch, cancel, observer) = (
            artifact.clone(),
            b.layout.clone(),
            output.root().to_owned(),
            output.spool().to_owned(),
            s.checkout.info.epoch,
            b.cancel.clone(),
            b.observer.clone(),
        );
        let layer = blocking(move || {
            pack_artifact(
                &artifact,
                &layout,
                &root,
                &spool,
                epoch,
                compression,
                &cancel,
                observer.as_ref(),
            )
            .map(|layer| Packed { artifact, layer })
        })
        .await??;
        out.push(layer);
    }
    Ok(out)
}

/// Resolve every base image the recipe names, once per build (two artifacts on the same base
/// always get the same digest), copying their layers into the build's store. A base in `pins`
/// is fetched by that digest (a verifier rebuilding with the recorded base), keeping its name.
pub async fn resolve_bases(
    b: &Build,
    recipe: &Recipe,
    registry: &RegistryOptions,
    pins: &BTreeMap<String, crate::digest::Digest>,
) -> Result<BTreeMap<String, BaseImage>, PipelineError> {
    let mut out = BTreeMap::new();
    for name in recipe.artifacts.iter().filter_map(|a| a.base.as_ref()) {
        if out.contains_key(name) {
            continue;
        }
        let base_error = |source| PipelineError::Base {
            name: name.clone(),
            source: Box::new(source),
        };
        let wanted = match pins.get(name) {
            Some(d) => {
                let mut r: crate::reference::Reference =
                    name.parse()
                        .map_err(|e: crate::reference::ReferenceError| {
                            base_error(PushError::Invalid(e.to_string()))
                        })?;
                r.digest = Some(*d);
                r.to_string()
            }
            None => name.clone(),
        };
        let mut base = crate::registry::base::fetch(
            &wanted,
            &Platform::host(),
            &b.layout,
            registry,
            &b.cancel,
        )
        .await
        .map_err(base_error)?;
        base.name = name.clone();
        out.insert(name.clone(), base);
    }
    Ok(out)
}

/// Stage 4: configs and manifests around the packed layers (on their bases), with source-linked
/// annotations, and an SLSA provenance referrer for each. Nothing is tagged.
pub async fn image(
    b: &Build,
    s: &Sourced,
    output: &BuildOutput,
    packed: &[Packed],
    bases: &BTreeMap<String, BaseImage>,
    compression: Compression,
    builder_id: &str,
) -> Result<Vec<ArtifactResult>, PipelineError> {
    let info = &s.checkout.info;
    let mut common = BTreeMap::new();
    if let Some(r) = &info.revision {
        common.insert(annotations::REVISION.to_owned(), r.clone());
    }
    if let Some(u) = &info.url {
        common.insert(annotations::SOURCE.to_owned(), u.clone());
    }
    common.insert(
        annotations::RECIPE_DIGEST.to_owned(),
        s.recipe.digest.to_string(),
    );
    common.insert(
        annotations::BUILDER_IMAGE.to_owned(),
        output.builder.reference.clone(),
    );
    common.insert(
        annotations::BUILDER_DIGEST.to_owned(),
        output.builder.digest.clone(),
    );
    if info.dirty {
        common.insert(annotations::DIRTY.to_owned(), "true".to_owned());
    }
    let mut out = Vec::new();
    for p in packed {
        let artifact = &p.artifact;
        let base = artifact.base.as_ref().and_then(|n| bases.get(n)).cloned();
        let base_ref = base.as_ref().map(|b| (b.name.clone(), b.digest));
        let (layout, layer, a, inf, common) = (
            b.layout.clone(),
            p.layer.clone(),
            artifact.clone(),
            info.clone(),
            common.clone(),
        );
        let desc = blocking(move || {
            write_artifact(base, &a, &layer, &layout, inf.epoch, &common, compression)
        })
        .await??;
        let prov = crate::provenance::Provenance {
            name: artifact.name.clone(),
            digest: crate::image::descriptor_digest(&desc)
                .map_err(|e| PipelineError::Internal(e.to_string()))?,
            source_url: info.url.clone(),
            revision: info.revision.clone(),
            git_ref: info.git_ref.clone(),
            recipe_path: s.recipe_path.clone(),
            dir: info.subdir.trim_end_matches('/').to_owned(),
            recipe_digest: s.recipe.digest,
            dirty: info.dirty,
            epoch: info.epoch,
            compression: compression.to_string(),
            compressor: compression.describe(compression.default_level()),
            level: compression.default_level(),
            builder_image: output.builder.reference.clone(),
            builder_digest: output.builder.digest.clone(),
            base: base_ref,
            builder_id: builder_id.to_owned(),
            invocation_id: b.id.clone(),
            started: b.started,
            finished: unix_now(),
        };
        let referrer =
            crate::provenance::attach(&b.layout, &desc, &prov.statement(), prov.finished)?;
        out.push(ArtifactResult {
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
    Ok(out)
}

/// Build `s` a second time, in a fresh container, into `again` (a scratch layout), and
/// compare each artifact with `first`. Identical artifacts give `Ok`; any difference is
/// [`PipelineError::NotReproducible`] with the paths that differ.
#[allow(clippy::too_many_arguments)]
pub async fn build_again_and_compare(
    b: &Build,
    s: &Sourced,
    runner: &DockerRunner,
    labels: BTreeMap<String, String>,
    compression: Compression,
    bases: &BTreeMap<String, BaseImage>,
    first: &[ArtifactResult],
    again: OciLayout,
) -> Result<(), PipelineError> {
    let second = Build {
        id: b.id.clone(),
        run_id: crate::ids::new_id(),
        layout: again,
        scratch: b.scratch.clone(),
        log: b.log.clone(),
        cancel: b.cancel.clone(),
        observer: b.observer.clone(),
        started: b.started,
        limits: b.limits.clone(),
    };
    let output = run(&second, s, runner, labels).await?;
    let packed = pack(&second, s, &output, compression).await?;
    let rebuilt = image(
        &second,
        s,
        &output,
        &packed,
        bases,
        compression,
        "kiln://again",
    )
    .await?;
    drop(output);
    let mut differ = Vec::new();
    for (a, r) in first.iter().zip(&rebuilt) {
        if a.digest == r.digest {
            continue;
        }
        let parse = |d: &str| {
            d.parse::<crate::digest::Digest>()
                .map_err(|e| PipelineError::Internal(e.to_string()))
        };
        let (da, dr) = (parse(&a.digest)?, parse(&r.digest)?);
        let (la, lr, cancel) = (b.layout.clone(), second.layout.clone(), b.cancel.clone());
        let c = blocking(move || crate::compare::compare(&la, &da, &lr, &dr, &cancel)).await??;
        differ.push((a.name.clone(), c));
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::NotReproducible(differ))
    }
}

/// Where published artifacts go: artifact `name` to `<root>/<name>` (an OCI layout per
/// artifact) or to `<prefix>/<name>` in a registry.
#[derive(Clone, Debug)]
pub enum Target {
    Layout {
        root: PathBuf,
    },
    Registry {
        prefix: String,
        options: RegistryOptions,
    },
}

impl Target {
    /// Where artifact `name` goes: a layout directory or `host/repository`.
    pub fn location(&self, name: &str) -> String {
        match self {
            Target::Layout { root } => root.join(name).display().to_string(),
            Target::Registry { prefix, .. } => format!("{}/{name}", prefix.trim_end_matches('/')),
        }
    }

    fn pusher_for<'a>(
        &self,
        client: &'a crate::registry::RegistryClient,
        b: &'a Build,
        reference: &crate::reference::Reference,
    ) -> crate::registry::Pusher<'a> {
        let mut pusher = crate::registry::Pusher::new(client, &b.layout, &reference.repository);
        pusher.observer = b.observer.as_ref();
        pusher.cancel = b.cancel.clone();
        pusher
    }
}

fn push_error(target: &str) -> impl FnOnce(PushError) -> PipelineError + '_ {
    move |source| PipelineError::Push {
        target: target.to_owned(),
        source: Box::new(source),
    }
}

fn registry_client(
    location: &str,
    options: &RegistryOptions,
) -> Result<(crate::reference::Reference, crate::registry::RegistryClient), PipelineError> {
    let reference: crate::reference::Reference =
        location
            .parse()
            .map_err(|e: crate::reference::ReferenceError| {
                push_error(location)(PushError::Invalid(e.to_string()))
            })?;
    let client = crate::registry::RegistryClient::for_reference(&reference, options)
        .map_err(|e| push_error(location)(PushError::Registry(e)))?;
    Ok((reference, client))
}

/// Stage 5a: publish everything of `artifact` but its tags: blobs, the manifest by digest and
/// its provenance. Returns where it went (`host/repo@sha256:...`, or `<layout>@sha256:...`).
pub async fn publish_content(
    b: &Build,
    target: &Target,
    artifact: &ArtifactResult,
) -> Result<String, PipelineError> {
    let desc = artifact.descriptor()?;
    let location = target.location(&artifact.name);
    match target {
        Target::Layout { .. } => {
            let (src, dst, d) = (b.layout.clone(), PathBuf::from(&location), desc.clone());
            blocking(move || OciLayout::open_or_create(&dst)?.import(&src, &d)).await??;
        }
        Target::Registry { options, .. } => {
            let (reference, client) = registry_client(&location, options)?;
            let mut pusher = target.pusher_for(&client, b, &reference);
            let manifest = b.layout.read_blob(
                &crate::image::descriptor_digest(&desc)
                    .map_err(|e| PipelineError::Internal(e.to_string()))?,
            )?;
            pusher.mount_from = base_mounts(&manifest, &reference);
            pusher
                .push_content(&desc)
                .await
                .map_err(push_error(&location))?;
        }
    }
    Ok(format!("{location}@{}", artifact.digest))
}

/// Point `tags` at `desc` in the layout at `dir`.
async fn tag_in_layout(
    dir: &str,
    desc: oci_spec::image::Descriptor,
    tags: &[String],
) -> Result<(), PipelineError> {
    let (dir, tags) = (PathBuf::from(dir), tags.to_vec());
    blocking(move || -> Result<(), StoreError> {
        let layout = OciLayout::open(&dir)?;
        for t in &tags {
            layout.tag(Some(t), &desc)?;
        }
        Ok(())
    })
    .await??;
    Ok(())
}

/// Stage 5b: point `tags` at `artifact`, published by [`publish_content`].
pub async fn publish_tags(
    b: &Build,
    target: &Target,
    artifact: &ArtifactResult,
    tags: &[String],
) -> Result<(), PipelineError> {
    let desc = artifact.descriptor()?;
    let location = target.location(&artifact.name);
    match target {
        Target::Layout { .. } => tag_in_layout(&location, desc, tags).await?,
        Target::Registry { options, .. } => {
            let (reference, client) = registry_client(&location, options)?;
            let pusher = target.pusher_for(&client, b, &reference);
            pusher
                .push_tags(&desc, tags)
                .await
                .map_err(push_error(&location))?;
        }
    }
    Ok(())
}

/// What `target` holds under `tag` for artifact `name`, if anything: its manifest digest,
/// size, media type and annotations. Lets a daemon see that a commit is already published.
pub async fn find_published(
    target: &Target,
    name: &str,
    tag: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<(ArtifactResult, BTreeMap<String, String>)>, PipelineError> {
    let location = target.location(name);
    let found: Option<(Vec<u8>, String)> = match target {
        Target::Layout { .. } => {
            let (dir, tag) = (PathBuf::from(&location), tag.to_owned());
            blocking(move || -> Result<Option<(Vec<u8>, String)>, StoreError> {
                if !dir.join("oci-layout").is_file() {
                    return Ok(None);
                }
                let layout = OciLayout::open(&dir)?;
                let Some(d) = layout.resolve(&tag)? else {
                    return Ok(None);
                };
                let digest = crate::digest::Digest::from_oci(d.digest()).map_err(|e| {
                    StoreError::Corrupt {
                        path: dir.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Some((
                    layout.read_blob(&digest)?,
                    d.media_type().to_string(),
                )))
            })
            .await??
        }
        Target::Registry { options, .. } => {
            let (reference, client) = registry_client(&location, options)?;
            let repo = crate::registry::Repository::new(&client, &reference.repository);
            let got = tokio::select! {
                r = repo.get_manifest(tag) => r.map_err(push_error(&location))?,
                _ = cancel.cancelled() => return Err(push_error(&location)(PushError::Cancelled)),
            };
            got.map(|(bytes, media_type, _)| (bytes.to_vec(), media_type))
        }
    };
    let Some((bytes, media_type)) = found else {
        return Ok(None);
    };
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let annotations: BTreeMap<String, String> = m["annotations"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let digest = crate::digest::Digest::of(&bytes);
    let media_type = if media_type.is_empty() {
        m["mediaType"].as_str().unwrap_or_default().to_owned()
    } else {
        media_type
    };
    let kind = if m["artifactType"].is_string() {
        ArtifactKind::Files
    } else {
        ArtifactKind::Image
    };
    Ok(Some((
        ArtifactResult {
            name: name.to_owned(),
            kind: kind.to_string(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            media_type,
            loaded_as: None,
            pushed_to: Some(format!("{location}@{digest}")),
            provenance: None,
        },
        annotations,
    )))
}

/// Point `tags` at an artifact published earlier (a ref that arrived after its build): the
/// manifest is read back from the target and put under each tag. Nothing is rebuilt.
pub async fn retag(
    target: &Target,
    artifact: &ArtifactResult,
    tags: &[String],
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), PipelineError> {
    let desc = artifact.descriptor()?;
    let location = target.location(&artifact.name);
    match target {
        Target::Layout { .. } => tag_in_layout(&location, desc, tags).await?,
        Target::Registry { options, .. } => {
            let (reference, client) = registry_client(&location, options)?;
            let repo = crate::registry::Repository::new(&client, &reference.repository);
            let digest = crate::image::descriptor_digest(&desc)
                .map_err(|e| PipelineError::Internal(e.to_string()))?;
            let work = async {
                let (bytes, _, _) = repo
                    .get_manifest(&digest.to_string())
                    .await?
                    .ok_or_else(|| PushError::Invalid(format!("{location}@{digest} is gone")))?;
                for t in tags {
                    crate::store::validate_tag(t)?;
                    repo.put_manifest(t, desc.media_type(), bytes.clone(), &digest)
                        .await?;
                }
                Ok::<_, PushError>(())
            };
            tokio::select! {
                r = work => r.map_err(push_error(&location))?,
                _ = cancel.cancelled() => return Err(push_error(&location)(PushError::Cancelled)),
            }
        }
    }
    Ok(())
}

/// Stage `artifact`'s files from the build output and pack them into one layer.
#[allow(clippy::too_many_arguments)]
fn pack_artifact(
    artifact: &Artifact,
    layout: &OciLayout,
    output: &Path,
    spool: &Path,
    epoch: u64,
    compression: Compression,
    cancel: &tokio_util::sync::CancellationToken,
    observer: &(dyn crate::events::Observer + Send + Sync),
) -> Result<Layer, PipelineError> {
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
    let mut opts = PackOptions::new(epoch);
    opts.compression = compression;
    crate::pack::pack_dir(&root, &opts, layout, cancel, observer).map_err(|source| {
        PipelineError::Pack {
            artifact: artifact.name.clone(),
            source,
        }
    })
}

/// Write the config and manifest of one artifact around its layer.
fn write_artifact(
    base: Option<BaseImage>,
    artifact: &Artifact,
    layer: &Layer,
    layout: &OciLayout,
    epoch: u64,
    common: &BTreeMap<String, String>,
    compression: Compression,
) -> Result<oci_spec::image::Descriptor, PipelineError> {
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
                epoch,
                run,
                base,
                annotations: ann,
                created_by: format!(
                    "kiln build ({})",
                    compression.describe(compression.default_level())
                ),
            };
            crate::image::write_image(layout, std::slice::from_ref(layer), &spec)?
        }
        ArtifactKind::Files => {
            let t = artifact
                .artifact_type
                .as_deref()
                .unwrap_or(crate::recipe::DEFAULT_FILES_ARTIFACT_TYPE);
            crate::image::write_artifact(layout, std::slice::from_ref(layer), t, epoch, &ann)?
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
