//! The stages in order, written once. `kiln build`, `kiln build --verify`, `kiln verify` and
//! the daemon's worker all run a [`Plan`]; they differ only in the steps they enable and in
//! the [`Hooks`] that record and decide along the way:
//!
//! ```text
//! source -> [published already? then only the tags move] -> run -> pack -> bases + image
//!   -> [verify: a second build in a fresh container, compared] -> [keep, load]
//!   -> publish content -> publish tags
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::stages::{self, Fetched, SourceSpec, Sourced};
use super::{Build, PipelineError};
use crate::artifact::ArtifactResult;
use crate::digest::Digest;
use crate::events::Event;
use crate::image::BaseImage;
use crate::pack::Compression;
use crate::publish::{Staging, Target};
use crate::registry::RegistryOptions;
use crate::runner::Runner;
use crate::source::SourceInfo;
use crate::store::{ContentStore, OciLayout, StoreError};

/// Label naming the commit a build container builds.
pub const LABEL_REVISION: &str = "dev.kiln.revision";

/// What to build, and which steps to take.
pub struct Plan {
    pub source: SourceSpec,
    /// A recipe file to use instead of the tree's `kiln.toml`.
    pub recipe_file: Option<PathBuf>,
    pub compression: Compression,
    /// Who builds, for provenance: a stable identity of the build host.
    pub builder_id: String,
    /// The key that signs this build's attestations (provenance; with `verify`, a verdict).
    pub signer: Option<Arc<crate::attest::sign::Signer>>,
    /// How to reach registries for base images.
    pub registry: RegistryOptions,
    /// Bases fetched by these digests instead of their tags (a rebuild of a recorded build).
    pub pins: BTreeMap<String, Digest>,
    /// Container labels besides [`LABEL_REVISION`].
    pub labels: BTreeMap<String, String>,
    /// Build a second time, in a fresh container, and compare before anything is kept or
    /// published: a difference is [`PipelineError::NotReproducible`].
    pub verify: bool,
    /// Keep the artifacts in this layout, each tagged with its name (`kiln build -o`).
    pub keep: Option<OciLayout>,
    /// Load image artifacts into the engine as `kiln/<name>:<short commit>` (`--load`).
    pub load: bool,
    /// Publish the artifacts here, content first, tags last.
    pub publish: Option<Publication>,
    /// Mount the recipe's build caches (none: the build runs cold). The verify build always
    /// runs cold.
    pub caches: Option<CachePlan>,
}

/// The build caches a plan's first build uses.
#[derive(Clone)]
pub struct CachePlan {
    pub caches: crate::runner::cache::Caches,
    /// The repository the caches belong to: one never sees another's.
    pub repo: String,
}

/// Where artifacts are published, and under which tags.
pub struct Publication {
    pub target: Arc<dyn Target>,
    pub tags: Tags,
}

/// Which tags a publication moves.
pub enum Tags {
    /// The commit's SHA (with `-dirty` for a dirty tree) and these (`kiln build --push --tag`).
    Commit(Vec<String>),
    /// What [`Hooks::tags`] decides when the tags are about to move (the daemon: the refs that
    /// still point at the commit).
    Decided,
}

/// The stages as they are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Source,
    Run,
    Pack,
    /// Base images and the image manifests (with their provenance).
    Image,
    /// The second build and the comparison.
    Verify,
    /// The artifacts' content (not yet their tags).
    Publish,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Run => "run",
            Stage::Pack => "pack",
            Stage::Image => "image",
            Stage::Verify => "verify",
            Stage::Publish => "publish",
        }
    }
}

