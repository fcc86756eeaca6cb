//! Pushing from a local layout to a registry: blobs first (skipped when present, mounted when
//! their source repository is known, streamed from the store otherwise), then the manifest by
//! digest, then tags. A failure at any point leaves no tag on an incomplete image.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::client::{Body, RegistryClient, RegistryError};
use crate::digest::Digest;
use crate::store::OciLayout;

/// Blobs up to this size go in one PUT (the fewest requests); larger ones are streamed in one
/// PATCH that can resume from the registry's offset after a failure, then a PUT.
pub const MONOLITHIC_MAX: u64 = 32 * 1024 * 1024;
/// Chunk size when a registry refuses one large request (413): 32 MiB, raised to its
/// `OCI-Chunk-Min-Length`.
pub const CHUNK_SIZE: u64 = 32 * 1024 * 1024;
/// Manifests are small; anything larger is refused.
const MANIFEST_CAP: usize = 4 * 1024 * 1024;
/// Blobs uploaded at once.
const CONCURRENCY: usize = 4;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the registry reported digest {got} for {what}, expected {want}")]
    DigestMismatch {
        what: String,
        want: Digest,
        got: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the transfer was cancelled")]
    Cancelled,
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

impl PushError {
    /// Whether trying again could help: a registry error that says so, or a store error that
    /// is transient. A digest mismatch or a malformed answer repeats until someone acts.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::Registry(e) => e.retryable,
            PushError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

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

/// One repository of one registry: reads, manifests, referrers.
pub struct Repository<'a> {
    pub client: &'a RegistryClient,
    /// The repository path, e.g. `team/app`.
    pub repository: String,
}

/// Pushes from a local layout into one repository: a [`Repository`] plus where the blobs are.
pub struct Pusher<'a> {
    repo: Repository<'a>,
    pub layout: &'a OciLayout,
    /// Where progress goes.
    pub observer: &'a (dyn crate::events::Observer + Send + Sync),
    /// Blobs known to exist in another repository of the same registry (for mounts).
    pub mount_from: HashMap<Digest, String>,
    /// Bytes per PATCH for a large blob: everything at once unless set (or a registry
    /// answers 413, which falls back to [`CHUNK_SIZE`]).
    pub chunk_size: u64,
    pub monolithic_max: u64,
    /// Stops the push: in-flight requests are dropped (the registry expires their upload
    /// sessions) and nothing more is written.
    pub cancel: tokio_util::sync::CancellationToken,
}

fn scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

