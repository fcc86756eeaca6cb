//! Getting one blob into a repository: skipped when it is there, mounted from another
//! repository of the registry when known, else uploaded: in one PUT when small, in one
//! resumable PATCH (or chunks, for a registry that refuses one large request) when large.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::client::{Body, Progress, Request};
use super::error::RegistryError;
use super::repository::{PushError, Repository, check_digest, scope};
use crate::digest::Digest;
use crate::events::Observer;
use crate::store::OciLayout;

/// Blobs up to this size go in one PUT (the fewest requests); larger ones are streamed in one
/// PATCH that can resume from the registry's offset after a failure, then a PUT.
pub const MONOLITHIC_MAX: u64 = 32 * 1024 * 1024;
/// Chunk size when a registry refuses one large request (413): 32 MiB, raised to its
/// `OCI-Chunk-Min-Length`.
pub const CHUNK_SIZE: u64 = 32 * 1024 * 1024;

/// What it took to get a blob into the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    Present,
    Mounted,
    Uploaded,
}

impl BlobOutcome {
    /// As [`Event::BlobPushed`](crate::events::Event::BlobPushed) says it.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobOutcome::Present => "present",
            BlobOutcome::Mounted => "mounted",
            BlobOutcome::Uploaded => "uploaded",
        }
    }
}

impl Repository<'_> {
    /// Open an upload session: its location, and the smallest chunk the registry takes.
    async fn start_upload(&self) -> Result<(String, u64), PushError> {
        let url = self.path("blobs/uploads/");
        let scopes = self.scopes();
        let ok = [StatusCode::ACCEPTED];
        let req = Request::new("start upload", Method::POST, &url, &scopes, &ok);
        let resp = self.client.send(&req).await?;
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

/// Getting blobs from a local layout into one repository.
pub struct Uploader<'a> {
    pub repo: &'a Repository<'a>,
    pub layout: &'a OciLayout,
    /// Where progress goes.
    pub observer: &'a (dyn Observer + Send + Sync),
    /// Blobs known to exist in another repository of the same registry (for mounts).
    pub mount_from: &'a HashMap<Digest, String>,
    /// Bytes per PATCH for a large blob: everything at once unless set (or a registry
    /// answers 413, which falls back to [`CHUNK_SIZE`]).
    pub chunk_size: u64,
    /// Blobs up to this size go in one PUT.
    pub monolithic_max: u64,
}

