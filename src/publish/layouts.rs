//! Publishing into local OCI layouts, one per artifact: `<root>/<name>`.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Found, PublishError, Staging, Target, blocking, descriptor, found};
use crate::artifact::ArtifactResult;
use crate::store::{ContentStore, OciLayout, StoreError};

/// A directory of OCI layouts, one per artifact (the daemon's default without a registry).
#[derive(Clone, Debug)]
pub struct Layouts {
    pub root: PathBuf,
}

impl Layouts {
    /// Point `tags` at `desc` in the layout at `dir`.
    async fn tag(
        dir: String,
        desc: oci_spec::image::Descriptor,
        tags: &[String],
    ) -> Result<(), PublishError> {
        let tags = tags.to_vec();
        blocking(move || {
            let layout = OciLayout::open(&dir)?;
            for t in &tags {
                layout.tag(Some(t), &desc)?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Target for Layouts {
    fn location(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    async fn publish_content(
        &self,
        from: Staging<'_>,
        artifact: &ArtifactResult,
    ) -> Result<String, PublishError> {
        let location = self.location(&artifact.name);
        let (src, dst, d) = (
            from.layout.clone(),
            PathBuf::from(&location),
            descriptor(artifact)?,
        );
        blocking(move || OciLayout::open_or_create(&dst)?.import(&src, &d)).await?;
        Ok(format!("{location}@{}", artifact.digest))
    }

    async fn publish_tags(
        &self,
        _from: Staging<'_>,
        artifact: &ArtifactResult,
        tags: &[String],
    ) -> Result<(), PublishError> {
        Self::tag(self.location(&artifact.name), descriptor(artifact)?, tags).await
    }

    async fn find(
        &self,
        name: &str,
        tag: &str,
        _cancel: &CancellationToken,
    ) -> Result<Option<Found>, PublishError> {
        let location = self.location(name);
        let (dir, tag) = (PathBuf::from(&location), tag.to_owned());
        let manifest = blocking(move || -> Result<Option<(Vec<u8>, String)>, StoreError> {
            if !dir.join("oci-layout").is_file() {
                return Ok(None);
            }
            let layout = OciLayout::open(&dir)?;
            let Some(d) = layout.resolve(&tag)? else {
                return Ok(None);
            };
            let digest =
                crate::digest::Digest::from_oci(d.digest()).map_err(|e| StoreError::Corrupt {
                    path: dir.clone(),
                    reason: e.to_string(),
                })?;
            Ok(Some((
                layout.read_blob(&digest)?,
                d.media_type().to_string(),
            )))
        })
        .await?;
        Ok(manifest.map(|(bytes, media_type)| found(name, &location, &bytes, media_type)))
    }

    async fn retag(
        &self,
        artifact: &ArtifactResult,
        tags: &[String],
        _cancel: &CancellationToken,
    ) -> Result<(), PublishError> {
        Self::tag(self.location(&artifact.name), descriptor(artifact)?, tags).await
    }
}
