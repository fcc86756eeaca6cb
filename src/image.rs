//! Image assembly: a config and a manifest around packed layers, as byte-stable JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfigurationBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};

use crate::digest::Digest;
use crate::pack::Layer;
use crate::store::{BlobSink, StoreError};

/// `org.opencontainers.image.created`.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// Manifest annotations kiln adds to every artifact: where it came from.
pub mod annotations {
    pub const REVISION: &str = "org.opencontainers.image.revision";
    pub const SOURCE: &str = "org.opencontainers.image.source";
    pub const TITLE: &str = "org.opencontainers.image.title";
    /// sha256 of the recipe file.
    pub const RECIPE_DIGEST: &str = "dev.kiln.recipe.digest";
    /// The builder image reference from the recipe.
    pub const BUILDER_IMAGE: &str = "dev.kiln.builder.image";
    /// The builder image's content-addressed ID, as the engine resolved it.
    pub const BUILDER_DIGEST: &str = "dev.kiln.builder.digest";
    /// "true" when built from uncommitted changes.
    pub const DIRTY: &str = "dev.kiln.dirty";
}

/// The platform an image is for, `os/arch[/variant]` as in `linux/amd64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the host kiln runs on, in Go's GOOS/GOARCH names.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64"
            )),
        }
    }
}

/// The runtime part of an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A base image, ready to build on.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// The reference as the recipe gave it.
    pub name: String,
    /// The digest of the (platform) image manifest the layers come from.
    pub digest: Digest,
    pub registry: String,
    pub repository: String,
    /// Its layers, with OCI media types (Docker's are renamed; the bytes are the same).
    pub layers: Vec<Layer>,
    pub history: Vec<oci_spec::image::History>,
    /// Its runtime config (Env, Entrypoint, Cmd, WorkingDir, User, Labels).
    pub run: RunConfig,
}

/// The artifact's config on top of the base's: the artifact's values win; environment
/// variables and labels merge by name.
pub fn merge_run(base: &RunConfig, ours: &RunConfig) -> RunConfig {
    let mut env: Vec<String> = base.env.clone();
    for e in &ours.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|b| b.split('=').next().unwrap_or("") != key);
        env.push(e.clone());
    }
    let mut labels = base.labels.clone();
    labels.extend(ours.labels.clone());
    RunConfig {
        // As in a Dockerfile: a new entrypoint drops the base's cmd unless a cmd is given.
        cmd: match (&ours.entrypoint, &ours.cmd) {
            (_, Some(c)) => Some(c.clone()),
            (Some(_), None) => None,
            (None, None) => base.cmd.clone(),
        },
        entrypoint: ours.entrypoint.clone().or_else(|| base.entrypoint.clone()),
        env,
        working_dir: ours
            .working_dir
            .clone()
            .or_else(|| base.working_dir.clone()),
        user: ours.user.clone().or_else(|| base.user.clone()),
        labels,
    }
}

/// Everything an image is made of besides its layers.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub platform: Platform,
    /// SOURCE_DATE_EPOCH: the config's `created`, every history entry's and the manifest's
    /// `org.opencontainers.image.created`.
    pub epoch: u64,
    pub run: RunConfig,
    /// Manifest annotations (the `created` one is added from the epoch).
    pub annotations: BTreeMap<String, String>,
    /// `created_by` in each layer's history entry.
    pub created_by: String,
    /// A base image whose layers (and history) come first.
    pub base: Option<BaseImage>,
}

/// `org.opencontainers.image.base.name` and `.base.digest`.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// How many of the first layers come from the base (so a push can mount them).
pub const ANNOTATION_BASE_LAYERS: &str = "dev.kiln.base.layers";

/// Why an image could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("building the image {what}: {source}")]
    Spec {
        what: &'static str,
        source: oci_spec::OciSpecError,
    },
    #[error("encoding the image {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("epoch {0} cannot be written as an RFC 3339 time")]
    Epoch(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestParseError),
}