impl<'a> Repository<'a> {
    /// A GET or HEAD without a body, retried.
    async fn bodiless(
        &self,
        op: &str,
        method: Method,
        url: &str,
        scopes: &[String],
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, RegistryError> {
        self.client
            .send(op, method, url, HeaderMap::new(), &Body::Empty, scopes, ok)
            .await
    }

    pub fn new(client: &'a RegistryClient, repository: &str) -> Self {
        Repository {
            client,
            repository: repository.to_owned(),
        }
    }

    pub fn scopes(&self) -> Vec<String> {
        vec![scope(&self.repository, "pull,push")]
    }

    /// PUT a manifest under `reference` (a digest or a tag) and check the digest the registry
    /// computed.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &MediaType,
        bytes: Bytes,
        digest: &Digest,
    ) -> Result<bool, PushError> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type.as_ref())
                .map_err(|e| PushError::Invalid(e.to_string()))?,
        );
        let url = format!("/v2/{}/manifests/{reference}", self.repository);
        let resp = self
            .client
            .send(
                "PUT manifest",
                Method::PUT,
                &url,
                h,
                &Body::Bytes(bytes),
                &self.scopes(),
                &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED],
            )
            .await?;
        check_digest(&resp, digest, &format!("manifest {reference}"))?;
        Ok(resp.headers().contains_key("oci-subject"))
    }

    /// GET a manifest or index: its bytes, media type and ETag; `None` if the registry does not
    /// have it. The body is read with a cap and, when `reference` is a digest, verified.
    pub async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<(Bytes, String, Option<String>)>, PushError> {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
            ),
        );
        let url = format!("/v2/{}/manifests/{reference}", self.repository);
        let scopes = vec![scope(&self.repository, "pull")];
        let resp = self
            .client
            .send(
                "GET manifest",
                Method::GET,
                &url,
                h,
                &Body::Empty,
                &scopes,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = crate::body::read_capped(resp, MANIFEST_CAP)
            .await
            .map_err(|m| PushError::Invalid(format!("reading manifest {reference}: {m}")))?;
        if bytes.len() >= MANIFEST_CAP {
            return Err(PushError::Invalid(format!(
                "manifest {reference} is larger than {MANIFEST_CAP} bytes"
            )));
        }
        if let Ok(want) = reference.parse::<Digest>()
            && Digest::of(&bytes) != want
        {
            return Err(PushError::DigestMismatch {
                what: format!("manifest {reference}"),
                want,
                got: Digest::of(&bytes).to_string(),
            });
        }
        Ok(Some((Bytes::from(bytes), media_type, etag)))
    }

    /// Copy a blob from the registry into the local layout, streaming, verified against its
    /// digest and size. A blob the layout already has is not fetched. A connection that drops
    /// mid-download starts the download again (a few times), and is reported as retryable.
    pub async fn fetch_blob(
        &self,
        layout: &OciLayout,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PushError> {
        const ATTEMPTS: u32 = 4;
        if layout.has_blob(digest) {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_blob_once(layout, digest, size).await {
                Err(PushError::Registry(e)) if e.retryable && attempt < ATTEMPTS => {
                    tracing::info!(%digest, attempt, error = %e, "blob download broke off; starting it again");
                    tokio::time::sleep(Duration::from_millis(
                        200 * u64::from(attempt) + crate::retry::jitter_ms() / 4,
                    ))
                    .await;
                }
                r => return r,
            }
        }
    }

    async fn fetch_blob_once(
        &self,
        layout: &OciLayout,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PushError> {
        use crate::store::BlobSink;
        use std::io::Write;
        let mut resp = self.blob_response(digest).await?;
        let url = format!("/v2/{}/blobs/{digest}", self.repository);
        let mut up = layout.begin_blob()?;
        let mut got = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // The body broke off: the connection, not the content. Worth another try.
                    return Err(PushError::Registry(RegistryError {
                        op: "GET blob".into(),
                        url,
                        status: None,
                        codes: Vec::new(),
                        message: format!(
                            "the download broke off after {got} of {size} bytes: {}",
                            crate::errors::chain(&e.without_url())
                        ),
                        retryable: true,
                    }));
                }
            };
            got += chunk.len() as u64;
            if got > size {
                return Err(PushError::Invalid(format!(
                    "blob {digest} is larger than its descriptor's {size} bytes"
                )));
            }
            up.write_all(&chunk).map_err(|e| {
                PushError::Store(crate::store::StoreError::Io {
                    op: "write blob",
                    path: layout.root().to_owned(),
                    source: e,
                })
            })?;
        }
        if got < size {
            return Err(PushError::Registry(RegistryError {
                op: "GET blob".into(),
                url,
                status: None,
                codes: Vec::new(),
                message: format!("the download ended after {got} of {size} bytes"),
                retryable: true,
            }));
        }
        // Commit hashes what arrived and stores it under *that* digest, never under the one we
        // asked for: wrong bytes cannot pose as the right blob. (They are not deleted either: the
        // same bytes may already be in the layout as a legitimate blob.)
        let info = up.commit()?;
        if info.digest != *digest || info.size != size {
            return Err(PushError::DigestMismatch {
                what: format!("blob {digest}"),
                want: *digest,
                got: info.digest.to_string(),
            });
        }
        Ok(())
    }

    async fn blob_response(&self, digest: &Digest) -> Result<reqwest::Response, PushError> {
        let url = format!("/v2/{}/blobs/{digest}", self.repository);
        let scopes = vec![scope(&self.repository, "pull")];
        let ok = [StatusCode::OK];
        Ok(self
            .bodiless("GET blob", Method::GET, &url, &scopes, &ok)
            .await?)
    }

    /// GET a small blob (a config, a statement), verified against its digest.
    pub async fn get_blob(&self, digest: &Digest, cap: usize) -> Result<Bytes, PushError> {
        let resp = self.blob_response(digest).await?;
        let bytes = crate::body::read_capped(resp, cap)
            .await
            .map_err(|m| PushError::Invalid(format!("reading blob {digest}: {m}")))?;
        if bytes.len() >= cap {
            return Err(PushError::Invalid(format!(
                "blob {digest} is larger than the {cap} bytes kiln accepts for a config or statement"
            )));
        }
        if Digest::of(&bytes) != *digest {
            return Err(PushError::DigestMismatch {
                what: format!("blob {digest}"),
                want: *digest,
                got: Digest::of(&bytes).to_string(),
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// The referrers of `subject`: through the referrers API where the registry has it, else
    /// through the fallback tag `sha256-<hex>`.
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, PushError> {
        let url = format!("/v2/{}/referrers/{subject}", self.repository);
        let scopes = vec![scope(&self.repository, "pull")];
        let resp = self
            .bodiless(
                "GET referrers",
                Method::GET,
                &url,
                &scopes,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        if resp.status() == StatusCode::OK {
            let bytes = crate::body::read_capped(resp, MANIFEST_CAP)
                .await
                .map_err(PushError::Invalid)?;
            if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
                return Ok(index.manifests().clone());
            }
        }
        match self.get_manifest(&fallback_tag(subject)).await? {
            Some((bytes, _, _)) => {
                let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
                    PushError::Invalid(format!(
                        "referrers index {}: malformed: {e}",
                        fallback_tag(subject)
                    ))
                })?;
                Ok(index.manifests().clone())
            }
            None => Ok(Vec::new()),
        }
    }

    async fn referrers_api(&self) -> Result<bool, PushError> {
        let probe = Digest::of(b"kiln referrers API probe");
        let url = format!("/v2/{}/referrers/{probe}", self.repository);
        let scopes = vec![scope(&self.repository, "pull")];
        let ok = [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
        ];
        let resp = self
            .bodiless("GET referrers", Method::GET, &url, &scopes, &ok)
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Read-modify-write of the fallback referrers index, conditional on its ETag where the
    /// registry gives one (`If-Match`; a 412 means re-read and merge again).
    ///
    /// Registries without conditional manifest writes (the CNCF distribution registry among
    /// them) cannot stop two writers that read the same index from overwriting each other. So
    /// after writing, kiln confirms its entry over a few randomly spaced re-reads: a writer
    /// whose entry was overwritten sees it missing and merges it back in.
    pub async fn add_to_fallback_index(
        &self,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<(), PushError> {
        /// Re-reads that must all still show our entry after a write of ours.
        const CONFIRMATIONS: u32 = 3;
        let tag = fallback_tag(subject);
        let mut confirmed = 0u32;
        let mut wrote = false;
        for attempt in 0..40u32 {
            let current = self.get_manifest(&tag).await?;
            let (mut entries, etag) = match &current {
                Some((bytes, _, etag)) => {
                    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| {
                        PushError::Invalid(format!("referrers index {tag}: malformed: {e}"))
                    })?;
                    (index.manifests().clone(), etag.clone())
                }
                None => (Vec::new(), None),
            };
            if entries.iter().any(|d| d.digest() == referrer.digest()) {
                // Already there before we wrote anything (a re-push): nothing can be lost.
                if !wrote {
                    return Ok(());
                }
                confirmed += 1;
                if confirmed >= CONFIRMATIONS {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100 + crate::retry::jitter_ms() % 300))
                    .await;
                continue;
            }
            if wrote {
                tracing::info!(%tag, "our referrer was overwritten by a concurrent writer; merging it back");
            }
            confirmed = 0;
            entries.push(referrer.clone());
            let mut index = ImageIndex::default();
            index.set_media_type(Some(MediaType::ImageIndex));
            index.set_manifests(entries);
            let bytes = Bytes::from(
                crate::json::to_canonical_vec(&index)
                    .map_err(|e| PushError::Invalid(e.to_string()))?,
            );
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            if let Some(e) = &etag
                && let Ok(v) = HeaderValue::from_str(e)
            {
                h.insert(reqwest::header::IF_MATCH, v);
            }
            let url = format!("/v2/{}/manifests/{tag}", self.repository);
            let ok = [
                StatusCode::CREATED,
                StatusCode::OK,
                StatusCode::PRECONDITION_FAILED,
            ];
            let resp = self
                .client
                .send(
                    "PUT referrers index",
                    Method::PUT,
                    &url,
                    h,
                    &Body::Bytes(bytes),
                    &self.scopes(),
                    &ok,
                )
                .await?;
            if resp.status() == StatusCode::PRECONDITION_FAILED {
                // Someone else wrote first: back off a varying while, then merge again.
                let pause = 20 + u64::from(attempt) * 30 + crate::retry::jitter_ms() % 100;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            } else {
                wrote = true;
            }
        }
        Err(PushError::Invalid(format!(
            "could not update the referrers index {tag}: it kept changing under concurrent writers"
        )))
    }

    async fn start_upload(&self) -> Result<(String, u64), PushError> {
        let url = format!("/v2/{}/blobs/uploads/", self.repository);
        let resp = self
            .client
            .send(
                "start upload",
                Method::POST,
                &url,
                HeaderMap::new(),
                &Body::Empty,
                &self.scopes(),
                &[StatusCode::ACCEPTED],
            )
            .await?;
        let min = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((self.location(&resp).await?, min))
    }

    async fn location(&self, resp: &reqwest::Response) -> Result<String, PushError> {
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                PushError::Invalid("the registry answered an upload without a Location".into())
            })?;
        let base = self.client.base().await;
        if super::tls::is_plain_http(loc) && !super::tls::is_plain_http(&base) {
            return Err(PushError::Invalid(format!(
                "the registry sent the upload to a plain-HTTP location ({}); refusing to downgrade",
                loc.split('?').next().unwrap_or(loc)
            )));
        }
        Ok(if super::tls::is_absolute(loc) {
            loc.to_owned()
        } else {
            format!("{base}{loc}")
        })
    }
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
                self.put_manifest(tag, desc.media_type(), bytes.clone(), &digest)
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
                    let results: Vec<(Digest, BlobOutcome, u64)> =
                        futures_util::stream::iter(blobs.into_iter().map(|b| async move {
                            let d = Digest::from_oci(b.digest())
                                .map_err(|e| PushError::Invalid(e.to_string()))?;
                            let outcome = self.push_blob(&d, b.size()).await?;
                            Ok::<_, PushError>((d, outcome, b.size()))
                        }))
                        .buffer_unordered(CONCURRENCY)
                        .try_collect()
                        .await?;
                    for (d, outcome, size) in results {
                        report.record(d, outcome, size);
                    }
                }
            }
            self.put_manifest(
                &digest.to_string(),
                desc.media_type(),
                Bytes::from(bytes),
                &digest,
            )
            .await
        })
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
            if self.push_tree(&clean, report).await? {
                continue; // the registry indexed the subject itself
            }
            let has_api = match api {
                Some(a) => a,
                None => *api.insert(self.referrers_api().await?),
            };
            if !has_api {
                self.add_to_fallback_index(subject, &clean).await?;
            }
        }
        Ok(referrers.len())
    }

    /// Make sure the registry has a blob; returns what it took.
    pub async fn push_blob(&self, digest: &Digest, size: u64) -> Result<BlobOutcome, PushError> {
        let outcome = self.push_blob_inner(digest, size).await?;
        let how = match outcome {
            BlobOutcome::Present => "present",
            BlobOutcome::Mounted => "mounted",
            BlobOutcome::Uploaded => "uploaded",
        };
        self.observer.event(&crate::events::Event::BlobPushed {
            digest: *digest,
            size,
            how,
        });
        Ok(outcome)
    }

    async fn push_blob_inner(&self, digest: &Digest, size: u64) -> Result<BlobOutcome, PushError> {
        let url = format!("/v2/{}/blobs/{digest}", self.repository);
        let head = self
            .bodiless(
                "HEAD blob",
                Method::HEAD,
                &url,
                &self.scopes(),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(BlobOutcome::Present);
        }
        let path = self.layout.blob_path(digest);
        if !path.is_file() {
            return Err(crate::store::StoreError::BlobNotFound { digest: *digest }.into());
        }
        if let Some(from) = self.mount_from.get(digest)
            && from != &self.repository
        {
            let url = format!(
                "/v2/{}/blobs/uploads/?mount={digest}&from={from}",
                self.repository
            );
            let scopes = vec![scope(&self.repository, "pull,push"), scope(from, "pull")];
            let resp = self
                .client
                .send(
                    "mount blob",
                    Method::POST,
                    &url,
                    HeaderMap::new(),
                    &Body::Empty,
                    &scopes,
                    &[StatusCode::CREATED, StatusCode::ACCEPTED],
                )
                .await?;
            if resp.status() == StatusCode::CREATED {
                return Ok(BlobOutcome::Mounted);
            }
            // 202: the registry wants the bytes after all; the session it opened is abandoned.
        }
        if size <= self.monolithic_max {
            self.upload_monolithic(digest, size, &path).await?;
        } else {
            self.upload_chunked(digest, size, &path).await?;
        }
        Ok(BlobOutcome::Uploaded)
    }

    /// One PUT with the whole blob. A connection lost mid-body leaves the session in an
    /// unknown state, so a retry starts a fresh session.
    async fn upload_monolithic(
        &self,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<(), PushError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (loc, _) = self.start_upload().await?;
            let url = with_query(&loc, &format!("digest={digest}"));
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let body = Body::File {
                path: path.to_owned(),
                offset: 0,
                len: size,
                progress: None,
            };
            match self
                .client
                .send_once(
                    "upload blob",
                    Method::PUT,
                    &url,
                    h,
                    &body,
                    &self.scopes(),
                    &[StatusCode::CREATED],
                )
                .await
            {
                Ok(resp) => return check_digest(&resp, digest, &format!("blob {digest}")),
                Err(e) if e.retryable && started.elapsed() < Duration::from_secs(300) => {
                    tracing::info!(%digest, attempt, error = %e, "blob upload failed; starting over");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(20))))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// PATCH chunks with `Content-Range`; after a failed chunk, ask the registry how much it
    /// has (`GET <location>`, `Range: 0-N`) and resume from there.
    async fn upload_chunked(
        &self,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<(), PushError> {
        let (mut loc, min) = self.start_upload().await?;
        let mut chunk = self.chunk_size.max(min).max(1);
        // The body reports how far it got through a channel; this task tells the observer.
        let (tx, mut seen) = tokio::sync::watch::channel(0u64);
        let progress: super::client::Progress = std::sync::Arc::new(move |done| {
            let _ = tx.send(done);
        });
        let mut offset = 0u64;
        let started = Instant::now();
        let mut failures = 0u32;
        while offset < size {
            let len = chunk.min(size - offset);
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                "content-range",
                HeaderValue::from_str(&format!("{offset}-{}", offset + len - 1)).expect("ascii"),
            );
            let body = Body::File {
                path: path.to_owned(),
                offset,
                len,
                progress: Some(progress.clone()),
            };
            let scopes = self.scopes();
            let sent = {
                let send = self.client.send_once(
                    "upload chunk",
                    Method::PATCH,
                    &loc,
                    h,
                    &body,
                    &scopes,
                    &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
                );
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        r = &mut send => break r,
                        Ok(()) = seen.changed() => {
                            let done = *seen.borrow_and_update();
                            self.observer.event(&crate::events::Event::UploadProgress {
                                digest: *digest,
                                done,
                                total: size,
                            });
                        }
                    }
                }
            };
            match sent {
                Ok(resp) => {
                    loc = self.location(&resp).await.unwrap_or(loc);
                    offset += len;
                    self.observer.event(&crate::events::Event::UploadProgress {
                        digest: *digest,
                        done: offset,
                        total: size,
                    });
                }
                // Too large for one request (a proxy, a registry's cap): chunks, from wherever
                // the registry got to.
                Err(e) if e.status == Some(413) && chunk > CHUNK_SIZE.max(min) => {
                    tracing::warn!(%digest, "the registry refused the blob in one request (413); sending {} MiB chunks", CHUNK_SIZE.max(min) >> 20);
                    chunk = CHUNK_SIZE.max(min);
                    let (new_loc, _) = self.start_upload().await?;
                    loc = new_loc;
                    offset = 0;
                }
                // The registry and kiln disagree on the offset: start over in a new session.
                Err(e) if e.status == Some(416) && started.elapsed() < Duration::from_secs(600) => {
                    tracing::info!(%digest, offset, error = %e, "the registry rejected the chunk's range; starting a new session");
                    let (new_loc, _) = self.start_upload().await?;
                    loc = new_loc;
                    offset = 0;
                }
                Err(e) if e.retryable && started.elapsed() < Duration::from_secs(600) => {
                    failures += 1;
                    tracing::info!(%digest, offset, error = %e, "chunk failed; asking the registry where to resume");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(20))))
                        .await;
                    let status = self
                        .bodiless(
                            "upload status",
                            Method::GET,
                            &loc,
                            &self.scopes(),
                            &[StatusCode::NO_CONTENT, StatusCode::OK],
                        )
                        .await;
                    match status {
                        Ok(resp) => {
                            offset = resp
                                .headers()
                                .get(reqwest::header::RANGE)
                                .and_then(|v| v.to_str().ok())
                                .map_or(0, received_bytes);
                            loc = self.location(&resp).await.unwrap_or(loc);
                        }
                        // Some registries (the CNCF distribution registry among them) drop a
                        // session whose chunk broke off: start a new one from the beginning.
                        Err(e) if matches!(e.status, Some(400..=499)) => {
                            tracing::info!(%digest, error = %e, "the upload session is gone; starting a new one");
                            let (new_loc, _) = self.start_upload().await?;
                            loc = new_loc;
                            offset = 0;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if offset > size {
                        return Err(PushError::Invalid(format!(
                            "the registry claims {offset} bytes of a {size}-byte blob"
                        )));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Not retried as is: the first PUT uses the session up. If its answer was lost, the blob
        // may well be there: ask before giving up.
        let url = with_query(&loc, &format!("digest={digest}"));
        let ok = [StatusCode::CREATED];
        match self
            .client
            .send_once(
                "finish upload",
                Method::PUT,
                &url,
                HeaderMap::new(),
                &Body::Empty,
                &self.scopes(),
                &ok,
            )
            .await
        {
            Ok(resp) => check_digest(&resp, digest, &format!("blob {digest}")),
            Err(e) => {
                let head_url = format!("/v2/{}/blobs/{digest}", self.repository);
                let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
                let head = self
                    .bodiless("HEAD blob", Method::HEAD, &head_url, &self.scopes(), &ok)
                    .await?;
                if head.status() == StatusCode::OK {
                    Ok(())
                } else {
                    Err(e.into())
                }
            }
        }
    }
}

impl<'a> std::ops::Deref for Pusher<'a> {
    type Target = Repository<'a>;
    fn deref(&self) -> &Repository<'a> {
        &self.repo
    }
}

