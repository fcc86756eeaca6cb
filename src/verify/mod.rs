//! `kiln verify`: rebuild an artifact from its provenance alone and say, byte for byte,
//! whether the result matches; when it does not, name the paths that differ.
//!
//! The provenance (the SLSA statement kiln attached as a referrer) records the source URL and
//! commit, the recipe path and digest, the builder image and its content digest, the base
//! image digest and the compressor. The rebuild goes through the same pipeline calls as a
//! build; anything that cannot be had as recorded is an error, never a comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::compare::{Comparison, compare, unpack_image};

use crate::digest::Digest;
use crate::events::Observer;
use crate::pack::Compression;
use crate::pipeline::{self, Build, PipelineError, SourceSpec};
use crate::reference::Reference;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository};
use crate::runner::{BuildError, DockerRunner};
use crate::secret::Secret;
use crate::source::CommitSource;
use crate::source::mirror::{FetchAuth, Mirror};
use crate::store::{BlobSink, OciLayout};

/// Why an artifact could not be verified (as opposed to: verified and found different).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{reference} has no kiln provenance (no in-toto referrer, by the referrers API or the sha256-<hex> fallback tag): nothing to rebuild from"
    )]
    NoProvenance { reference: String },
    #[error("the provenance of {reference} cannot be used: {reason}")]
    BadProvenance { reference: String, reason: String },
    #[error("the source {url} at {revision} cannot be fetched: {reason}")]
    Source {
        url: String,
        revision: String,
        reason: String,
    },
    #[error("the builder image {image} is not available here: {reason}")]
    BuilderMissing { image: String, reason: String },
    #[error(
        "the builder image {image} here is {here}, but the artifact was built on {recorded}: a rebuild on another builder proves nothing"
    )]
    BuilderMismatch {
        image: String,
        here: String,
        recorded: String,
    },
    #[error(
        "the artifact was compressed with \"{recorded}\", which this kiln cannot reproduce (it has \"{here}\")"
    )]
    Compressor { recorded: String, here: String },
    #[error("{0}")]
    Recipe(String),
    #[error("reading {reference}: {source}")]
    Registry {
        reference: String,
        source: Box<PushError>,
    },
    #[error("rebuilding: {0}")]
    Rebuild(Box<PipelineError>),
    #[error(
        "the rebuild differs ({summary}), but the artifact was built by kiln {recorded} and this is kiln {here}: verify it with kiln {recorded}"
    )]
    KilnVersion {
        recorded: String,
        here: String,
        summary: String,
    },
    #[error("--keep {0}: the directory is not empty")]
    KeepNotEmpty(PathBuf),
    #[error("verification was cancelled")]
    Cancelled,
}

/// What the provenance records, as a rebuild needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub artifact: String,
    pub source: String,
    pub revision: String,
    pub git_ref: Option<String>,
    pub recipe: String,
    pub dir: String,
    pub recipe_digest: String,
    pub compression: String,
    pub compressor: String,
    pub builder_image: String,
    pub builder_digest: String,
    /// Base images by name, pinned to the recorded digest.
    pub bases: BTreeMap<String, String>,
    /// SOURCE_DATE_EPOCH, when the statement records it (else the commit time).
    pub epoch: Option<u64>,
    /// The kiln that built it.
    pub kiln: Option<String>,
}

