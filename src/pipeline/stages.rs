//! The stages themselves. Each is one call taking the [`Build`] and the records of the stages
//! before it; [`Plan`](super::Plan) runs them in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument;

use super::files::{Packing, pack_artifact};
use super::{Build, PipelineError, unix_now};
use crate::artifact::ArtifactResult;
use crate::image::{BaseImage, ImageSpec, Platform, RunConfig, annotations};
use crate::pack::{Compression, Layer};
use crate::recipe::{Artifact, ArtifactKind, Recipe};
use crate::registry::{PushError, RegistryOptions};
use crate::runner::{RunOutput, RunRequest, Runner};
use crate::source::{Checkout, CommitSource, Origin, SourceOptions};
use crate::store::OciLayout;

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))
}

/// Where the source comes from.
#[derive(Clone)]
pub enum SourceSpec {
    /// A directory: a git work tree (its committed HEAD) or a plain directory.
    Dir {
        dir: PathBuf,
        options: SourceOptions,
    },
    /// An exact commit, fetched into a bare mirror kiln keeps (the daemon's builds, a
    /// verifier's rebuild).
    Fetch(FetchSpec),
}

/// An exact commit and where to fetch it from.
#[derive(Clone)]
pub struct FetchSpec {
    /// Where the fetch URL, its credentials and the URL to record come from: asked when the
    /// source stage starts (a forge may have to be asked).
    pub origin: Arc<dyn Locate>,
    /// The bare mirror to fetch into (created if missing).
    pub mirror: PathBuf,
    /// The full commit SHA.
    pub commit: String,
    /// The ref that led to the commit (`refs/heads/main`): fetched when the server does not
    /// serve commits by SHA, and recorded in provenance.
    pub git_ref: Option<String>,
    /// The directory to build inside the repository (`""` for the root, else `a/b`).
    pub subdir: String,
    /// SOURCE_DATE_EPOCH instead of the commit time (a rebuild of a build that overrode it).
    pub epoch: Option<u64>,
}

/// Where a repository is fetched from.
#[async_trait::async_trait]
pub trait Locate: Send + Sync {
    async fn origin(&self) -> Result<Origin, PipelineError>;
}

/// A known origin locates itself.
#[async_trait::async_trait]
impl Locate for Origin {
    async fn origin(&self) -> Result<Origin, PipelineError> {
        Ok(self.clone())
    }
}

/// The source stage's record: the exact tree, what identifies it, and its recipe.
pub struct Sourced {
    pub checkout: Checkout,
    pub recipe: Recipe,
    /// The recipe as provenance records it: its path in the tree, or the file given instead.
    pub recipe_path: String,
}

/// Stage 1a: a directory's tree (a git work tree's committed HEAD, or a plain directory), its
/// remote recorded in its canonical form.
pub async fn open_dir(
    b: &Build,
    dir: &Path,
    options: &SourceOptions,
) -> Result<Checkout, PipelineError> {
    let (dir, options, scratch, cancel) = (
        dir.to_owned(),
        options.clone(),
        b.scratch.clone(),
        b.cancel.clone(),
    );
    let explicit = options.source_url.clone();
    let mut checkout =
        blocking(move || crate::source::open(&dir, &options, &scratch, &cancel)).await??;
    link(&mut checkout.info, explicit);
    Ok(checkout)
}

/// Record where a source came from in its two forms: the raw remote (without credentials)
/// for the provenance, and the link for the manifest, which must not depend on the checkout.
fn link(info: &mut crate::source::SourceInfo, explicit: Option<String>) {
    info.remote = info
        .remote
        .take()
        .map(|r| crate::forge::without_credentials(&r));
    info.url = explicit.or_else(|| info.url.take().and_then(|u| crate::forge::source_link(&u)));
}

/// An exact commit in its mirror, fetched.
pub struct Fetched {
    /// The mirror holding the commit.
    pub mirror: PathBuf,
    /// What to record as the source.
    pub web_url: String,
    /// Where it was fetched from (the provenance's raw remote).
    pub fetch_url: String,
}

