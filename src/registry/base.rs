//! Fetching base images from a registry: resolved to a digest, the host's platform picked from an index, and
//! their config and layers copied into the local layout as they are (never re-compressed), so
//! kiln's layers can be appended and the result stays a complete image.

use oci_spec::image::History;
use serde_json::Value;

use crate::digest::Digest;
use crate::image::{BaseImage, Platform, RunConfig};
use crate::pack::Layer;
use crate::reference::Reference;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository};
use crate::store::{BlobSink, OciLayout};

fn invalid(m: String) -> PushError {
    PushError::Invalid(m)
}

/// The OCI media type for a layer media type a base may use.
pub fn oci_layer_type(t: &str) -> Option<&'static str> {
    match t {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(crate::pack::Compression::Gzip.media_type())
        }
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(crate::pack::Compression::Zstd.media_type())
        }
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => {
            Some(crate::pack::Compression::None.media_type())
        }
        _ => None,
    }
}

/// Resolve `name` for `platform` and copy its config and layers into `layout`. Cancelling
/// drops the transfers; a blob that was not complete is never stored.
pub async fn fetch(
    name: &str,
    platform: &Platform,
    layout: &OciLayout,
    options: &RegistryOptions,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<BaseImage, PushError> {
    tokio::select! {
        r = fetch_inner(name, platform, layout, options) => r,
        _ = cancel.cancelled() => Err(PushError::Cancelled),
    }
}

async fn fetch_inner(
    name: &str,
    platform: &Platform,
    layout: &OciLayout,
    options: &RegistryOptions,
) -> Result<BaseImage, PushError> {
    let reference: Reference = name
        .parse()
        .map_err(|e: crate::reference::ReferenceError| invalid(e.to_string()))?;
    let client = RegistryClient::for_reference(&reference, options)?;
    let repo = Repository::new(&client, &reference.repository);
    let (manifest, digest) = platform_manifest(&repo, name, &reference, platform).await?;
    // The config, verified and stored.
    let cfg_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "base image {name}: manifest without a config digest"
            ))
        })?;
    let cfg_bytes = repo.get_blob(&cfg_digest, 16 << 20).await?;
    layout.put_blob(&cfg_bytes)?;
    let config: Value = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| invalid(format!("base image {name}: malformed config: {e}")))?;
    let layers = fetch_layers(&repo, name, &manifest, &config, layout).await?;
    let history: Vec<History> = config["history"].as_array().map_or_else(Vec::new, |h| {
        h.iter()
            .filter_map(|e| serde_json::from_value(e.clone()).ok())
            .collect()
    });
    Ok(BaseImage {
        name: name.to_owned(),
        digest,
        registry: reference.registry,
        repository: reference.repository,
        layers,
        history,
        run: run_config(&config["config"]),
    })
}

/// The image manifest of `reference` for `platform` (picked from an index if it is one), and
/// its digest.
async fn platform_manifest(
    repo: &Repository<'_>,
    name: &str,
    reference: &Reference,
    platform: &Platform,
) -> Result<(Value, Digest), PushError> {
    let (bytes, media_type, _) = repo
        .get_manifest(&reference.target())
        .await?
        .ok_or_else(|| invalid(format!("base image {name} does not exist")))?;
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("base image {name}: malformed manifest: {e}")))?;
    let is_index = media_type.contains("index")
        || media_type.contains("manifest.list")
        || manifest.get("manifests").is_some();
    if !is_index {
        return Ok((manifest, Digest::of(&bytes)));
    }
    let entries = manifest["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pick = entries
        .iter()
        .find(|m| {
            let p = &m["platform"];
            p["os"] == platform.os.as_str()
                && p["architecture"] == platform.architecture.as_str()
                && platform
                    .variant
                    .as_deref()
                    .is_none_or(|v| p["variant"] == v)
        })
        .ok_or_else(|| invalid(format!("base image {name} has no {platform} image")))?;
    let d = pick["digest"]
        .as_str()
        .ok_or_else(|| invalid(format!("base image {name}: index entry without a digest")))?;
    let (b, _, _) = repo
        .get_manifest(d)
        .await?
        .ok_or_else(|| invalid(format!("base image {name}: {d} is missing")))?;
    let manifest = serde_json::from_slice(&b)
        .map_err(|e| invalid(format!("base image {name}: malformed manifest {d}: {e}")))?;
    Ok((manifest, Digest::of(&b)))
}

/// Copy the layers of `manifest` into `layout`, each with its `diff_id` from `config`.
async fn fetch_layers(
    repo: &Repository<'_>,
    name: &str,
    manifest: &Value,
    config: &Value,
    layout: &OciLayout,
) -> Result<Vec<Layer>, PushError> {
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let layer_descs = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layer_descs.len() != diff_ids.len() {
        return Err(invalid(format!(
            "base image {name}: {} layers but {} diff_ids",
            layer_descs.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in layer_descs.iter().zip(diff_ids) {
        let mt = l["mediaType"].as_str().unwrap_or("");
        let media_type = oci_layer_type(mt)
            .ok_or_else(|| invalid(format!("base image {name}: unsupported layer type {mt:?}")))?;
        let d: Digest = l["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| invalid(format!("base image {name}: layer without a digest")))?;
        let size = l["size"]
            .as_u64()
            .ok_or_else(|| invalid(format!("base image {name}: layer without a size")))?;
        repo.fetch_blob(layout, &d, size).await?;
        layers.push(Layer {
            digest: d,
            size,
            diff_id,
            media_type,
            entries: 0,
            uncompressed_size: 0,
        });
    }
    Ok(layers)
}

/// The runtime part of a base's config (`config.config`).
fn run_config(c: &Value) -> RunConfig {
    let strings = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };
    RunConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]).unwrap_or_default(),
        working_dir: c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        user: c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        labels: c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_layer_types_map_to_oci() {
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some("application/vnd.oci.image.layer.v1.tar+gzip")
        );
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            None
        );
    }
}
