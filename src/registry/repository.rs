//! One repository of a registry: manifests and blobs, read and written. What a push writes
//! and what a verifier or a base fetch reads go through here.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::client::{Body, RegistryClient, Request};
use super::error::{RegistryError, err};
use crate::digest::Digest;
use crate::store::OciLayout;

/// Manifests are small; anything larger is refused.
pub(super) const MANIFEST_CAP: usize = 4 * 1024 * 1024;

/// `work`, unless `cancel` fires first ([`PushError::Cancelled`]).
pub async fn or_cancel<T>(
    cancel: &tokio_util::sync::CancellationToken,
    work: impl std::future::Future<Output = Result<T, PushError>>,
) -> Result<T, PushError> {
    tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Err(PushError::Cancelled),
    }
}

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

/// One repository of one registry.
pub struct Repository<'a> {
    pub client: &'a RegistryClient,
    /// The repository path, e.g. `team/app`.
    pub repository: String,
}

pub(super) fn scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

impl<'a> Repository<'a> {
    pub fn new(client: &'a RegistryClient, repository: &str) -> Self {
        Repository {
            client,
            repository: repository.to_owned(),
        }
    }

    /// The scopes of a push: pull and push on this repository.
    pub fn scopes(&self) -> Vec<String> {
        vec![scope(&self.repository, "pull,push")]
    }

    /// The scopes of a read.
    pub(super) fn pull_scopes(&self) -> Vec<String> {
        vec![scope(&self.repository, "pull")]
    }

    /// `/v2/<repository>/<rest>`.
    pub(super) fn path(&self, rest: &str) -> String {
        format!("/v2/{}/{rest}", self.repository)
    }

    /// PUT a manifest under `reference` (a digest or a tag) and check the digest the registry
    /// computed. Whether the registry said it indexed the manifest's subject itself.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &oci_spec::image::MediaType,
        bytes: Bytes,
        digest: &Digest,
    ) -> Result<bool, PushError> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type.as_ref())
                .map_err(|e| PushError::Invalid(e.to_string()))?,
        );
        let url = self.path(&format!("manifests/{reference}"));
        let scopes = self.scopes();
        let ok = [StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED];
        let req = Request::new("PUT manifest", Method::PUT, &url, &scopes, &ok)
            .headers(h)
            .body(Body::Bytes(bytes));
        let resp = self.client.send(&req).await?;
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
        let url = self.path(&format!("manifests/{reference}"));
        let scopes = self.pull_scopes();
        let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
        let req = Request::new("GET manifest", Method::GET, &url, &scopes, &ok).headers(h);
        let resp = self.client.send(&req).await?;
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
        let url = self.path(&format!("blobs/{digest}"));
        let mut up = layout.begin_blob()?;
        let mut got = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // The body broke off: the connection, not the content. Worth another try.
                    return Err(PushError::Registry(err(
                        "GET blob",
                        &url,
                        format!(
                            "the download broke off after {got} of {size} bytes: {}",
                            crate::errors::reqwest_chain(e)
                        ),
                        true,
                    )));
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
            return Err(PushError::Registry(err(
                "GET blob",
                &url,
                format!("the download ended after {got} of {size} bytes"),
                true,
            )));
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
        let url = self.path(&format!("blobs/{digest}"));
        let scopes = self.pull_scopes();
        let ok = [StatusCode::OK];
        let req = Request::new("GET blob", Method::GET, &url, &scopes, &ok);
        Ok(self.client.send(&req).await?)
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
}

/// Check the digest a registry reports for what it stored (`Docker-Content-Digest`).
pub(super) fn check_digest(
    resp: &reqwest::Response,
    want: &Digest,
    what: &str,
) -> Result<(), PushError> {
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
}