impl Recorded {
    /// Read what a kiln statement records.
    pub fn from_statement(reference: &str, st: &Value) -> Result<Recorded, VerifyError> {
        let bad = |reason: &str| VerifyError::BadProvenance {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        let def = &st["predicate"]["buildDefinition"];
        let ext = &def["externalParameters"];
        let int = &def["internalParameters"];
        let s = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("it does not record {what}")))
        };
        if !is_kiln(st) {
            return Err(bad("it was not made by kiln (another buildType)"));
        }
        if ext["dirty"] == true {
            return Err(bad(
                "the artifact was built from uncommitted changes; only committed trees can be rebuilt",
            ));
        }
        let recipe = s(&ext["recipe"], "the recipe path")?;
        // Older statements have no "dir": it is the recipe's directory.
        let dir = match ext["dir"].as_str() {
            Some(d) => d.to_owned(),
            None => recipe
                .strip_suffix("kiln.toml")
                .unwrap_or("")
                .trim_end_matches('/')
                .to_owned(),
        };
        let deps = def["resolvedDependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let builder = deps
            .iter()
            .find(|d| d["name"] == "builder")
            .ok_or_else(|| bad("it does not record the builder image"))?;
        let builder_image = s(&builder["uri"], "the builder image")?
            .trim_start_matches("docker-image://")
            .to_owned();
        let builder_digest = builder["digest"]["sha256"]
            .as_str()
            .map(|h| format!("sha256:{h}"))
            .ok_or_else(|| bad("it does not record the builder's digest"))?;
        let mut bases = BTreeMap::new();
        for d in deps.iter().filter(|d| d["name"] == "base") {
            let name = s(&d["uri"], "the base image")?
                .trim_start_matches("oci://")
                .to_owned();
            let hex = s(&d["digest"]["sha256"], "the base image's digest")?;
            bases.insert(name, format!("sha256:{hex}"));
        }
        Ok(Recorded {
            artifact: s(&ext["artifact"], "the artifact's name")?,
            source: s(&ext["source"], "the source URL")?,
            revision: s(&ext["revision"], "the revision")?,
            git_ref: ext["ref"].as_str().map(str::to_owned),
            recipe,
            dir,
            recipe_digest: s(&int["recipeDigest"], "the recipe digest")?,
            compression: s(&int["compression"], "the compression")?,
            compressor: s(&int["compressor"], "the compressor")?,
            builder_image,
            builder_digest,
            bases,
            epoch: int["sourceDateEpoch"].as_u64(),
            kiln: st["predicate"]["runDetails"]["builder"]["version"]["kiln"]
                .as_str()
                .map(str::to_owned),
        })
    }
}

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub registry: RegistryOptions,
    /// Keep both unpacked trees under this directory (`expected/`, `rebuilt/`).
    pub keep: Option<PathBuf>,
    /// Sent to https sources on the host of the recorded URL (`$KILN_GITHUB_TOKEN`).
    pub token: Option<Secret>,
    /// Scratch space (a mirror, two layouts): removed by the caller.
    pub work: PathBuf,
    /// Honour the recipe's `network = true`.
    pub allow_network: bool,
}

/// Where `--keep` left the trees.
#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    pub expected: PathBuf,
    pub rebuilt: PathBuf,
    /// How to look closer, when diffoscope is installed.
    pub diffoscope: Option<String>,
}

/// The answer of `kiln verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub reference: String,
    pub recorded: Recorded,
    pub identical: bool,
    pub comparison: Comparison,
    pub kept: Option<Kept>,
}

impl Report {
    /// The report as text.
    pub fn text(&self) -> String {
        let r = &self.recorded;
        let mut out = format!(
            "{}\n  source   {} at {}\n  recipe   {} ({})\n  builder  {} ({})\n  expected {}\n  rebuilt  {}\n",
            self.reference,
            r.source,
            r.revision,
            r.recipe,
            r.recipe_digest,
            r.builder_image,
            r.builder_digest,
            self.comparison.expected,
            self.comparison.rebuilt
        );
        if self.identical {
            out.push_str("IDENTICAL: the rebuild from the provenance gives the same bytes\n");
        } else {
            out.push_str(&format!(
                "DIFFERENT: {}\n{}",
                self.comparison.summary(),
                self.comparison.text()
            ));
        }
        if let Some(k) = &self.kept {
            out.push_str(&format!(
                "kept: {} and {}\n",
                k.expected.display(),
                k.rebuilt.display()
            ));
            match &k.diffoscope {
                Some(cmd) => out.push_str(&format!("look closer with: {cmd}\n")),
                None => out.push_str(
                    "diffoscope (apt-get install diffoscope) shows the differences inside files\n",
                ),
            }
        }
        out
    }
}

