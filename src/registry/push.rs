//! Pushing from a local layout to a registry: blobs first (see `upload.rs`), then the
//! manifest by digest, then its referrers, then tags. A failure at any point leaves no tag on
//! an incomplete image.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::client::RegistryClient;
use super::repository::{PushError, Repository};
use super::upload::{BlobOutcome, MONOLITHIC_MAX, Uploader};
use crate::digest::Digest;
use crate::store::OciLayout;

/// Blobs uploaded at once.
const CONCURRENCY: usize = 4;

/// What a push did.
#[derive(Clone, Debug, Default)]
pub struct PushReport {
    pub digest: Option<Digest>,
    /// Blobs uploaded, mounted from another repository, or already there.
    pub uploaded: Vec<Digest>,
    pub mounted: Vec<Digest>,
    pub skipped: Vec<Digest>,
    pub bytes_uploaded: u64,
}

impl PushReport {
    fn record(&mut self, digest: Digest, outcome: BlobOutcome, size: u64) {
        match outcome {
            BlobOutcome::Uploaded => {
                self.uploaded.push(digest);
                self.bytes_uploaded += size;
            }
            BlobOutcome::Mounted => self.mounted.push(digest),
            BlobOutcome::Present => self.skipped.push(digest),
        }
    }
}

/// Pushes from a local layout into one repository.
pub struct Pusher<'a> {
    /// Where it pushes to.
    pub repo: Repository<'a>,
    pub layout: &'a OciLayout,
    /// Where progress goes.
    pub observer: &'a (dyn crate::events::Observer + Send + Sync),
    /// Blobs known to exist in another repository of the same registry (for mounts).
    pub mount_from: HashMap<Digest, String>,
    /// Bytes per PATCH for a large blob: everything at once unless set (or a registry
    /// answers 413, which falls back to [`CHUNK_SIZE`](super::upload::CHUNK_SIZE)).
    pub chunk_size: u64,
    pub monolithic_max: u64,
    /// Stops the push: in-flight requests are dropped (the registry expires their upload
    /// sessions) and nothing more is written.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl<'a> Pusher<'a> {
    pub fn new(client: &'a RegistryClient, layout: &'a OciLayout, repository: &str) -> Self {
        Pusher {
            repo: Repository::new(client, repository),
            layout,
            observer: &crate::events::Quiet,
            mount_from: HashMap::new(),
            chunk_size: u64::MAX,
            monolithic_max: MONOLITHIC_MAX,
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// What gets this push's blobs into the repository.
    fn uploader(&self) -> Uploader<'_> {
        Uploader {
            repo: &self.repo,
            layout: self.layout,
            observer: self.observer,
            mount_from: &self.mount_from,
            chunk_size: self.chunk_size,
            monolithic_max: self.monolithic_max,
        }
    }

    /// Push the manifest `desc` (an image manifest or an index, with everything it references)
    /// and then point `tags` at it.
    pub async fn push(&self, desc: &Descriptor, tags: &[String]) -> Result<PushReport, PushError> {
        let report = self.push_content(desc).await?;
        self.push_tags(desc, tags).await?;
        Ok(report)
    }

    /// Everything but the tags: blobs, the manifest by digest, then its referrers (provenance),
    /// so that once a tag points at it, all of it is there.
    pub async fn push_content(&self, desc: &Descriptor) -> Result<PushReport, PushError> {
        let work = async {
            let mut report = PushReport::default();
            let digest =
                Digest::from_oci(desc.digest()).map_err(|e| PushError::Invalid(e.to_string()))?;
            self.push_tree(desc, &mut report).await?;
            self.push_referrers(&digest, &mut report).await?;
            report.digest = Some(digest);
            Ok(report)
        };
        tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => Err(PushError::Cancelled),
        }
    }

    /// Point `tags` at `desc`, which [`push_content`](Self::push_content) pushed.
    pub async fn push_tags(&self, desc: &Descriptor, tags: &[String]) -> Result<(), PushError> {
        let work = async {
            let digest =
                Digest::from_oci(desc.digest()).map_err(|e| PushError::Invalid(e.to_string()))?;
            let bytes = Bytes::from(self.layout.read_blob(&digest)?);
            for tag in tags {
                crate::store::validate_tag(tag)?;
                self.repo
                    .put_manifest(tag, desc.media_type(), bytes.clone(), &digest)
                    .await?;
            }
            Ok(())
        };
        tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => Err(PushError::Cancelled),
        }
    }

    /// Blobs, children, then the manifest itself by digest.
    fn push_tree<'b>(
        &'b self,
        desc: &'b Descriptor,
        report: &'b mut PushReport,
    ) -> futures_util::future::BoxFuture<'b, Result<bool, PushError>> {
        Box::pin(async move {
            let digest =
                Digest::from_oci(desc.digest()).map_err(|e| PushError::Invalid(e.to_string()))?;
            let bytes = self.layout.read_blob(&digest)?;
            match desc.media_type() {
                MediaType::ImageIndex => {
                    let index: ImageIndex = serde_json::from_slice(&bytes)
                        .map_err(|e| PushError::Invalid(format!("index {digest}: {e}")))?;
                    for child in index.manifests() {
                        self.push_tree(child, report).await?;
                    }
                }
                _ => {
                    let m: ImageManifest = serde_json::from_slice(&bytes)
                        .map_err(|e| PushError::Invalid(format!("manifest {digest}: {e}")))?;
                    let blobs: Vec<Descriptor> = std::iter::once(m.config().clone())
                        .chain(m.layers().iter().cloned())
                        .collect();
                    // A registry may lose track of a blob that another pusher of the same
                    // blob committed at the same moment (the CNCF registry answers the manifest
                    // with MANIFEST_BLOB_UNKNOWN): the blobs are checked, sent again where
                    // missing, and the manifest retried, a few times.
                    let mut attempt = 0;
                    loop {
                        self.push_blobs(&blobs, report).await?;
                        let put = self
                            .repo
                            .put_manifest(
                                &digest.to_string(),
                                desc.media_type(),
                                Bytes::from(bytes.clone()),
                                &digest,
                            )
                            .await;
                        match put {
                            Err(PushError::Registry(e))
                                if attempt < 3
                                    && e.codes.iter().any(|c| c.ends_with("BLOB_UNKNOWN")) =>
                            {
                                attempt += 1;
                                tracing::warn!(manifest = %digest, error = %e, "the registry lost a blob the manifest names; checking the blobs and trying again");
                                let pause = 100 + crate::retry::jitter_ms() % 400;
                                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                            }
                            other => return other,
                        }
                    }
                }
            }
            self.repo
                .put_manifest(
                    &digest.to_string(),
                    desc.media_type(),
                    Bytes::from(bytes),
                    &digest,
                )
                .await
        })
    }

    /// A manifest's blobs, up to [`CONCURRENCY`] at once (each checked first, sent if
    /// missing).
    async fn push_blobs(
        &self,
        blobs: &[Descriptor],
        report: &mut PushReport,
    ) -> Result<(), PushError> {
        let results: Vec<(Digest, BlobOutcome, u64)> =
            futures_util::stream::iter(blobs.iter().cloned().map(|b| async move {
                let d =
                    Digest::from_oci(b.digest()).map_err(|e| PushError::Invalid(e.to_string()))?;
                let outcome = self.uploader().push_blob(&d, b.size()).await?;
                Ok::<_, PushError>((d, outcome, b.size()))
            }))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (d, outcome, size) in results {
            report.record(d, outcome, size);
        }
        Ok(())
    }

    /// Push the referrers of `subject` recorded in the layout, and make them findable.
    pub async fn push_referrers(
        &self,
        subject: &Digest,
        report: &mut PushReport,
    ) -> Result<usize, PushError> {
        let referrers = self.layout.referrers(subject)?;
        let mut api: Option<bool> = None;
        for r in &referrers {
            let mut clean = Descriptor::new(r.media_type().clone(), r.size(), r.digest().clone());
            clean.set_artifact_type(r.artifact_type().clone());
            // As the referrers API lists them: readers pick an attestation by its annotations
            // without fetching it.
            clean.set_annotations(r.annotations().clone());
            if self.push_tree(&clean, report).await? {
                continue; // the registry indexed the subject itself
            }
            let has_api = match api {
                Some(a) => a,
                None => *api.insert(self.repo.referrers_api().await?),
            };
            if !has_api {
                self.repo.add_to_fallback_index(subject, &clean).await?;
            }
        }
        Ok(referrers.len())
    }
}
