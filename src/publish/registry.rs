//! Publishing to a registry: artifact `name` to `<prefix>/<name>`.

use tokio_util::sync::CancellationToken;

use super::{Found, PublishError, Staging, Target, descriptor, found};
use crate::artifact::ArtifactResult;
use crate::reference::Reference;
use crate::registry::{PushError, Pusher, RegistryClient, RegistryOptions, Repository, or_cancel};

/// A registry and a path in it (`ghcr.io/acme`).
#[derive(Clone, Debug)]
pub struct Registry {
    /// `host[:port]/path`.
    pub prefix: String,
    pub options: RegistryOptions,
}

impl Registry {
    fn error(&self, name: &str) -> impl FnOnce(PushError) -> PublishError {
        let target = self.location(name);
        move |source| PublishError::Push {
            target,
            source: Box::new(source),
        }
    }

    /// The reference and a client for artifact `name`'s repository.
    fn client(&self, name: &str) -> Result<(Reference, RegistryClient), PublishError> {
        let location = self.location(name);
        let reference: Reference =
            location
                .parse()
                .map_err(|e: crate::reference::ReferenceError| {
                    self.error(name)(PushError::Invalid(e.to_string()))
                })?;
        let client = RegistryClient::for_reference(&reference, &self.options)
            .map_err(|e| self.error(name)(PushError::Registry(e)))?;
        Ok((reference, client))
    }
}

#[async_trait::async_trait]
impl Target for Registry {
    fn location(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix.trim_end_matches('/'))
    }

    async fn publish_content(
        &self,
        from: Staging<'_>,
        artifact: &ArtifactResult,
    ) -> Result<String, PublishError> {
        let desc = descriptor(artifact)?;
        let (reference, client) = self.client(&artifact.name)?;
        let mut pusher = Pusher::new(&client, from.layout, &reference.repository);
        pusher.observer = from.observer;
        pusher.cancel = from.cancel.clone();
        let digest = artifact.manifest_digest()?;
        pusher.mount_from = base_mounts(&from.layout.read_blob(&digest)?, &reference);
        pusher
            .push_content(&desc)
            .await
            .map_err(self.error(&artifact.name))?;
        Ok(format!(
            "{}@{}",
            self.location(&artifact.name),
            artifact.digest
        ))
    }

    async fn publish_tags(
        &self,
        from: Staging<'_>,
        artifact: &ArtifactResult,
        tags: &[String],
    ) -> Result<(), PublishError> {
        let desc = descriptor(artifact)?;
        let (reference, client) = self.client(&artifact.name)?;
        let mut pusher = Pusher::new(&client, from.layout, &reference.repository);
        pusher.observer = from.observer;
        pusher.cancel = from.cancel.clone();
        pusher
            .push_tags(&desc, tags)
            .await
            .map_err(self.error(&artifact.name))
    }

    async fn find(
        &self,
        name: &str,
        tag: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Found>, PublishError> {
        let (reference, client) = self.client(name)?;
        let repo = Repository::new(&client, &reference.repository);
        let got = or_cancel(cancel, repo.get_manifest(tag))
            .await
            .map_err(self.error(name))?;
        let location = self.location(name);
        Ok(got.map(|(bytes, media_type, _)| found(name, &location, &bytes, media_type)))
    }

    async fn retag(
        &self,
        artifact: &ArtifactResult,
        tags: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), PublishError> {
        let desc = descriptor(artifact)?;
        let (reference, client) = self.client(&artifact.name)?;
        let repo = Repository::new(&client, &reference.repository);
        let digest = artifact.manifest_digest()?;
        let location = self.location(&artifact.name);
        let work = async {
            let (bytes, _, _) = repo
                .get_manifest(&digest.to_string())
                .await?
                .ok_or_else(|| PushError::Invalid(format!("{location}@{digest} is gone")))?;
            for t in tags {
                crate::store::validate_tag(t)?;
                repo.put_manifest(t, desc.media_type(), bytes.clone(), &digest)
                    .await?;
            }
            Ok(())
        };
        or_cancel(cancel, work)
            .await
            .map_err(self.error(&artifact.name))
    }
}

/// Base layers that can be mounted from the base's repository: when the base lives in the
/// registry being pushed to, its layers (the first `dev.kiln.base.layers`) need no upload.
pub fn base_mounts(
    manifest: &[u8],
    target: &Reference,
) -> std::collections::HashMap<crate::digest::Digest, String> {
    let mut out = std::collections::HashMap::new();
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return out;
    };
    let ann = &m["annotations"];
    let (Some(name), Some(n)) = (
        ann[crate::image::ANNOTATION_BASE_NAME].as_str(),
        ann[crate::image::ANNOTATION_BASE_LAYERS]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok()),
    ) else {
        return out;
    };
    let Ok(base) = name.parse::<Reference>() else {
        return out;
    };
    if base.registry != target.registry {
        return out;
    }
    for l in m["layers"].as_array().into_iter().flatten().take(n) {
        if let Some(d) = l["digest"].as_str().and_then(|d| d.parse().ok()) {
            out.insert(d, base.repository.clone());
        }
    }
    out
}