/// Stage 1a: the commit fetched into its mirror (its origin asked first).
pub async fn fetch(b: &Build, f: &FetchSpec) -> Result<Fetched, PipelineError> {
    let origin = f.origin.origin().await?;
    let (f, cancel) = (f.clone(), b.cancel.clone());
    blocking(move || {
        let fetched = crate::source::mirror::Mirror::open(&f.mirror, &cancel).and_then(|m| {
            m.fetch(
                &origin.fetch_url,
                &f.commit,
                f.git_ref.as_deref(),
                origin.auth.as_ref(),
                &cancel,
            )
            .map(|()| m)
        });
        let mirror = fetched.map_err(|source| PipelineError::Fetch {
            url: origin.web_url.clone(),
            source,
        })?;
        Ok(Fetched {
            mirror: mirror.dir().to_owned(),
            web_url: origin.web_url,
            fetch_url: origin.fetch_url,
        })
    })
    .await?
}

/// Stage 1b: the fetched commit's tree.
pub async fn open_fetched(
    b: &Build,
    f: &FetchSpec,
    fetched: Fetched,
) -> Result<Checkout, PipelineError> {
    let commit = CommitSource {
        repo: fetched.mirror,
        commit: f.commit.clone(),
        subdir: f.subdir.clone(),
        url: fetched.web_url,
        remote: Some(fetched.fetch_url),
        git_ref: f.git_ref.clone(),
        epoch: f.epoch,
    };
    let (scratch, cancel) = (b.scratch.clone(), b.cancel.clone());
    let mut checkout =
        blocking(move || crate::source::open_commit(&commit, &scratch, &cancel)).await??;
    link(&mut checkout.info, None);
    Ok(checkout)
}

/// Stage 1c: the tree's recipe (`recipe_file` instead of the tree's `kiln.toml` when given).
pub fn recipe(
    checkout: Checkout,
    spec: &SourceSpec,
    recipe_file: Option<&Path>,
) -> Result<Sourced, PipelineError> {
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
            (None, SourceSpec::Fetch(_)) => PathBuf::from(&recorded),
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
    runner: &dyn Runner,
    labels: BTreeMap<String, String>,
    caches: &crate::runner::cache::Taking,
) -> Result<RunOutput, PipelineError> {
    let info = &s.checkout.info;
    let span = tracing::info_span!("run", revision = info.revision.as_deref().unwrap_or("-"));
    // With caches, the tree is recorded with them; files changed since a warm one was saved
    // are stamped newer than anything in it.
    let tree = match caches.mounted() {
        true => {
            let (root, cancel) = (s.checkout.tree().to_owned(), b.cancel.clone());
            Some(
                blocking(move || crate::pack::tree_manifest(&root, &cancel))
                    .await?
                    .map_err(|source| PipelineError::Build {
                        source: crate::runner::BuildError::Output(source),
                        log: b.log.clone(),
                    })?,
            )
        }
        false => None,
    };
    let fresh = tree.as_ref().and_then(|t| caches.fresh(t));
    if let Some(f) = &fresh {
        note(
            b,
            &format!(
                "kiln: caches: {} source file{} changed since the cache was saved; stamped with this build's start, not the commit time",
                f.len(),
                if f.len() == 1 { "" } else { "s" }
            ),
        );
    }
    let req = RunRequest {
        build: &s.recipe.build,
        source: s.checkout.tree(),
        epoch: info.epoch,
        build_id: &b.run_id,
        labels,
        log: &b.log,
        scratch: &b.scratch,
        limits: &b.limits,
        caches: caches.mounts(),
        builder: caches.builder.as_ref(),
        // Strictly newer than anything an earlier build wrote (tar times are whole seconds).
        fresh: fresh.as_ref().map(|f| (f, unix_now() + 1)),
    };
    let mut out = runner
        .run(&req, &b.cancel, b.observer.as_ref())
        .instrument(span)
        .await
        .map_err(|source| PipelineError::Build {
            source,
            log: b.log.clone(),
        })?;
    out.caches = caches.uses();
    out.tree = tree;
    Ok(out)
}

/// A line of kiln's own in the build log (and wherever step output is shown).
pub(super) fn note(b: &Build, line: &str) {
    tracing::info!("{}", line.trim_start_matches("kiln: "));
    let text = format!("{line}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&b.log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = written {
        tracing::debug!(error = %e, "a note could not be written to the build log");
    }
    b.observer.event(&crate::events::Event::StepOutput {
        bytes: text.into_bytes(),
    });
}

/// The pack stage's record: one layer per artifact, in the recipe's order.
#[derive(Clone, Debug)]
pub struct Packed {
    pub artifact: Artifact,
    pub layer: Layer,
    /// What the layer holds, for the SBOM.
    pub contents: Arc<crate::sbom::Contents>,
}