impl Uploader<'_> {
    /// Make sure the registry has a blob; returns what it took.
    pub async fn push_blob(&self, digest: &Digest, size: u64) -> Result<BlobOutcome, PushError> {
        let outcome = self.push_blob_inner(digest, size).await?;
        self.observer.event(&crate::events::Event::BlobPushed {
            digest: *digest,
            size,
            how: outcome.as_str(),
        });
        Ok(outcome)
    }

    async fn push_blob_inner(&self, digest: &Digest, size: u64) -> Result<BlobOutcome, PushError> {
        if self.has_blob(digest).await? {
            return Ok(BlobOutcome::Present);
        }
        let path = self.layout.blob_path(digest);
        if !path.is_file() {
            return Err(crate::store::StoreError::BlobNotFound { digest: *digest }.into());
        }
        if self.mount(digest).await? {
            return Ok(BlobOutcome::Mounted);
        }
        if size <= self.monolithic_max {
            self.upload_monolithic(digest, size, &path).await?;
        } else {
            self.upload_chunked(digest, size, &path).await?;
        }
        Ok(BlobOutcome::Uploaded)
    }

    /// Whether the repository has the blob already (`HEAD`).
    async fn has_blob(&self, digest: &Digest) -> Result<bool, PushError> {
        let url = self.repo.path(&format!("blobs/{digest}"));
        let scopes = self.repo.scopes();
        let ok = [StatusCode::OK, StatusCode::NOT_FOUND];
        let req = Request::new("HEAD blob", Method::HEAD, &url, &scopes, &ok);
        Ok(self.repo.client.send(&req).await?.status() == StatusCode::OK)
    }

    /// Mount the blob from the repository it is known to be in, where there is one.
    async fn mount(&self, digest: &Digest) -> Result<bool, PushError> {
        let Some(from) = self.mount_from.get(digest) else {
            return Ok(false);
        };
        if from == &self.repo.repository {
            return Ok(false);
        }
        let url = self
            .repo
            .path(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let scopes = vec![
            scope(&self.repo.repository, "pull,push"),
            scope(from, "pull"),
        ];
        let ok = [StatusCode::CREATED, StatusCode::ACCEPTED];
        let req = Request::new("mount blob", Method::POST, &url, &scopes, &ok);
        // 202: the registry wants the bytes after all; the session it opened is abandoned.
        Ok(self.repo.client.send(&req).await?.status() == StatusCode::CREATED)
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
            let (loc, _) = self.repo.start_upload().await?;
            let url = with_query(&loc, &format!("digest={digest}"));
            let scopes = self.repo.scopes();
            let ok = [StatusCode::CREATED];
            let req = Request::new("upload blob", Method::PUT, &url, &scopes, &ok)
                .headers(octet_stream())
                .body(Body::File {
                    path: path.to_owned(),
                    offset: 0,
                    len: size,
                    progress: None,
                })
                .once();
            match self.repo.client.send(&req).await {
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
    /// has and resume from there.
    async fn upload_chunked(
        &self,
        digest: &Digest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<(), PushError> {
        let (mut loc, min) = self.repo.start_upload().await?;
        let mut chunk = self.chunk_size.max(min).max(1);
        // The body reports how far it got through a channel; `send_chunk` tells the observer.
        let (tx, mut seen) = tokio::sync::watch::channel(0u64);
        let progress: Progress = std::sync::Arc::new(move |done| {
            let _ = tx.send(done);
        });
        let mut offset = 0u64;
        let started = Instant::now();
        let mut failures = 0u32;
        while offset < size {
            let len = chunk.min(size - offset);
            let body = Body::File {
                path: path.to_owned(),
                offset,
                len,
                progress: Some(progress.clone()),
            };
            match self
                .send_chunk(&loc, body, (offset, len, size), digest, &mut seen)
                .await
            {
                Ok(resp) => {
                    loc = self.repo.location(&resp).await.unwrap_or(loc);
                    offset += len;
                    self.observer.event(&crate::events::Event::UploadProgress {
                        digest: *digest,
                        done: offset,
                        total: size,
                    });
                }
                // Too large for one request (a proxy, a registry's cap): chunks, from the start
                // of a new session.
                Err(e) if e.status == Some(413) && chunk > CHUNK_SIZE.max(min) => {
                    tracing::warn!(%digest, "the registry refused the blob in one request (413); sending {} MiB chunks", CHUNK_SIZE.max(min) >> 20);
                    chunk = CHUNK_SIZE.max(min);
                    (loc, offset) = (self.repo.start_upload().await?.0, 0);
                }
                // The registry and kiln disagree on the offset: start over in a new session.
                Err(e) if e.status == Some(416) && started.elapsed() < Duration::from_secs(600) => {
                    tracing::info!(%digest, offset, error = %e, "the registry rejected the chunk's range; starting a new session");
                    (loc, offset) = (self.repo.start_upload().await?.0, 0);
                }
                Err(e) if e.retryable && started.elapsed() < Duration::from_secs(600) => {
                    failures += 1;
                    tracing::info!(%digest, offset, error = %e, "chunk failed; asking the registry where to resume");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(20))))
                        .await;
                    (loc, offset) = self.resume_point(loc, digest).await?;
                    if offset > size {
                        return Err(PushError::Invalid(format!(
                            "the registry claims {offset} bytes of a {size}-byte blob"
                        )));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.finish_upload(&loc, digest).await
    }

    /// PATCH one chunk (`offset`, `len` of `total` bytes), telling the observer how far the
    /// body got while it goes.
    async fn send_chunk(
        &self,
        loc: &str,
        body: Body,
        (offset, len, total): (u64, u64, u64),
        digest: &Digest,
        seen: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut h = octet_stream();
        h.insert(
            "content-range",
            HeaderValue::from_str(&format!("{offset}-{}", offset + len - 1)).expect("ascii"),
        );
        let scopes = self.repo.scopes();
        let ok = [StatusCode::ACCEPTED, StatusCode::NO_CONTENT];
        let req = Request::new("upload chunk", Method::PATCH, loc, &scopes, &ok)
            .headers(h)
            .body(body)
            .once();
        let send = self.repo.client.send(&req);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => return r,
                Ok(()) = seen.changed() => {
                    let done = *seen.borrow_and_update();
                    self.observer.event(&crate::events::Event::UploadProgress {
                        digest: *digest,
                        done,
                        total,
                    });
                }
            }
        }
    }

    /// Where to go on after a failed chunk: the session's location and how much the registry
    /// holds (`GET <location>`, answered with `Range: 0-N`). Some registries (the CNCF
    /// distribution registry among them) drop a session whose chunk broke off: then a new
    /// session, from the beginning.
    async fn resume_point(&self, loc: String, digest: &Digest) -> Result<(String, u64), PushError> {
        let scopes = self.repo.scopes();
        let ok = [StatusCode::NO_CONTENT, StatusCode::OK];
        let req = Request::new("upload status", Method::GET, &loc, &scopes, &ok);
        match self.repo.client.send(&req).await {
            Ok(resp) => {
                let offset = resp
                    .headers()
                    .get(reqwest::header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .map_or(0, received_bytes);
                Ok((self.repo.location(&resp).await.unwrap_or(loc), offset))
            }
            Err(e) if matches!(e.status, Some(400..=499)) => {
                tracing::info!(%digest, error = %e, "the upload session is gone; starting a new one");
                Ok((self.repo.start_upload().await?.0, 0))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The closing PUT. Not retried as is: the first PUT uses the session up. If its answer
    /// was lost, the blob may well be there: ask before giving up.
    async fn finish_upload(&self, loc: &str, digest: &Digest) -> Result<(), PushError> {
        let url = with_query(loc, &format!("digest={digest}"));
        let scopes = self.repo.scopes();
        let ok = [StatusCode::CREATED];
        let req = Request::new("finish upload", Method::PUT, &url, &scopes, &ok).once();
        match self.repo.client.send(&req).await {
            Ok(resp) => check_digest(&resp, digest, &format!("blob {digest}")),
            Err(e) if self.has_blob(digest).await? => {
                tracing::debug!(%digest, error = %e, "the closing PUT failed, but the blob is there");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn octet_stream() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h
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

#[cfg(test)]
mod tests {
    use super::*;

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