fn registry_error(reference: &str) -> impl FnOnce(PushError) -> VerifyError + '_ {
    move |e| match e {
        PushError::Cancelled => VerifyError::Cancelled,
        e => VerifyError::Registry {
            reference: reference.to_owned(),
            source: Box::new(e),
        },
    }
}

fn rebuild_error(e: PipelineError) -> VerifyError {
    if e.is_cancelled() {
        VerifyError::Cancelled
    } else {
        VerifyError::Rebuild(Box::new(e))
    }
}

/// Whether a statement was made by kiln (its buildType).
fn is_kiln(st: &Value) -> bool {
    st["predicate"]["buildDefinition"]["buildType"] == crate::provenance::BUILD_TYPE
}

/// The newest kiln statement among `subject`'s referrers, if any. Referrers that are not
/// kiln's, or that cannot be read, are passed over.
async fn provenance(repo: &Repository<'_>, subject: &Digest) -> Result<Option<Value>, PushError> {
    let mut found = None;
    for r in repo.referrers(subject).await? {
        if r.artifact_type().as_ref().map(|t| t.to_string()).as_deref()
            != Some(crate::provenance::IN_TOTO_MEDIA_TYPE)
        {
            continue;
        }
        let st = match statement(repo, &r).await {
            Ok(st) => st,
            Err(PushError::Cancelled) => return Err(PushError::Cancelled),
            Err(e) => {
                tracing::warn!(referrer = %r.digest(), error = %e, "skipping an unreadable referrer");
                continue;
            }
        };
        if !is_kiln(&st)
            || st["subject"][0]["digest"]["sha256"].as_str() != Some(subject.hex().as_str())
        {
            continue;
        }
        let finished = |v: &Value| {
            v["predicate"]["runDetails"]["metadata"]["finishedOn"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        if found.as_ref().is_none_or(|f| finished(&st) > finished(f)) {
            found = Some(st);
        }
    }
    Ok(found)
}

/// The statement a referrer carries.
async fn statement(
    repo: &Repository<'_>,
    r: &oci_spec::image::Descriptor,
) -> Result<Value, PushError> {
    let rd = Digest::from_oci(r.digest()).map_err(|e| PushError::Invalid(e.to_string()))?;
    let (bytes, _, _) = repo
        .get_manifest(&rd.to_string())
        .await?
        .ok_or_else(|| PushError::Invalid(format!("referrer {rd} is gone")))?;
    let m: Value = serde_json::from_slice(&bytes)
        .map_err(|e| PushError::Invalid(format!("provenance manifest {rd}: {e}")))?;
    let layer: Digest = m["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| PushError::Invalid(format!("provenance manifest {rd} has no layer")))?;
    serde_json::from_slice(&repo.get_blob(&layer, 4 << 20).await?)
        .map_err(|e| PushError::Invalid(format!("provenance statement {layer}: {e}")))
}

/// Copy an image manifest and its blobs from the registry into `layout`.
async fn fetch_image(
    repo: &Repository<'_>,
    layout: &OciLayout,
    bytes: &[u8],
) -> Result<(), PushError> {
    let m: Value = serde_json::from_slice(bytes)
        .map_err(|e| PushError::Invalid(format!("malformed manifest: {e}")))?;
    if m.get("manifests").is_some() {
        return Err(PushError::Invalid(
            "this is an index of several images; verify one of its image manifests".into(),
        ));
    }
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
        let digest: Digest = d["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| PushError::Invalid("a descriptor without a digest".into()))?;
        let size = d["size"].as_u64().unwrap_or(0);
        repo.fetch_blob(layout, &digest, size).await?;
    }
    layout.put_blob(bytes)?;
    Ok(())
}

/// Fetch credentials for an https source: `$KILN_GITHUB_TOKEN` goes only to github.com (a
/// provenance is data anyone who can push could have written: it must not be able to name a
/// host that collects the token).
fn fetch_auth(url: &str, token: Option<&Secret>) -> Option<FetchAuth> {
    let token = token?;
    let u = reqwest::Url::parse(url).ok()?;
    let ok = u.scheme() == "https"
        && u.username().is_empty()
        && u.password().is_none()
        && u.port().is_none()
        && u.host_str() == Some("github.com");
    ok.then(|| FetchAuth {
        base: "https://github.com/".to_owned(),
        token: token.clone(),
    })
}

/// The git URL of a recorded source: `https://github.com/o/r` is fetchable as it is; a
/// local path too.
fn fetch_url(source: &str) -> String {
    source.to_owned()
}

async fn or_cancel<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, PushError>>,
) -> Result<T, PushError> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(PushError::Cancelled),
    }
}

