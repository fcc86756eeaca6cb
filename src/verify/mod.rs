//! `kiln verify`: rebuild an artifact from its provenance alone and say, byte for byte,
//! whether the result matches; when it does not, name the paths that differ.
//!
//! The provenance (the SLSA statement kiln attached as a referrer) records the source URL and
//! commit, the recipe path and digest, the builder image and its content digest, the base
//! image digest and the compressor. The rebuild is the same [`Plan`] as a build's; anything
//! that cannot be had as recorded is an error, never a comparison.

mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use report::{Kept, Report};

use crate::attest::provenance::{Recorded, newest_for};
use crate::compare::{Comparison, compare};
use crate::digest::Digest;
use crate::events::Observer;
use crate::pack::Compression;
use crate::pipeline::{Build, FetchSpec, Hooks, PipelineError, Plan, SourceSpec, Sourced};
use crate::reference::Reference;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository, or_cancel};
use crate::runner::{BuildError, Runner};
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
    #[error(
        "{reference} has no provenance signed by a --key key, so it must not steer a rebuild: {}",
        reasons.join("; ")
    )]
    Untrusted {
        reference: String,
        reasons: Vec<String>,
    },
    #[error("publishing the verdict on {reference}: {source}")]
    Verdict {
        reference: String,
        source: Box<PushError>,
    },
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

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    pub registry: RegistryOptions,
    /// Keep both unpacked trees under this directory (`expected/`, `rebuilt/`).
    pub keep: Option<PathBuf>,
    /// Tokens for the forges' well-known hosts, each sent only to its own forge's host.
    pub tokens: crate::forge::Tokens,
    /// Scratch space (a mirror, two layouts): removed by the caller.
    pub work: PathBuf,
    /// Honour the recipe's `network = true`.
    pub allow_network: bool,
    /// Rebuild only from a provenance signed by one of these keys (none: any kiln provenance).
    pub keys: Vec<crate::attest::sign::PublicKey>,
    /// Push a signed verdict (a VSA) with this key, naming this verifier.
    pub attest: Option<(Arc<crate::attest::sign::Signer>, String)>,
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

/// Rebuild `reference` from its provenance and compare.
pub async fn verify(
    reference: &Reference,
    opts: &VerifyOptions,
    runner: &dyn Runner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<Report, VerifyError> {
    let shown = reference.to_string();
    if let Some(k) = &opts.keep
        && std::fs::read_dir(k).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(VerifyError::KeepNotEmpty(k.clone()));
    }
    let client = RegistryClient::for_reference(reference, &opts.registry)
        .map_err(|e| registry_error(&shown)(PushError::Registry(e)))?;
    let repo = Repository::new(&client, &reference.repository);
    // 1. What REF is, and its provenance.
    let (bytes, media_type, _) = or_cancel(cancel, repo.get_manifest(&reference.target()))
        .await
        .map_err(registry_error(&shown))?
        .ok_or_else(|| {
            registry_error(&shown)(PushError::Invalid(format!("{shown} does not exist")))
        })?;
    let expected = Digest::of(&bytes);
    let (rec, input) = recorded(&repo, &shown, &expected, &opts.keys, cancel).await?;
    // 2. The compressor must be this kiln's, exactly; the recipe must be in the source.
    let compression = compressor(&rec)?;
    if rec.recipe.starts_with('/') {
        return Err(VerifyError::Recipe(format!(
            "the recipe {} was a file outside the repository; kiln verify rebuilds from the source alone",
            rec.recipe
        )));
    }
    // 3. The builder, as recorded.
    builder(runner, &rec, cancel).await?;
    // 4. The rebuild: the source at the recorded commit, from the recorded URL.
    let (b, rebuilt, rebuilt_sbom) =
        rebuild(&rec, &shown, opts, compression, runner, cancel, observer).await?;
    // 5. What was published, next to it, and the comparison (an identical digest needs no
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
    // The SBOM, when the provenance records one: the same layers must give the same SBOM,
    // from the same kiln (another version may detect more, and names itself in it).
    let here = env!("CARGO_PKG_VERSION");
    let comparable = rec.kiln.as_deref().is_none_or(|k| k == here);
    let sbom = rec.sbom.as_ref().map(|expected| {
        let same = Some(expected) == rebuilt_sbom.as_ref();
        report::SbomCheck {
            identical: same,
            expected: expected.clone(),
            rebuilt: rebuilt_sbom.clone(),
            comparable,
            kiln_bug: comparable && comparison.identical && !same,
        }
    });
    let identical =
        comparison.identical && sbom.as_ref().is_none_or(|s| s.identical || !s.comparable);
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
        Some(dir) => {
            match report::keep(dir, &published, &expected, &b.layout, &rebuilt, cancel).await {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "could not keep the unpacked trees");
                    None
                }
            }
        }
        None => None,
    };
    let verdict = match &opts.attest {
        Some((signer, verifier)) => {
            let v = crate::attest::vsa::Verdict {
                name: reference.repository.clone(),
                subject: expected,
                verifier_id: verifier.clone(),
                time: crate::pipeline::unix_now(),
                input,
                passed: identical,
                rebuilt,
                differing_paths: comparison.paths(),
            };
            let media_type = if media_type.is_empty() {
                "application/vnd.oci.image.manifest.v1+json"
            } else {
                media_type.as_str()
            };
            let subject = oci_spec::image::Descriptor::new(
                oci_spec::image::MediaType::from(media_type),
                bytes.len() as u64,
                expected.to_oci(),
            );
            Some(publish_verdict(&client, reference, opts, &subject, &v, signer, cancel).await?)
        }
        None => None,
    };
    Ok(Report {
        reference: shown,
        identical,
        sbom,
        recorded: rec,
        comparison,
        kept,
        verdict,
    })
}