/// An RFC 3339 UTC timestamp (`2023-11-14T22:13:20Z`) for an epoch.
pub fn rfc3339(epoch: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(epoch).ok()?).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn spec_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError {
    move |source| ImageError::Spec { what, source }
}

/// Write the config and manifest of an image made of `layers` into `sink`; returns the
/// manifest's descriptor (to tag it).
pub fn write_image(
    sink: &dyn BlobSink,
    layers: &[Layer],
    spec: &ImageSpec,
) -> Result<Descriptor, ImageError> {
    let created = rfc3339(spec.epoch).ok_or(ImageError::Epoch(spec.epoch))?;
    let run = &spec.run;
    let mut cb = ConfigBuilder::default();
    if let Some(e) = &run.entrypoint {
        cb = cb.entrypoint(e.clone());
    }
    if let Some(c) = &run.cmd {
        cb = cb.cmd(c.clone());
    }
    if !run.env.is_empty() {
        cb = cb.env(run.env.clone());
    }
    if let Some(w) = &run.working_dir {
        cb = cb.working_dir(w.clone());
    }
    if let Some(u) = &run.user {
        cb = cb.user(u.clone());
    }
    if !run.labels.is_empty() {
        cb = cb.labels(
            run.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    let base_layers: &[Layer] = spec.base.as_ref().map_or(&[], |b| &b.layers);
    let mut history: Vec<oci_spec::image::History> = spec
        .base
        .as_ref()
        .map_or_else(Vec::new, |b| b.history.clone());
    let ours = layers
        .iter()
        .map(|_| {
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(spec.created_by.clone())
                .build()
                .map_err(spec_err("history"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    history.extend(ours);
    let layers: Vec<Layer> = base_layers.iter().chain(layers.iter()).cloned().collect();
    let layers = &layers[..];
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            layers
                .iter()
                .map(|l| l.diff_id.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(spec_err("rootfs"))?;
    let mut config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::from(spec.platform.architecture.as_str()))
        .os(Os::from(spec.platform.os.as_str()))
        .config(cb.build().map_err(spec_err("config"))?)
        .rootfs(rootfs)
        .history(history)
        .build()
        .map_err(spec_err("config"))?;
    if let Some(v) = &spec.platform.variant {
        config.set_variant(Some(v.clone()));
    }
    let config_bytes =
        crate::json::to_canonical_vec(&config).map_err(|source| ImageError::Json {
            what: "config",
            source,
        })?;
    let config_blob = sink.put_blob(&config_bytes)?;

    let mut annotations: HashMap<String, String> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(ANNOTATION_CREATED.to_owned(), created);
    if let Some(b) = &spec.base {
        annotations.insert(ANNOTATION_BASE_NAME.to_owned(), b.name.clone());
        annotations.insert(ANNOTATION_BASE_DIGEST.to_owned(), b.digest.to_string());
        annotations.insert(
            ANNOTATION_BASE_LAYERS.to_owned(),
            b.layers.len().to_string(),
        );
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_blob.size,
            config_blob.digest.to_oci(),
        ))
        .layers(layer_descriptors(layers))
        .annotations(annotations)
        .build()
        .map_err(spec_err("manifest"))?;
    put_manifest(sink, &manifest)
}

/// Descriptors for layers, in order.
fn layer_descriptors(layers: &[Layer]) -> Vec<Descriptor> {
    layers
        .iter()
        .map(|l| Descriptor::new(MediaType::from(l.media_type), l.size, l.digest.to_oci()))
        .collect()
}

/// Store a manifest as byte-stable JSON; returns its descriptor (carrying the manifest's
/// `artifactType`, if it has one, as the spec asks of descriptors of artifacts).
pub fn put_manifest(
    sink: &dyn BlobSink,
    manifest: &oci_spec::image::ImageManifest,
) -> Result<Descriptor, ImageError> {
    let bytes = crate::json::to_canonical_vec(manifest).map_err(|source| ImageError::Json {
        what: "manifest",
        source,
    })?;
    let blob = sink.put_blob(&bytes)?;
    let mut d = Descriptor::new(MediaType::ImageManifest, blob.size, blob.digest.to_oci());
    d.set_artifact_type(manifest.artifact_type().clone());
    Ok(d)
}

/// The OCI "empty" config of artifacts: `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// Write a generic artifact: a manifest with `artifactType`, the empty config, and `layers`.
pub fn write_artifact(
    sink: &dyn BlobSink,
    layers: &[Layer],
    artifact_type: &str,
    epoch: u64,
    annotations: &BTreeMap<String, String>,
) -> Result<Descriptor, ImageError> {
    let created = rfc3339(epoch).ok_or(ImageError::Epoch(epoch))?;
    let config = sink.put_blob(EMPTY_CONFIG)?;
    let mut ann: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ann.insert(ANNOTATION_CREATED.to_owned(), created);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(artifact_type))
        .config(Descriptor::new(
            MediaType::EmptyJSON,
            config.size,
            config.digest.to_oci(),
        ))
        .layers(layer_descriptors(layers))
        .annotations(ann)
        .build()
        .map_err(spec_err("manifest"))?;
    put_manifest(sink, &manifest)
}

/// Write an image from `layout` as a `docker save` archive (what `docker load` reads on every
/// engine version), tagged `repo_tag`. Layers are copied as they are; the engine decompresses
/// them and checks them against the config's diff_ids.
pub fn write_docker_archive(
    layout: &crate::store::OciLayout,
    manifest: &Digest,
    repo_tag: &str,
    out: impl std::io::Write,
) -> Result<(), ImageError> {
    let m: oci_spec::image::ImageManifest = serde_json::from_slice(&layout.read_blob(manifest)?)
        .map_err(|source| ImageError::Json {
            what: "manifest",
            source,
        })?;
    let blob_name = |d: &Descriptor| format!("blobs/sha256/{}", d.digest().digest());
    let index = serde_json::json!([{
        "Config": blob_name(m.config()),
        "RepoTags": [repo_tag],
        "Layers": m.layers().iter().map(blob_name).collect::<Vec<_>>(),
    }]);
    let index = serde_json::to_vec(&index).map_err(|source| ImageError::Json {
        what: "docker manifest",
        source,
    })?;
    let mut tar = tar::Builder::new(out);
    let io_err = |e: std::io::Error| {
        ImageError::Store(StoreError::Io {
            op: "write docker archive",
            path: layout.root().to_owned(),
            source: e,
        })
    };
    let mut add = |name: &str, size: u64, data: &mut dyn std::io::Read| -> Result<(), ImageError> {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data).map_err(io_err)
    };
    add("manifest.json", index.len() as u64, &mut &index[..])?;
    for d in std::iter::once(m.config()).chain(m.layers().iter()) {
        let digest = Digest::from_oci(d.digest()).map_err(|e| {
            ImageError::Store(StoreError::Corrupt {
                path: layout.root().to_owned(),
                reason: e.to_string(),
            })
        })?;
        let mut blob = crate::store::ContentStore::open_blob(layout, &digest)?;
        add(&blob_name(d), d.size(), &mut blob)?;
    }
    tar.finish().map_err(io_err)
}

/// The digest of a descriptor, which kiln always writes as sha256.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest, crate::digest::DigestParseError> {
    Digest::from_oci(d.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobInfo, BlobUpload};
    use std::sync::Mutex;

    /// Keeps small blobs in memory, to look at the JSON.
    #[derive(Default)]
    struct Mem(Mutex<Vec<Vec<u8>>>);

    impl BlobSink for Mem {
        fn begin_blob(&self) -> Result<Box<dyn BlobUpload>, StoreError> {
            Err(StoreError::Corrupt {
                path: "mem".into(),
                reason: "streaming not supported".into(),
            })
        }
        fn put_blob(&self, bytes: &[u8]) -> Result<BlobInfo, StoreError> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(BlobInfo {
                digest: Digest::of(bytes),
                size: bytes.len() as u64,
            })
        }
    }

    fn layer() -> Layer {
        Layer {
            digest: Digest::of(b"blob"),
            size: 4,
            diff_id: Digest::of(b"tar"),
            media_type: crate::pack::Compression::Gzip.media_type(),
            entries: 1,
            uncompressed_size: 3,
        }
    }

    fn spec() -> ImageSpec {
        let mut labels = BTreeMap::new();
        for i in 0..20 {
            labels.insert(format!("label{i}"), format!("v{i}"));
        }
        ImageSpec {
            platform: "linux/amd64".parse().unwrap(),
            epoch: 1_700_000_000,
            run: RunConfig {
                entrypoint: Some(vec!["/app".into()]),
                cmd: Some(vec!["--serve".into()]),
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/".into()),
                user: Some("65534".into()),
                labels,
            },
            annotations: (0..20).map(|i| (format!("a{i}"), format!("{i}"))).collect(),
            created_by: "kiln pack".into(),
            base: None,
        }
    }

    #[test]
    fn json_is_byte_stable_and_complete() {
        let first = Mem::default();
        let d1 = write_image(&first, &[layer()], &spec()).unwrap();
        for _ in 0..10 {
            let m = Mem::default();
            assert_eq!(write_image(&m, &[layer()], &spec()).unwrap(), d1);
            assert_eq!(*m.0.lock().unwrap(), *first.0.lock().unwrap());
        }
        let blobs = first.0.lock().unwrap();
        let config = String::from_utf8(blobs[0].clone()).unwrap();
        assert!(config.starts_with(r#"{"architecture":"amd64","config":{"Cmd":["--serve"],"Entrypoint":["/app"],"Env":["PATH=/bin"],"Labels":{"label0":"v0","label1":"v1","label10""#), "{config}");
        assert!(
            config.contains(r#""created":"2023-11-14T22:13:20Z""#),
            "{config}"
        );
        assert!(
            config.contains(
                r#""history":[{"created":"2023-11-14T22:13:20Z","created_by":"kiln pack"}]"#
            ),
            "{config}"
        );
        assert!(
            config.contains(&format!(
                r#""rootfs":{{"diff_ids":["{}"],"type":"layers"}}"#,
                Digest::of(b"tar")
            )),
            "{config}"
        );
        let manifest = String::from_utf8(blobs[1].clone()).unwrap();
        assert!(
            manifest.contains(r#""org.opencontainers.image.created":"2023-11-14T22:13:20Z""#),
            "{manifest}"
        );
        assert!(
            manifest.contains(r#""mediaType":"application/vnd.oci.image.manifest.v1+json""#),
            "{manifest}"
        );
        assert!(manifest.ends_with(r#""schemaVersion":2}"#), "{manifest}");
    }

    #[test]
    fn epoch_changes_the_digest() {
        let mut s = spec();
        let a = write_image(&Mem::default(), &[layer()], &s).unwrap();
        s.epoch += 1;
        let b = write_image(&Mem::default(), &[layer()], &s).unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn artifact_config_wins_and_env_merges() {
        let base = RunConfig {
            entrypoint: None,
            cmd: Some(vec!["sh".into()]),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: Some("/".into()),
            user: None,
            labels: [("x".to_owned(), "1".to_owned())].into(),
        };
        let ours = RunConfig {
            entrypoint: Some(vec!["/app".into()]),
            env: vec!["A=2".into()],
            labels: [("y".to_owned(), "2".to_owned())].into(),
            ..Default::default()
        };
        let m = merge_run(&base, &ours);
        assert_eq!(m.entrypoint, Some(vec!["/app".to_owned()]));
        assert_eq!(m.cmd, None);
        assert_eq!(m.env, vec!["PATH=/bin".to_owned(), "A=2".to_owned()]);
        assert_eq!(m.working_dir.as_deref(), Some("/"));
        assert_eq!(m.labels.len(), 2);
    }

    #[test]
    fn platforms_parse() {
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("Linux/amd64".parse::<Platform>().is_err());
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
    }
}
