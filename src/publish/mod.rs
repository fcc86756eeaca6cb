//! Where published artifacts go, behind one trait: [`Target`]. Artifact `name` goes to
//! `<root>/<name>`, an OCI layout per artifact ([`Layouts`]), or to `<prefix>/<name>` in a
//! registry ([`Registry`]). Content goes first (blobs, the manifest by digest, referrers),
//! tags last, in a separate call, so a tag never names an incomplete artifact.

mod layouts;
mod registry;

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

pub use layouts::Layouts;
pub use registry::Registry;

use crate::artifact::ArtifactResult;
use crate::events::Observer;
use crate::registry::PushError;
use crate::store::{OciLayout, StoreError};

/// A build's artifacts where they wait to be published: the build's own layout, with who
/// hears about progress and what stops it.
#[derive(Clone, Copy)]
pub struct Staging<'a> {
    pub layout: &'a OciLayout,
    pub observer: &'a (dyn Observer + Send + Sync),
    pub cancel: &'a CancellationToken,
}

/// An artifact found published under a tag, with its manifest's annotations.
#[derive(Clone, Debug)]
pub struct Found {
    pub artifact: ArtifactResult,
    pub annotations: BTreeMap<String, String>,
}

/// Somewhere artifacts are published.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Where artifact `name` goes: a layout directory or `host/repository`.
    fn location(&self, name: &str) -> String;

    /// Everything of `artifact` but its tags: blobs, the manifest by digest and its
    /// referrers (provenance), from `from`. Returns where it went (`<location>@sha256:...`).
    async fn publish_content(
        &self,
        from: Staging<'_>,
        artifact: &ArtifactResult,
    ) -> Result<String, PublishError>;

    /// Point `tags` at `artifact`, whose content [`publish_content`](Self::publish_content)
    /// published from `from`.
    async fn publish_tags(
        &self,
        from: Staging<'_>,
        artifact: &ArtifactResult,
        tags: &[String],
    ) -> Result<(), PublishError>;

    /// What is published under `tag` for artifact `name`, if anything. Lets a daemon see that
    /// a commit is already published.
    async fn find(
        &self,
        name: &str,
        tag: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Found>, PublishError>;

    /// Point `tags` at an artifact published earlier (a ref that arrived after its build):
    /// its manifest is read back from here and put under each tag. Nothing is rebuilt.
    async fn retag(
        &self,
        artifact: &ArtifactResult,
        tags: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), PublishError>;
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing to {target}: {source}")]
    Push {
        target: String,
        source: Box<PushError>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// A record's digest that does not parse: kiln wrote it, so it is kiln's bug.
impl From<crate::digest::DigestParseError> for PublishError {
    fn from(e: crate::digest::DigestParseError) -> Self {
        PublishError::Internal(e.to_string())
    }
}

impl PublishError {
    /// Whether trying again could help.
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::Store(e) => e.is_retryable(),
            PublishError::Push { source, .. } => source.is_retryable(),
            PublishError::Internal(_) => false,
        }
    }

    /// Whether it stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, PublishError::Push { source, .. } if matches!(**source, PushError::Cancelled))
    }
}

/// Run blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PublishError::Internal(e.to_string()))?
        .map_err(PublishError::Store)
}

/// What a manifest's bytes say of the artifact: its record and its annotations.
fn found(name: &str, location: &str, bytes: &[u8], media_type: String) -> Found {
    let m: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let annotations: BTreeMap<String, String> = m["annotations"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let digest = crate::digest::Digest::of(bytes);
    let media_type = if media_type.is_empty() {
        m["mediaType"].as_str().unwrap_or_default().to_owned()
    } else {
        media_type
    };
    let kind = if m["artifactType"].is_string() {
        crate::recipe::ArtifactKind::Files
    } else {
        crate::recipe::ArtifactKind::Image
    };
    Found {
        artifact: ArtifactResult {
            name: name.to_owned(),
            kind: kind.to_string(),
            digest: digest.to_string(),
            size: bytes.len() as u64,
            media_type,
            loaded_as: None,
            pushed_to: Some(format!("{location}@{digest}")),
            provenance: None,
            sbom: None,
            sbom_document: None,
        },
        annotations,
    }
}

fn descriptor(artifact: &ArtifactResult) -> Result<oci_spec::image::Descriptor, PublishError> {
    Ok(artifact.descriptor()?)
}