/// Push a signed verdict as a referrer of the artifact; its referrer manifest's digest.
async fn publish_verdict(
    client: &RegistryClient,
    reference: &Reference,
    opts: &VerifyOptions,
    subject: &oci_spec::image::Descriptor,
    v: &crate::attest::vsa::Verdict,
    signer: &crate::attest::sign::Signer,
    cancel: &CancellationToken,
) -> Result<String, VerifyError> {
    let fail = |source: PushError| VerifyError::Verdict {
        reference: reference.to_string(),
        source: Box::new(source),
    };
    let layout = OciLayout::open_or_create(opts.work.join("verdict"))
        .map_err(|e| fail(PushError::Store(e)))?;
    let d = crate::attest::attach(&layout, subject, &v.statement(), v.time, Some(signer))
        .map_err(|e| fail(PushError::Invalid(e.to_string())))?;
    let mut pusher = crate::registry::Pusher::new(client, &layout, &reference.repository);
    pusher.cancel = cancel.clone();
    let mut report = crate::registry::PushReport::default();
    or_cancel(cancel, pusher.push_referrers(&v.subject, &mut report))
        .await
        .map_err(fail)?;
    Ok(d.digest().to_string())
}

/// What the newest kiln provenance about `subject` records, and the digest of the
/// attestation it came from. With `keys`, only a provenance signed by one of them counts;
/// without, any readable one (unsigned, or signed by anyone). Referrers that cannot be read
/// are passed over.
async fn recorded(
    repo: &Repository<'_>,
    shown: &str,
    subject: &Digest,
    keys: &[crate::attest::sign::PublicKey],
    cancel: &CancellationToken,
) -> Result<(Recorded, Option<Digest>), VerifyError> {
    let found = or_cancel(cancel, repo.attestations(subject))
        .await
        .map_err(registry_error(shown))?;
    let mut readable = Vec::new();
    let mut refused = Vec::new();
    for (r, read) in found {
        let a = match read {
            Ok(Some(a)) => a,
            Ok(None) => {
                tracing::warn!(referrer = %r.digest(), error = "the referrer is gone, or holds no layer", "skipping an unreadable referrer");
                continue;
            }
            Err(e) => {
                tracing::warn!(referrer = %r.digest(), error = %e, "skipping an unreadable referrer");
                continue;
            }
        };
        let judged = crate::attest::assess(&a, subject, keys);
        if judged.kind != "provenance" {
            continue;
        }
        let trusted = matches!(judged.signature, crate::attest::Signature::Verified { .. });
        if !keys.is_empty() && !trusted {
            refused.push(format!(
                "{} is {}",
                judged.referrer,
                judged.signature.describe()
            ));
            continue;
        }
        if let Some(st) = judged.statement {
            readable.push((st, a.blob));
        }
    }
    let newest = newest_for(readable.iter().map(|(st, _)| st.clone()), subject);
    let Some(statement) = newest else {
        if !keys.is_empty() {
            return Err(VerifyError::Untrusted {
                reference: shown.to_owned(),
                reasons: if refused.is_empty() {
                    vec!["no provenance is attached".to_owned()]
                } else {
                    refused
                },
            });
        }
        return Err(VerifyError::NoProvenance {
            reference: shown.to_owned(),
        });
    };
    let blob = readable
        .iter()
        .find(|(st, _)| *st == statement)
        .map(|(_, b)| *b);
    let rec = Recorded::from_statement(&statement).map_err(|e| VerifyError::BadProvenance {
        reference: shown.to_owned(),
        reason: e.0,
    })?;
    Ok((rec, blob))
}

