//! SLSA provenance v1 for every artifact, as an in-toto statement attached as an OCI referrer.
//!
//! The statement lives in its own manifest (`artifactType` `application/vnd.in-toto+json`,
//! `subject` = the artifact's manifest), so the artifact's digest never depends on it: the
//! same commit still gives the same image digest, while each build records when and where it
//! ran.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use serde_json::{Value, json};

use crate::digest::Digest;
use crate::image::{ImageError, rfc3339};
use crate::store::{BlobSink, OciLayout};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The `artifactType` of the referrer and the media type of its one layer.
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// kiln's build type: what `externalParameters` and `internalParameters` mean.
pub const BUILD_TYPE: &str = "https://github.com/kiln-build/kiln/build/v1";

/// Everything a statement records.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The artifact's name (its repository name when pushed).
    pub name: String,
    /// The artifact's manifest digest.
    pub digest: Digest,
    pub source_url: Option<String>,
    pub revision: Option<String>,
    /// The git ref that was built, when known (`refs/heads/main`).
    pub git_ref: Option<String>,
    /// The recipe path, relative to the source root (or a file outside the source).
    pub recipe_path: String,
    /// The built directory inside the repository (`""` for the root, else `a/b`).
    pub dir: String,
    pub recipe_digest: Digest,
    pub dirty: bool,
    /// SOURCE_DATE_EPOCH the build used.
    pub epoch: u64,
    /// E.g. `gzip`, with the exact implementation and level.
    pub compression: String,
    pub compressor: String,
    pub level: u32,
    pub builder_image: String,
    /// The builder's content digest (see [`crate::runner::content_digest`]).
    pub builder_digest: String,
    pub base: Option<(String, Digest)>,
    /// Who built it: a configurable identity of the build host.
    pub builder_id: String,
    pub invocation_id: String,
    pub started: u64,
    pub finished: u64,
}

impl Provenance {
    /// The in-toto statement.
    pub fn statement(&self) -> Value {
        let mut deps = Vec::new();
        if let Some(rev) = &self.revision {
            let uri = match &self.source_url {
                Some(u) => format!("git+{u}"),
                None => "git+unknown".to_owned(),
            };
            deps.push(json!({"uri": uri, "digest": {"gitCommit": rev}}));
        }
        let image_digest = |id: &str| {
            let (alg, hex) = id.split_once(':').unwrap_or(("sha256", id));
            let mut m = serde_json::Map::new();
            m.insert(alg.to_owned(), Value::String(hex.to_owned()));
            Value::Object(m)
        };
        deps.push(json!({"uri": format!("docker-image://{}", self.builder_image), "digest": image_digest(&self.builder_digest), "name": "builder"}));
        if let Some((name, d)) = &self.base {
            deps.push(json!({"uri": format!("oci://{name}"), "digest": {"sha256": d.hex()}, "name": "base"}));
        }
        let mut external = json!({
            "source": self.source_url,
            "ref": self.git_ref,
            "revision": self.revision,
            "recipe": self.recipe_path,
            "dir": self.dir,
            "artifact": self.name,
        });
        if self.dirty {
            external["dirty"] = Value::Bool(true);
        }
        json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.name, "digest": {"sha256": self.digest.hex()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": external,
                    "internalParameters": {
                        "sourceDateEpoch": self.epoch,
                        "compression": self.compression,
                        "compressor": self.compressor,
                        "level": self.level,
                        "recipeDigest": self.recipe_digest.to_string(),
                    },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": self.builder_id, "version": {"kiln": env!("CARGO_PKG_VERSION")}},
                    "metadata": {
                        "invocationId": self.invocation_id,
                        "startedOn": rfc3339(self.started),
                        "finishedOn": rfc3339(self.finished),
                    },
                },
            },
        })
    }
}

/// Store `statement` in `layout` as a referrer of `subject`, replacing an older statement for
/// the same subject. Returns the referrer manifest's descriptor.
pub fn attach(
    layout: &OciLayout,
    subject: &Descriptor,
    statement: &Value,
    created: u64,
) -> Result<Descriptor, ImageError> {
    let bytes = crate::json::to_canonical_vec(statement).map_err(|source| ImageError::Json {
        what: "provenance",
        source,
    })?;
    let blob = layout.put_blob(&bytes)?;
    let config = layout.put_blob(crate::image::EMPTY_CONFIG)?;
    let mut ann = std::collections::HashMap::new();
    ann.insert(
        crate::image::ANNOTATION_CREATED.to_owned(),
        rfc3339(created).unwrap_or_default(),
    );
    let mut subject_desc = Descriptor::new(
        subject.media_type().clone(),
        subject.size(),
        subject.digest().clone(),
    );
    if let Some(t) = subject.artifact_type() {
        subject_desc.set_artifact_type(Some(t.clone()));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(IN_TOTO_MEDIA_TYPE))
        .config(Descriptor::new(
            MediaType::EmptyJSON,
            config.size,
            config.digest.to_oci(),
        ))
        .layers(vec![Descriptor::new(
            MediaType::from(IN_TOTO_MEDIA_TYPE),
            blob.size,
            blob.digest.to_oci(),
        )])
        .subject(subject_desc)
        .annotations(ann)
        .build()
        .map_err(|source| ImageError::Spec {
            what: "provenance manifest",
            source,
        })?;
    let d = crate::image::put_manifest(layout, &manifest)?;
    layout.add_referrer(subject, d.clone())?;
    Ok(d)
}

/// A short human summary of a statement, for `kiln inspect`.
pub fn summary(statement: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let p = &statement["predicate"];
    let mut put = |k: &str, v: &Value| {
        if let Some(s) = v.as_str() {
            m.insert(k.to_owned(), s.to_owned());
        }
    };
    put("predicateType", &statement["predicateType"]);
    put("buildType", &p["buildDefinition"]["buildType"]);
    put("builder", &p["runDetails"]["builder"]["id"]);
    put("invocationId", &p["runDetails"]["metadata"]["invocationId"]);
    put("startedOn", &p["runDetails"]["metadata"]["startedOn"]);
    put("finishedOn", &p["runDetails"]["metadata"]["finishedOn"]);
    put(
        "source",
        &p["buildDefinition"]["externalParameters"]["source"],
    );
    put(
        "revision",
        &p["buildDefinition"]["externalParameters"]["revision"],
    );
    put(
        "compressor",
        &p["buildDefinition"]["internalParameters"]["compressor"],
    );
    if let Some(s) = statement["subject"][0]["digest"]["sha256"].as_str() {
        m.insert("subject".to_owned(), format!("sha256:{s}"));
    }
    m
}