/// How a stage ended.
#[derive(Clone, Copy, Debug)]
pub enum StageEnd<'a> {
    Ok,
    /// Not run, and why.
    Skipped(&'static str),
    Failed(&'a PipelineError),
}

/// What the caller of a plan learns and decides as it runs. Every hook has a default: a plain
/// build records nothing and decides nothing.
#[async_trait::async_trait]
pub trait Hooks: Send + Sync {
    /// A stage begins.
    async fn started(&self, _stage: Stage) {}

    /// A stage ended (a skipped stage ends without having started).
    async fn finished(&self, _stage: Stage, _end: StageEnd<'_>) {}

    /// A commit was fetched into its mirror (its tree and recipe are read next).
    async fn fetched(&self, _commit: &Fetched) {}

    /// The source and its recipe are known. An error stops the build. Artifacts returned are
    /// published already (under the commit's tag): nothing is built, only the tags move.
    async fn sourced(&self, _s: &Sourced) -> Result<Option<Vec<ArtifactResult>>, PipelineError> {
        Ok(None)
    }

    /// Nothing leaves the host before this agrees (a daemon confirms its lease).
    async fn may_publish(&self) -> Result<(), PipelineError> {
        Ok(())
    }

    /// An artifact's content was published.
    async fn published(&self, _artifact: &ArtifactResult) {}

    /// The tags to move now, for [`Tags::Decided`]. Whatever the decision rests on may be held
    /// until [`tagged`](Hooks::tagged).
    async fn tags(&self) -> Result<Vec<String>, PipelineError> {
        Ok(Vec::new())
    }

    /// The tags were moved, or moving them failed.
    async fn tagged(&self, _moved: Result<&[String], &PipelineError>) {}
}

/// Hooks that record nothing and decide nothing.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// What a plan produced.
pub struct Built {
    pub source: SourceInfo,
    pub artifacts: Vec<ArtifactResult>,
}

/// A stage with its record: started, then finished with how it ended.
async fn staged<T>(
    hooks: &dyn Hooks,
    stage: Stage,
    work: impl std::future::Future<Output = Result<T, PipelineError>>,
) -> Result<T, PipelineError> {
    hooks.started(stage).await;
    let t = std::time::Instant::now();
    let r = work.await;
    let end = match &r {
        Ok(_) => StageEnd::Ok,
        Err(e) => StageEnd::Failed(e),
    };
    tracing::debug!(
        stage = stage.as_str(),
        ok = r.is_ok(),
        ms = t.elapsed().as_millis() as u64,
        "stage finished"
    );
    hooks.finished(stage, end).await;
    r
}

impl Plan {
    /// Run the plan for the build `b` on `runner`, telling `hooks` as it goes.
    pub async fn run(
        &self,
        b: &Build,
        runner: &dyn Runner,
        hooks: &dyn Hooks,
    ) -> Result<Built, PipelineError> {
        let sourced = staged(hooks, Stage::Source, self.source(b, hooks)).await?;
        let info = sourced.checkout.info.clone();
        // Refuse before building what could not be tagged.
        if let Some(Publication {
            tags: Tags::Commit(extra),
            ..
        }) = &self.publish
            && info.revision.is_none()
            && extra.is_empty()
        {
            return Err(PipelineError::Usage(
                "a plain directory has no commit to tag with: pass --tag".into(),
            ));
        }
        let (artifacts, already) = match hooks.sourced(&sourced).await? {
            Some(published) => {
                for stage in [Stage::Run, Stage::Pack, Stage::Image, Stage::Publish] {
                    hooks
                        .finished(stage, StageEnd::Skipped("already published"))
                        .await;
                }
                (published, true)
            }
            None => (self.build(b, &sourced, runner, hooks).await?, false),
        };
        drop(sourced);
        if let Some(p) = &self.publish {
            self.tag(b, p, &info, &artifacts, already, hooks).await?;
        }
        Ok(Built {
            source: info,
            artifacts,
        })
    }

    /// The exact tree and its recipe; a fetched commit is told to the hooks as soon as it is
    /// in its mirror.
    async fn source(&self, b: &Build, hooks: &dyn Hooks) -> Result<Sourced, PipelineError> {
        let checkout = match &self.source {
            SourceSpec::Dir { dir, options } => stages::open_dir(b, dir, options).await?,
            SourceSpec::Fetch(f) => {
                let fetched = stages::fetch(b, f).await?;
                hooks.fetched(&fetched).await;
                stages::open_fetched(b, f, fetched).await?
            }
        };
        stages::recipe(checkout, &self.source, self.recipe_file.as_deref())
    }

    /// The container labels of a build of `s`.
    fn labels(&self, s: &Sourced) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        if let Some(r) = &s.checkout.info.revision {
            labels.insert(LABEL_REVISION.to_owned(), r.clone());
        }
        labels
    }

    /// Everything from the run to the published content.
    async fn build(
        &self,
        b: &Build,
        sourced: &Sourced,
        runner: &dyn Runner,
        hooks: &dyn Hooks,
    ) -> Result<Vec<ArtifactResult>, PipelineError> {
        let labels = self.labels(sourced);
        let taking = self.take_caches(b, sourced, runner).await?;
        let (mounted, warm) = (taking.mounted(), taking.warm());
        let made = async {
            let output = staged(
                hooks,
                Stage::Run,
                stages::run(b, sourced, runner, labels.clone(), &taking),
            )
            .await?;
            // What the caches are saved with: their sizes and the source tree.
            let measured = (output.cache_bytes.clone(), output.tree.clone());
            let rest = async {
                let packed = staged(
                    hooks,
                    Stage::Pack,
                    stages::pack(b, sourced, &output, self.compression),
                )
                .await?;
                let (bases, artifacts) = staged(hooks, Stage::Image, async {
                    let bases =
                        stages::resolve_bases(b, &sourced.recipe, &self.registry, &self.pins)
                            .await?;
                    let built =
                        stages::image(b, sourced, &output, &packed, &bases, &self.making()).await?;
                    Ok((bases, built))
                })
                .await?;
                drop(output);
                if self.verify {
                    let again = async {
                        // The rebuild is cold: where the first build found warm caches, they
                        // made the difference.
                        self.again(b, sourced, runner, labels, &bases, &artifacts)
                            .await
                            .map_err(|e| match e {
                                PipelineError::NotReproducible(d) if warm => {
                                    PipelineError::CacheChangedOutput(d)
                                }
                                e => e,
                            })?;
                        self.verdicts(b, &artifacts).await
                    };
                    staged(hooks, Stage::Verify, again).await?;
                }
                Ok::<_, PipelineError>(artifacts)
            }
            .await;
            Ok::<_, PipelineError>((rest, measured))
        }
        .await;
        // The caches are kept when every step succeeded, unless the cold rebuild says they
        // made a difference: it came out different, or its steps failed where those with the
        // caches succeeded. A failed, timed-out or cancelled run discards them.
        let keep = match &made {
            Err(_)
            | Ok((
                Err(
                    PipelineError::CacheChangedOutput(_)
                    | PipelineError::NotReproducible(_)
                    | PipelineError::Build { .. },
                ),
                _,
            )) => false,
            Ok(_) => true,
        };
        let (made, (bytes, tree)) = match made {
            Ok((r, measured)) => (r, measured),
            Err(e) => (Err(e), Default::default()),
        };
        if let Some(cp) = self.caches.as_ref().filter(|_| mounted) {
            taking
                .release(&cp.caches, runner, keep, &bytes, tree.as_ref())
                .await;
            if keep && let Err(e) = cp.caches.enforce_budget(runner).await {
                tracing::warn!(error = %e, "the build caches could not be kept within their budget");
            }
        }
        let mut artifacts = made?;
        if let Some(keep) = &self.keep {
            keep_in(b, keep, &artifacts).await?;
        }
        if self.load {
            load(b, runner, &sourced.checkout.info, &mut artifacts).await?;
        }
        if let Some(p) = &self.publish {
            hooks.may_publish().await?;
            artifacts = staged(hooks, Stage::Publish, async {
                let mut out = Vec::new();
                for mut a in artifacts {
                    a.pushed_to = Some(p.target.publish_content(staging(b), &a).await?);
                    hooks.published(&a).await;
                    out.push(a);
                }
                Ok(out)
            })
            .await?;
        }
        Ok(artifacts)
    }

    /// The recipe's caches for this build, where the plan uses caches.
    async fn take_caches(
        &self,
        b: &Build,
        s: &Sourced,
        runner: &dyn Runner,
    ) -> Result<crate::runner::cache::Taking, PipelineError> {
        let paths = &s.recipe.build.cache;
        let Some(cp) = self.caches.as_ref().filter(|_| !paths.is_empty()) else {
            return Ok(Default::default());
        };
        let builder = runner
            .resolve_image(&s.recipe.build.image, &b.cancel)
            .await
            .map_err(|source| PipelineError::Build {
                source,
                log: b.log.clone(),
            })?;
        let mut note = |line: String| stages::note(b, &line);
        let mut taking = cp
            .caches
            .take_all(
                runner,
                (&cp.repo, &s.recipe_path, &builder.digest),
                paths,
                &b.run_id,
                &mut note,
            )
            .await?;
        taking.builder = Some(builder);
        Ok(taking)
    }

    /// How this plan makes and attests artifacts.
    fn making(&self) -> stages::Making<'_> {
        stages::Making {
            compression: self.compression,
            builder_id: &self.builder_id,
            signer: self.signer.as_deref(),
        }
    }

    /// With a key, a signed `PASSED` verdict (a VSA) for each artifact the second build
    /// reproduced, beside its provenance: this host vouches for its own rebuild (a verifier
    /// asking for an independent rebuilder does not count it).
    async fn verdicts(&self, b: &Build, artifacts: &[ArtifactResult]) -> Result<(), PipelineError> {
        let Some(signer) = self.signer.clone() else {
            return Ok(());
        };
        let (layout, builder_id, artifacts) = (
            b.layout.clone(),
            self.builder_id.clone(),
            artifacts.to_vec(),
        );
        stages::blocking(move || {
            for a in &artifacts {
                let subject = a.manifest_digest()?;
                let input = match &a.provenance {
                    Some(p) => crate::attest::blob_in(&layout, &p.parse()?)?,
                    None => None,
                };
                let verdict = crate::attest::vsa::Verdict {
                    name: a.name.clone(),
                    subject,
                    verifier_id: builder_id.clone(),
                    time: super::unix_now(),
                    input,
                    passed: true,
                    rebuilt: subject,
                    differing_paths: 0,
                };
                let desc = a.descriptor()?;
                crate::attest::attach(
                    &layout,
                    &desc,
                    &verdict.statement(),
                    verdict.time,
                    Some(&signer),
                )?;
            }
            Ok(())
        })
        .await?
    }

    /// Build `s` a second time, cold, in a fresh container, into a scratch layout, and
    /// compare each artifact with `first`. Identical artifacts give `Ok`; any difference is
    /// [`PipelineError::NotReproducible`] with the paths that differ.
    async fn again(
        &self,
        b: &Build,
        s: &Sourced,
        runner: &dyn Runner,
        labels: BTreeMap<String, String>,
        bases: &BTreeMap<String, BaseImage>,
        first: &[ArtifactResult],
    ) -> Result<(), PipelineError> {
        let dir = Scratch(Some(
            tempfile::Builder::new()
                .prefix("verify-b-")
                .tempdir_in(&b.scratch)
                .map_err(|source| StoreError::Io {
                    op: "create a directory in",
                    path: b.scratch.clone(),
                    source,
                })?,
        ));
        let second = Build {
            id: b.id.clone(),
            run_id: crate::ids::new_id(),
            layout: OciLayout::open_or_create(dir.path())?,
            scratch: b.scratch.clone(),
            log: b.log.clone(),
            cancel: b.cancel.clone(),
            observer: b.observer.clone(),
            started: b.started,
            limits: b.limits.clone(),
        };
        // Always cold: it is what a cache must not change.
        let output = stages::run(&second, s, runner, labels, &Default::default()).await?;
        let packed = stages::pack(&second, s, &output, self.compression).await?;
        let how = stages::Making {
            builder_id: "kiln://again",
            signer: None,
            ..self.making()
        };
        let rebuilt = stages::image(&second, s, &output, &packed, bases, &how).await?;
        drop(output);
        let mut differ = Vec::new();
        for (a, r) in first.iter().zip(&rebuilt) {
            if a.digest == r.digest {
                let digest = |a: &ArtifactResult| a.sbom.as_ref().map(|s| s.digest.clone());
                if digest(a) != digest(r) {
                    return Err(PipelineError::Internal(format!(
                        "the SBOM of {} differs between two builds with identical layers ({} and {}): this is a kiln bug, please report it",
                        a.name,
                        digest(a).unwrap_or_default(),
                        digest(r).unwrap_or_default()
                    )));
                }
                continue;
            }
            let parse = |a: &ArtifactResult| a.manifest_digest().map_err(PipelineError::from);
            let (da, dr) = (parse(a)?, parse(r)?);
            let (la, lr, cancel) = (b.layout.clone(), second.layout.clone(), b.cancel.clone());
            let c = stages::blocking(move || crate::compare::compare(&la, &da, &lr, &dr, &cancel))
                .await??;
            differ.push((a.name.clone(), c));
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::NotReproducible(differ))
        }
    }

    /// Move the publication's tags to `artifacts`: put anew where they were published by this
    /// build, read back from the target where they were published before.
    async fn tag(
        &self,
        b: &Build,
        p: &Publication,
        info: &SourceInfo,
        artifacts: &[ArtifactResult],
        already: bool,
        hooks: &dyn Hooks,
    ) -> Result<(), PipelineError> {
        let tags = match &p.tags {
            Tags::Commit(extra) => commit_tags(info, extra),
            Tags::Decided => hooks.tags().await?,
        };
        let moved = async {
            for a in artifacts {
                if already {
                    p.target.retag(a, &tags, &b.cancel).await?;
                } else {
                    p.target.publish_tags(staging(b), a, &tags).await?;
                }
            }
            Ok::<_, PipelineError>(())
        }
        .await;
        hooks.tagged(moved.as_ref().map(|()| &tags[..])).await;
        moved
    }
}