/// Stage 3: each artifact's files (mapped from the output) packed into a deterministic layer
/// in the build's store.
pub async fn pack(
    b: &Build,
    s: &Sourced,
    output: &RunOutput,
    compression: Compression,
) -> Result<Vec<Packed>, PipelineError> {
    let mut out = Vec::new();
    for artifact in &s.recipe.artifacts {
        let packing = Packing {
            layout: b.layout.clone(),
            output: output.root().to_owned(),
            spool: output.spool().to_owned(),
            epoch: s.checkout.info.epoch,
            compression,
            cancel: b.cancel.clone(),
            observer: b.observer.clone(),
        };
        let artifact = artifact.clone();
        let layer = blocking(move || {
            pack_artifact(&artifact, &packing).map(|(layer, contents)| Packed {
                artifact,
                layer,
                contents: Arc::new(contents),
            })
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

/// The annotations every artifact of a build carries: where it came from and how it was
/// built (its own title is added per artifact).
pub fn source_annotations(s: &Sourced, output: &RunOutput) -> BTreeMap<String, String> {
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
    common
}

/// How artifacts are made and attested: the compression, who builds (for provenance), and
/// the key that signs the provenance, if any.
#[derive(Clone, Copy)]
pub struct Making<'a> {
    pub compression: Compression,
    pub builder_id: &'a str,
    pub signer: Option<&'a crate::attest::sign::Signer>,
}

/// Stage 4: configs and manifests around the packed layers (on their bases), with source-linked
/// annotations, and an SLSA provenance referrer for each. Nothing is tagged.
pub async fn image(
    b: &Build,
    s: &Sourced,
    output: &RunOutput,
    packed: &[Packed],
    bases: &BTreeMap<String, BaseImage>,
    how: &Making<'_>,
) -> Result<Vec<ArtifactResult>, PipelineError> {
    let Making {
        compression,
        builder_id,
        signer,
    } = *how;
    let info = &s.checkout.info;
    let common = source_annotations(s, output);
    let limits = effective_limits(b, s);
    let log = b.log.clone();
    let log_digest = blocking(move || {
        Ok::<_, PipelineError>(
            std::fs::File::open(&log)
                .and_then(crate::digest::hash_reader)
                .ok()
                .map(|(d, _)| d),
        )
    })
    .await??;
    let mut out = Vec::new();
    let mut base_packages: BTreeMap<String, Arc<crate::sbom::BaseContents>> = BTreeMap::new();
    for p in packed {
        let artifact = &p.artifact;
        let base = artifact.base.as_ref().and_then(|n| bases.get(n)).cloned();
        let base_ref = base.as_ref().map(|b| (b.name.clone(), b.digest));
        let base_sbom = match &base {
            Some(bi) => Some((
                bi.name.clone(),
                bi.digest,
                base_inventory(b, bi, &mut base_packages).await?,
            )),
            None => None,
        };
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
        let digest = crate::image::descriptor_digest(&desc)?;
        let subject = crate::sbom::spdx::Subject {
            name: artifact.name.clone(),
            digest,
            image: artifact.kind == ArtifactKind::Image,
            epoch: info.epoch,
            source_url: info.url.clone(),
            revision: info.revision.clone(),
        };
        // Like the provenance below: a few milliseconds of JSON, written in place.
        let sbom = attach_sbom(
            &b.layout,
            &desc,
            &subject,
            &p.contents,
            base_sbom.as_ref(),
            signer,
        )?;
        let prov = crate::attest::provenance::Provenance {
            name: artifact.name.clone(),
            digest,
            sbom: sbom.summary.digest.parse().ok(),
            source_url: info.url.clone(),
            remote: info.remote.clone(),
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
            limits: limits.clone(),
            log_digest,
            caches: output
                .caches
                .iter()
                .map(|c| crate::attest::provenance::CacheRecord {
                    path: c.path.clone(),
                    id: c.id.clone(),
                    warm: c.warm,
                    scratch: c.scratch,
                })
                .collect(),
            network_steps: output
                .steps
                .iter()
                .filter(|s| s.network)
                .map(|s| s.index)
                .collect(),
        };
        let referrer =
            crate::attest::attach(&b.layout, &desc, &prov.statement(), prov.finished, signer)?;
        out.push(ArtifactResult {
            name: artifact.name.clone(),
            kind: artifact.kind.to_string(),
            digest: desc.digest().to_string(),
            size: desc.size(),
            media_type: desc.media_type().to_string(),
            loaded_as: None,
            pushed_to: None,
            provenance: Some(referrer.digest().to_string()),
            sbom: Some(sbom.summary),
            sbom_document: Some(sbom.document),
        });
    }
    Ok(out)
}

/// What a base image's layers hold, read once per build and base.
async fn base_inventory(
    b: &Build,
    base: &BaseImage,
    seen: &mut BTreeMap<String, Arc<crate::sbom::BaseContents>>,
) -> Result<Arc<crate::sbom::BaseContents>, PipelineError> {
    let key = base.digest.to_string();
    let contents = match seen.get(&key) {
        Some(p) => p.clone(),
        None => {
            let (layout, layers, scratch, cancel) = (
                b.layout.clone(),
                base.layers.clone(),
                b.scratch.clone(),
                b.cancel.clone(),
            );
            let found =
                blocking(move || crate::sbom::scan_base(&layout, &layers, &scratch, &cancel))
                    .await?
                    .map_err(|e| match e {
                        crate::sbom::SbomError::Cancelled => PipelineError::Base {
                            name: base.name.clone(),
                            source: Box::new(PushError::Cancelled),
                        },
                        source => PipelineError::Sbom {
                            artifact: format!("(base {})", base.name),
                            source,
                        },
                    })?;
            let found = Arc::new(found);
            seen.insert(key, found.clone());
            found
        }
    };
    Ok(contents)
}

/// An SBOM attached to an artifact: its summary and its document's bytes.
struct AttachedSbom {
    summary: crate::artifact::SbomSummary,
    document: Arc<Vec<u8>>,
}

/// Write the artifact's SBOM and attach it as a referrer (signed when `signer` is given).
fn attach_sbom(
    layout: &OciLayout,
    desc: &oci_spec::image::Descriptor,
    subject: &crate::sbom::spdx::Subject,
    contents: &crate::sbom::Contents,
    base: Option<&(
        String,
        crate::digest::Digest,
        Arc<crate::sbom::BaseContents>,
    )>,
    signer: Option<&crate::attest::sign::Signer>,
) -> Result<AttachedSbom, PipelineError> {
    // The image's distribution is the artifact's own os-release's, else the base's; a path
    // the artifact's layer reads packages from hides the base's file at that path.
    let own = contents.packages(base.and_then(|(_, _, c)| c.distro.as_ref()));
    let ours = contents.package_paths();
    let base = base.map(|(name, digest, c)| crate::sbom::spdx::Base {
        name: name.clone(),
        digest: *digest,
        packages: c
            .packages
            .iter()
            .filter(|f| !ours.contains(f.found_in.as_str()))
            .cloned()
            .collect(),
    });
    let base = base.as_ref();
    let bytes = crate::sbom::spdx::document(subject, contents, &own, base);
    let statement = crate::sbom::spdx::statement(subject, &bytes);
    let digest = crate::digest::Digest::of(&bytes).to_string();
    let referrer = crate::attest::attach_canonical(
        layout,
        desc,
        statement,
        crate::sbom::PREDICATE_TYPE,
        subject.epoch,
        signer,
    )?;
    let all: Vec<&crate::sbom::Found> = own
        .iter()
        .chain(base.iter().flat_map(|b| b.packages.iter()))
        .collect();
    Ok(AttachedSbom {
        summary: crate::artifact::SbomSummary {
            referrer: referrer.digest().to_string(),
            digest,
            packages: all.len() as u64,
            files: contents.total_files,
            first: all
                .iter()
                .take(10)
                .map(|f| format!("{} {}", f.name, f.version))
                .collect(),
        },
        document: Arc::new(bytes),
    })
}

/// What the build ran under: the recipe's asks capped by the host's limits.
fn effective_limits(b: &Build, s: &Sourced) -> crate::attest::provenance::EffectiveLimits {
    let section = &s.recipe.build;
    let (memory, cpus) = b.limits.effective(section);
    crate::attest::provenance::EffectiveLimits {
        memory,
        cpus,
        pids: b.limits.pids,
        output: b.limits.output,
        log: b.limits.log,
        timeout: section.timeout.as_secs(),
        network: section.network && b.limits.allow_network,
    }
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