/// Rebuild `reference` from its provenance and compare.
pub async fn verify(
    reference: &Reference,
    opts: &VerifyOptions,
    runner: &DockerRunner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<Report, VerifyError> {
    let shown = reference.to_string();
    let reg_err = registry_error(&shown);
    if let Some(k) = &opts.keep
        && std::fs::read_dir(k).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(VerifyError::KeepNotEmpty(k.clone()));
    }
    let client = RegistryClient::for_reference(reference, &opts.registry)
        .map_err(|e| registry_error(&shown)(PushError::Registry(e)))?;
    let repo = Repository::new(&client, &reference.repository);
    // 1. What REF is, and its provenance.
    let (bytes, _, _) = or_cancel(cancel, repo.get_manifest(&reference.target()))
        .await
        .map_err(registry_error(&shown))?
        .ok_or_else(|| reg_err(PushError::Invalid(format!("{shown} does not exist"))))?;
    let expected = Digest::of(&bytes);
    let statement = or_cancel(cancel, provenance(&repo, &expected))
        .await
        .map_err(registry_error(&shown))?
        .ok_or_else(|| VerifyError::NoProvenance {
            reference: shown.clone(),
        })?;
    let rec = Recorded::from_statement(&shown, &statement)?;

    // 2. The compressor must be this kiln's, exactly.
    let compression: Compression =
        rec.compression
            .parse()
            .map_err(|e: String| VerifyError::Compressor {
                recorded: rec.compressor.clone(),
                here: e,
            })?;
    let here = compression.describe(compression.default_level());
    if here != rec.compressor {
        return Err(VerifyError::Compressor {
            recorded: rec.compressor.clone(),
            here,
        });
    }
    compression.check().map_err(|e| VerifyError::Compressor {
        recorded: rec.compressor.clone(),
        here: e,
    })?;
    if rec.recipe.starts_with('/') {
        return Err(VerifyError::Recipe(format!(
            "the recipe {} was a file outside the repository; kiln verify rebuilds from the source alone",
            rec.recipe
        )));
    }

    // 3. The builder, as recorded.
    let builder = runner
        .resolve_image(&rec.builder_image, cancel)
        .await
        .map_err(|e| match e {
            BuildError::Cancelled => VerifyError::Cancelled,
            e => VerifyError::BuilderMissing {
                image: rec.builder_image.clone(),
                reason: e.to_string().lines().next().unwrap_or("").to_owned(),
            },
        })?;
    if builder.digest != rec.builder_digest {
        return Err(VerifyError::BuilderMismatch {
            image: rec.builder_image.clone(),
            here: builder.digest,
            recorded: rec.builder_digest.clone(),
        });
    }

    // 4. The source, at the recorded commit, from the recorded URL.
    let mirror_dir = opts.work.join("source.git");
    let (url, commit, git_ref, auth, c) = (
        fetch_url(&rec.source),
        rec.revision.clone(),
        rec.git_ref.clone(),
        fetch_auth(&rec.source, opts.token.as_ref()),
        cancel.clone(),
    );
    let mirror = tokio::task::spawn_blocking(move || {
        let m = Mirror::open(&mirror_dir, &c)?;
        m.fetch(&url, &commit, git_ref.as_deref(), auth.as_ref(), &c)?;
        Ok::<_, crate::source::SourceError>(m)
    })
    .await
    .map_err(|e| VerifyError::Rebuild(Box::new(PipelineError::Internal(e.to_string()))))?
    .map_err(|e| match e {
        crate::source::SourceError::Cancelled => VerifyError::Cancelled,
        e => VerifyError::Source {
            url: rec.source.clone(),
            revision: rec.revision.clone(),
            reason: e.to_string(),
        },
    })?;

    // 5. The rebuild: the same pipeline calls as a build.
    let layout = OciLayout::open_or_create(opts.work.join("rebuilt"))
        .map_err(|e| rebuild_error(PipelineError::Store(e)))?;
    let b = Build::new(
        crate::ids::new_id(),
        layout,
        &opts.work.join("logs"),
        cancel.clone(),
        observer,
    )
    .map_err(rebuild_error)?;
    let mut b = b;
    b.limits.allow_network = opts.allow_network;
    let spec = SourceSpec::Commit(CommitSource {
        repo: mirror.dir().to_owned(),
        commit: rec.revision.clone(),
        subdir: rec.dir.clone(),
        url: rec.source.clone(),
        git_ref: rec.git_ref.clone(),
        epoch: rec.epoch,
    });
    let sourced = pipeline::source(&b, &spec, None)
        .await
        .map_err(rebuild_error)?;
    if sourced.recipe.digest.to_string() != rec.recipe_digest {
        return Err(VerifyError::Recipe(format!(
            "the recipe at {} in {} is {}, but the artifact was built with {}",
            rec.recipe, rec.revision, sourced.recipe.digest, rec.recipe_digest
        )));
    }
    if !sourced
        .recipe
        .artifacts
        .iter()
        .any(|a| a.name == rec.artifact)
    {
        return Err(VerifyError::Recipe(format!(
            "the recipe has no artifact named {:?}",
            rec.artifact
        )));
    }
    let mut labels = BTreeMap::new();
    labels.insert("dev.kiln.revision".to_owned(), rec.revision.clone());
    let output = pipeline::run(&b, &sourced, runner, labels)
        .await
        .map_err(rebuild_error)?;
    let packed = pipeline::pack(&b, &sourced, &output, compression)
        .await
        .map_err(rebuild_error)?;
    let mut pins = BTreeMap::new();
    for (name, d) in &rec.bases {
        let d: Digest = d.parse().map_err(|_| VerifyError::BadProvenance {
            reference: shown.clone(),
            reason: format!("base digest {d:?}"),
        })?;
        pins.insert(name.clone(), d);
    }
    let bases = pipeline::resolve_bases(&b, &sourced.recipe, &opts.registry, &pins)
        .await
        .map_err(rebuild_error)?;
    let built = pipeline::image(
        &b,
        &sourced,
        &output,
        &packed,
        &bases,
        compression,
        "kiln://verify",
    )
    .await
    .map_err(rebuild_error)?;
    drop(output);
    let rebuilt = built
        .iter()
        .find(|a| a.name == rec.artifact)
        .and_then(|a| a.digest.parse::<Digest>().ok())
        .ok_or_else(|| VerifyError::Recipe(format!("the rebuild made no {:?}", rec.artifact)))?;

    // 6. What was published, next to it, and the comparison (an identical digest needs no
    // download, unless the trees are to be kept).
    let published = OciLayout::open_or_create(opts.work.join("expected"))
        .map_err(|e| rebuild_error(PipelineError::Store(e)))?;
    let comparison = if rebuilt == expected && opts.keep.is_none() {
        Comparison {
            identical: true,
            expected: expected.to_string(),
            rebuilt: rebuilt.to_string(),
            layers: Vec::new(),
            config: Vec::new(),
            annotations: Vec::new(),
            manifest: Vec::new(),
        }
    } else {
        or_cancel(cancel, fetch_image(&repo, &published, &bytes))
            .await
            .map_err(registry_error(&shown))?;
        let (pl, rl, c) = (published.clone(), b.layout.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || compare(&pl, &expected, &rl, &rebuilt, &c))
            .await
            .map_err(|e| VerifyError::Rebuild(Box::new(PipelineError::Internal(e.to_string()))))?
            .map_err(|e| rebuild_error(PipelineError::Store(e)))?
    };
    let here = env!("CARGO_PKG_VERSION");
    if !comparison.identical
        && let Some(recorded) = rec.kiln.as_deref()
        && recorded != here
    {
        return Err(VerifyError::KilnVersion {
            recorded: recorded.to_owned(),
            here: here.to_owned(),
            summary: comparison.summary(),
        });
    }
    let kept = match &opts.keep {
        Some(dir) => match keep(dir, &published, &expected, &b.layout, &rebuilt, cancel).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "could not keep the unpacked trees");
                None
            }
        },
        None => None,
    };
    Ok(Report {
        reference: shown,
        identical: comparison.identical,
        recorded: rec,
        comparison,
        kept,
    })
}