/// The recorded compression, which this kiln must reproduce exactly.
fn compressor(rec: &Recorded) -> Result<Compression, VerifyError> {
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
    Ok(compression)
}

/// The builder image here must be the recorded one, by content.
async fn builder(
    runner: &dyn Runner,
    rec: &Recorded,
    cancel: &CancellationToken,
) -> Result<(), VerifyError> {
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
    Ok(())
}

/// A rebuild's hooks: the fetched recipe must be the recorded one, and name the artifact.
struct Checks<'a> {
    rec: &'a Recorded,
}

#[async_trait::async_trait]
impl Hooks for Checks<'_> {
    async fn sourced(
        &self,
        s: &Sourced,
    ) -> Result<Option<Vec<crate::artifact::ArtifactResult>>, PipelineError> {
        let rec = self.rec;
        if s.recipe.digest.to_string() != rec.recipe_digest {
            return Err(PipelineError::Refused(format!(
                "the recipe at {} in {} is {}, but the artifact was built with {}",
                rec.recipe, rec.revision, s.recipe.digest, rec.recipe_digest
            )));
        }
        if !s.recipe.artifacts.iter().any(|a| a.name == rec.artifact) {
            return Err(PipelineError::Refused(format!(
                "the recipe has no artifact named {:?}",
                rec.artifact
            )));
        }
        Ok(None)
    }
}

/// Build the recorded commit with the recorded recipe, builder, bases and compression; the
/// build, and the digest of the recorded artifact as rebuilt.
async fn rebuild(
    rec: &Recorded,
    shown: &str,
    opts: &VerifyOptions,
    compression: Compression,
    runner: &dyn Runner,
    cancel: &CancellationToken,
    observer: Arc<dyn Observer + Send + Sync>,
) -> Result<(Build, Digest, Option<String>), VerifyError> {
    let mut pins = BTreeMap::new();
    for (name, d) in &rec.bases {
        let d: Digest = d.parse().map_err(|_| VerifyError::BadProvenance {
            reference: shown.to_owned(),
            reason: format!("base digest {d:?}"),
        })?;
        pins.insert(name.clone(), d);
    }
    let layout = OciLayout::open_or_create(opts.work.join("rebuilt"))
        .map_err(|e| rebuild_error(PipelineError::Store(e)))?;
    let mut b = Build::new(
        crate::ids::new_id(),
        layout,
        &opts.work.join("logs"),
        cancel.clone(),
        observer,
    )
    .map_err(rebuild_error)?;
    b.limits.allow_network = opts.allow_network;
    // Fetched from where the build fetched, recorded under the link it recorded.
    let mut origin = crate::forge::public_origin(rec.fetch_url(), &opts.tokens);
    origin.web_url = rec.source.clone();
    let plan = Plan {
        source: SourceSpec::Fetch(FetchSpec {
            origin: Arc::new(origin),
            mirror: opts.work.join("source.git"),
            commit: rec.revision.clone(),
            git_ref: rec.git_ref.clone(),
            subdir: rec.dir.clone(),
            epoch: rec.epoch,
        }),
        recipe_file: None,
        compression,
        builder_id: "kiln://verify".into(),
        signer: None,
        registry: opts.registry.clone(),
        pins,
        labels: BTreeMap::new(),
        verify: false,
        keep: None,
        load: false,
        publish: None,
        caches: None,
    };
    let built = plan
        .run(&b, runner, &Checks { rec })
        .await
        .map_err(|e| match e {
            e if e.is_cancelled() => VerifyError::Cancelled,
            PipelineError::Fetch { source, .. } => VerifyError::Source {
                url: rec.fetch_url().to_owned(),
                revision: rec.revision.clone(),
                reason: source.to_string(),
            },
            PipelineError::Refused(reason) => VerifyError::Recipe(reason),
            e => VerifyError::Rebuild(Box::new(e)),
        })?;
    let artifact = built
        .artifacts
        .iter()
        .find(|a| a.name == rec.artifact)
        .ok_or_else(|| VerifyError::Recipe(format!("the rebuild made no {:?}", rec.artifact)))?;
    let rebuilt = artifact
        .manifest_digest()
        .map_err(|e| VerifyError::Recipe(format!("the rebuild's digest: {e}")))?;
    let sbom = artifact.sbom.as_ref().map(|s| s.digest.clone());
    Ok((b, rebuilt, sbom))
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