/// What it took to get a blob into the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    Present,
    Mounted,
    Uploaded,
}

/// Bytes a registry holds, from its `Range: 0-<last>` answer. Distribution answers `0-0` for
/// an empty session (and for one byte): read as nothing received, which at worst re-sends a byte
/// the registry then rejects with 416, handled by starting a new session.
fn received_bytes(range: &str) -> u64 {
    let end = range.trim().strip_prefix("bytes=").unwrap_or(range.trim());
    match end
        .split_once('-')
        .map(|(a, b)| (a.trim().parse::<u64>(), b.trim().parse::<u64>()))
    {
        Some((Ok(0), Ok(last))) if last > 0 => last + 1,
        _ => 0,
    }
}

fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

fn check_digest(resp: &reqwest::Response, want: &Digest, what: &str) -> Result<(), PushError> {
    match resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        Some(got) if got != want.to_string() => Err(PushError::DigestMismatch {
            what: what.to_owned(),
            want: *want,
            got: got.chars().take(100).collect(),
        }),
        _ => Ok(()),
    }
}

/// The tag of the referrers fallback index for `subject`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_keeps_its_own_retry_flag() {
        let transient = PushError::Store(crate::store::StoreError::Io {
            op: "read blob",
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        });
        assert!(transient.is_retryable());
        let corrupt = PushError::Store(crate::store::StoreError::Corrupt {
            path: "/x".into(),
            reason: "bad".into(),
        });
        assert!(!corrupt.is_retryable());
        assert!(!PushError::Cancelled.is_retryable());
    }

    #[test]
    fn ranges_read_conservatively() {
        assert_eq!(received_bytes("0-0"), 0);
        assert_eq!(received_bytes("0-1023"), 1024);
        assert_eq!(received_bytes("bytes=0-99"), 100);
        assert_eq!(received_bytes("0--1"), 0);
        assert_eq!(received_bytes("garbage"), 0);
        assert_eq!(received_bytes("5-10"), 0);
    }
}