/// A scratch directory (a whole second build) removed off the async runtime when dropped.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map_or(std::path::Path::new(""), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(d));
        }
    }
}

/// The build's layout, observer and token, as publishing needs them.
fn staging(b: &Build) -> Staging<'_> {
    Staging {
        layout: &b.layout,
        observer: b.observer.as_ref(),
        cancel: &b.cancel,
    }
}

/// The commit's full SHA (`-dirty` for uncommitted changes: the commit's own tag belongs to
/// the committed tree) and `extra`.
fn commit_tags(info: &SourceInfo, extra: &[String]) -> Vec<String> {
    let suffix = if info.dirty { "-dirty" } else { "" };
    let mut tags: Vec<String> = info
        .revision
        .iter()
        .map(|r| format!("{r}{suffix}"))
        .collect();
    tags.extend(extra.iter().cloned());
    tags
}

/// Keep the artifacts in `keep` (copied there when the build wrote elsewhere), each tagged
/// with its name.
async fn keep_in(
    b: &Build,
    keep: &OciLayout,
    artifacts: &[ArtifactResult],
) -> Result<(), PipelineError> {
    for a in artifacts {
        let desc = a.descriptor()?;
        let (src, dst, d, name) = (b.layout.clone(), keep.clone(), desc.clone(), a.name.clone());
        stages::blocking(move || -> Result<(), StoreError> {
            if dst.root() != src.root() {
                dst.import(&src, &d)?;
            }
            dst.tag(Some(&name), &d)
        })
        .await??;
        b.observer.event(&Event::ImageWritten {
            digest: crate::image::descriptor_digest(&desc)?,
            tag: Some(a.name.clone()),
        });
    }
    Ok(())
}

/// `--load`: image artifacts into the engine as `kiln/<name>:<short commit>`.
async fn load(
    b: &Build,
    runner: &dyn Runner,
    info: &SourceInfo,
    artifacts: &mut [ArtifactResult],
) -> Result<(), PipelineError> {
    for r in artifacts.iter_mut() {
        if r.kind != crate::recipe::ArtifactKind::Image.to_string() {
            continue;
        }
        let tag = format!("kiln/{}:{}", r.name, short_tag(info, &r.digest));
        let archive = b.scratch.join(format!("load-{}-{}.tar", b.run_id, r.name));
        let digest = r.manifest_digest()?;
        {
            let (layout, archive, tag) = (b.layout.clone(), archive.clone(), tag.clone());
            stages::blocking(move || -> Result<(), PipelineError> {
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

/// The engine tag for `--load`: the short commit, else the short manifest digest.
fn short_tag(info: &SourceInfo, digest: &str) -> String {
    match &info.revision {
        Some(r) => r[..12.min(r.len())].to_owned(),
        None => digest.trim_start_matches("sha256:")[..12].to_owned(),
    }
}