/// Unpack both images under `dir` for a closer look.
async fn keep(
    dir: &Path,
    published: &OciLayout,
    expected: &Digest,
    rebuilt_layout: &OciLayout,
    rebuilt: &Digest,
    cancel: &CancellationToken,
) -> Result<Kept, VerifyError> {
    let (e, r) = (dir.join("expected"), dir.join("rebuilt"));
    for (layout, digest, dst) in [
        (published.clone(), *expected, e.clone()),
        (rebuilt_layout.clone(), *rebuilt, r.clone()),
    ] {
        let c = cancel.clone();
        tokio::task::spawn_blocking(move || unpack_image(&layout, &digest, &dst, &c))
            .await
            .map_err(|e| VerifyError::Rebuild(Box::new(PipelineError::Internal(e.to_string()))))?
            .map_err(|e| {
                rebuild_error(PipelineError::Pack {
                    artifact: "--keep".into(),
                    source: e,
                })
            })?;
    }
    let diffoscope =
        which("diffoscope").then(|| format!("diffoscope {} {}", e.display(), r.display()));
    Ok(Kept {
        expected: e,
        rebuilt: r,
        diffoscope,
    })
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_build_is_read_from_a_statement() {
        let p = crate::provenance::Provenance {
            name: "app".into(),
            digest: Digest::of(b"m"),
            source_url: Some("https://github.com/o/r".into()),
            revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            git_ref: Some("refs/heads/main".into()),
            recipe_path: "svc/kiln.toml".into(),
            dir: "svc".into(),
            recipe_digest: Digest::of(b"recipe"),
            dirty: false,
            compression: "gzip".into(),
            compressor: Compression::Gzip.describe(6),
            level: 6,
            builder_image: "kiln-builder/busybox:latest".into(),
            builder_digest: Digest::of(b"builder").to_string(),
            base: Some(("reg/base:1".into(), Digest::of(b"base"))),
            builder_id: "kiln://h".into(),
            invocation_id: "x".into(),
            epoch: 7,
            started: 1,
            finished: 2,
        };
        let r = Recorded::from_statement("ref", &p.statement()).unwrap();
        assert_eq!(r.artifact, "app");
        assert_eq!(r.dir, "svc");
        assert_eq!(r.builder_image, "kiln-builder/busybox:latest");
        assert_eq!(r.builder_digest, Digest::of(b"builder").to_string());
        assert_eq!(r.bases["reg/base:1"], Digest::of(b"base").to_string());
        assert_eq!(r.epoch, Some(7));
        assert_eq!(r.kiln.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        let mut dirty = p.clone();
        dirty.dirty = true;
        assert!(matches!(
            Recorded::from_statement("ref", &dirty.statement()),
            Err(VerifyError::BadProvenance { .. })
        ));
        assert_eq!(
            fetch_auth("https://github.com/o/r", Some(&Secret::new("t")))
                .unwrap()
                .base,
            "https://github.com/"
        );
        assert!(fetch_auth("git://h/r", Some(&Secret::new("t"))).is_none());
        for hostile in [
            "https://attacker.example/x",
            "https://github.com@evil.example/x",
            "https://user:pw@github.com/x",
            "https://github.com:8443/x",
            "http://github.com/o/r",
        ] {
            assert!(
                fetch_auth(hostile, Some(&Secret::new("t"))).is_none(),
                "{hostile}"
            );
        }
    }
}
