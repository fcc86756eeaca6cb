//! Referrers in a registry: the referrers API where the registry has it, else the fallback
//! tag `sha256-<hex>` holding an index of them (kept by read-modify-write), and the in-toto
//! statements attached to an artifact.

use std::time::Duration;

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::client::{Body, Request};
use super::repository::{MANIFEST_CAP, PushError, Repository};
use crate::attest::Attestation;
use crate::digest::Digest;

/// The tag of the referrers fallback index for `subject`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

impl Repository<'_> {
    /// The referrers of `subject`: through the referrers API where the registry has it, else
    /// through the fallback tag `sha256-<hex>`.
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, PushError> {
        let url = self.path(&format!("referrers/{subject}"));
        let scopes = self.pull_scopes();
        let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
        let req = Request::new("GET referrers", Method::GET, &url, &scopes, &ok);
        let resp = self.client.send(&req).await?;
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

    pub(super) async fn referrers_api(&self) -> Result<bool, PushError> {
        let probe = Digest::of(b"kiln referrers API probe");
        let url = self.path(&format!("referrers/{probe}"));
        let scopes = self.pull_scopes();
        let ok = [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
        ];
        let req = Request::new("GET referrers", Method::GET, &url, &scopes, &ok);
        let resp = self.client.send(&req).await?;
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
            let url = self.path(&format!("manifests/{tag}"));
            let ok = [
                StatusCode::CREATED,
                StatusCode::OK,
                StatusCode::PRECONDITION_FAILED,
            ];
            let scopes = self.scopes();
            let req = Request::new("PUT referrers index", Method::PUT, &url, &scopes, &ok)
                .headers(h)
                .body(Body::Bytes(bytes));
            let resp = self.client.send(&req).await?;
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

    /// The attestations attached to `subject` (statements and DSSE envelopes), one per
    /// referrer of those types: the attestation, `None` for a referrer that is gone or holds
    /// no layer, or why it could not be read.
    /// SBOMs are left out (they say what is inside, not how it was made, and can be large):
    /// [`Repository::attestations_where`] reads them.
    pub async fn attestations(
        &self,
        subject: &Digest,
    ) -> Result<Vec<(Descriptor, Result<Option<Attestation>, PushError>)>, PushError> {
        self.attestations_where(subject, |p| p != Some(crate::attest::SPDX_PREDICATE_TYPE))
            .await
    }

    /// [`Repository::attestations`] whose predicate type (as the referrers list annotates it)
    /// passes `keep`.
    pub async fn attestations_where(
        &self,
        subject: &Digest,
        keep: impl Fn(Option<&str>) -> bool,
    ) -> Result<Vec<(Descriptor, Result<Option<Attestation>, PushError>)>, PushError> {
        let mut out = Vec::new();
        for r in self.referrers(subject).await? {
            let predicate = r
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::attest::PREDICATE_ANNOTATION))
                .map(String::as_str);
            if !crate::attest::is_attestation(&r) || !keep(predicate) {
                continue;
            }
            let read = self.attestation(&r).await;
            out.push((r, read));
        }
        Ok(out)
    }

    /// The attestation a referrer carries in its one layer. The referrers list names the
    /// layer (kiln's `dev.kiln.attestation.blob`): then only the blob is fetched, by digest,
    /// and whatever it holds is checked by its reader; else the manifest is read first.
    async fn attestation(&self, r: &Descriptor) -> Result<Option<Attestation>, PushError> {
        let invalid = |what: String| PushError::Invalid(what);
        let rd = Digest::from_oci(r.digest()).map_err(|e| invalid(e.to_string()))?;
        let ann = r.annotations().clone().unwrap_or_default();
        let dsse = r
            .artifact_type()
            .as_ref()
            .is_some_and(|t| t.to_string().ends_with("+dsse"));
        let named = ann
            .get(crate::attest::BLOB_ANNOTATION)
            .and_then(|d| d.parse::<Digest>().ok());
        let blob = match named {
            Some(d) => d,
            None => {
                let Some((bytes, _, _)) = self.get_manifest(&rd.to_string()).await? else {
                    return Ok(None);
                };
                let m: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid(format!("attestation manifest {rd}: malformed: {e}")))?;
                let Some(layer) = m["layers"][0]["digest"]
                    .as_str()
                    .and_then(|d| d.parse::<Digest>().ok())
                else {
                    return Ok(None);
                };
                layer
            }
        };
        // Statements are small; an SBOM listing thousands of files is not.
        let cap = if ann
            .get(crate::attest::PREDICATE_ANNOTATION)
            .map(String::as_str)
            == Some(crate::attest::SPDX_PREDICATE_TYPE)
        {
            crate::attest::MAX_SBOM
        } else {
            crate::attest::MAX_STATEMENT
        };
        let bytes = self.get_blob(&blob, cap).await?;
        let body = Attestation::decode(dsse, &bytes)
            .map_err(|e| invalid(format!("attestation {blob}: {e}")))?;
        Ok(Some(Attestation {
            referrer: rd.to_string(),
            blob,
            predicate_hint: ann.get(crate::attest::PREDICATE_ANNOTATION).cloned(),
            body,
        }))
    }
}
