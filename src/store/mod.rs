//! Local content: blobs, manifests, tags and referrers in an OCI image layout.
//!
//! The packer only needs a [`BlobSink`]: somewhere to stream a blob that reports its digest
//! on commit. A [`ContentStore`] adds tags and reads. The local OCI image layout
//! ([`OciLayout`]) is the one store: every build writes there first. Publishing elsewhere (a
//! directory of layouts, a registry) is a separate step behind its own trait,
//! [`publish::Target`](crate::publish::Target), which reads from a store.

mod layout;
mod referrers;

use std::io::{self, Read, Write};
use std::path::PathBuf;

pub use layout::{OciLayout, REF_NAME};

use crate::digest::Digest;

/// A blob that was written and committed: its content address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// An in-progress blob. Bytes are hashed as they are written; dropping it without
/// [`commit`](BlobUpload::commit) discards everything written.
pub trait BlobUpload: Write + Send {
    /// Make the blob durable and visible under its digest. A blob that already exists is
    /// left untouched.
    fn commit(self: Box<Self>) -> Result<BlobInfo, StoreError>;
}

/// Somewhere to stream blobs.
pub trait BlobSink: Send + Sync {
    fn begin_blob(&self) -> Result<Box<dyn BlobUpload>, StoreError>;

    /// Write a small blob held in memory (configs, manifests).
    fn put_blob(&self, bytes: &[u8]) -> Result<BlobInfo, StoreError> {
        let mut up = self.begin_blob()?;
        up.write_all(bytes).map_err(|source| StoreError::Io {
            op: "write blob",
            path: PathBuf::from("<blob>"),
            source,
        })?;
        up.commit()
    }
}

/// A content-addressed store with tags.
pub trait ContentStore: BlobSink {
    /// Point `tag` at `manifest` (moving it if it pointed elsewhere). Without a tag, the
    /// manifest is recorded untagged, once.
    fn tag(
        &self,
        tag: Option<&str>,
        manifest: &oci_spec::image::Descriptor,
    ) -> Result<(), StoreError>;

    /// The manifest descriptor a tag points at, if any.
    fn resolve(&self, tag: &str) -> Result<Option<oci_spec::image::Descriptor>, StoreError>;

    /// Open a blob for streaming reads.
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, StoreError>;
}

/// What went wrong in a store, on which path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an OCI image layout: {reason}", path.display())]
    NotALayout { path: PathBuf, reason: String },
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "invalid tag {tag:?}: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    InvalidTag { tag: String },
    #[error("blob {digest} is not in the store")]
    BlobNotFound { digest: Digest },
}

impl StoreError {
    /// Whether trying again could help (a transient I/O condition, not bad data).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Docker's tag grammar, so that whatever is tagged locally can also be pushed.
pub fn validate_tag(tag: &str) -> Result<(), StoreError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}
