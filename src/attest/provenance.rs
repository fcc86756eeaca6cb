//! SLSA provenance v1: what kiln records about every build ([`Provenance`]), and what a
//! rebuild reads back from a statement ([`Recorded`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::STATEMENT_TYPE;
use crate::digest::Digest;
use crate::image::rfc3339;

pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The name of the SBOM among a statement's `byproducts`.
pub const SBOM_BYPRODUCT: &str = "sbom";
/// kiln's build type: what `externalParameters` and `internalParameters` mean. A URI that
/// names the format, written into every statement: it never changes.
pub const BUILD_TYPE: &str = "https://github.com/kiln-build/kiln/build/v1";

/// Everything a statement records.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The artifact's name (its repository name when pushed).
    pub name: String,
    /// The artifact's manifest digest.
    pub digest: Digest,
    /// The digest of the artifact's SBOM document (canonical SPDX JSON), a byproduct.
    pub sbom: Option<Digest>,
    /// The source link the manifest carries (see [`crate::forge::source_link`]).
    pub source_url: Option<String>,
    /// The remote as git had it, without credentials (a local path stays: it is where this
    /// host fetched from).
    pub remote: Option<String>,
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
    /// What the build was allowed: the recipe's asks capped by the host's limits.
    pub limits: EffectiveLimits,
    /// The digest of the build log as it stood when the steps ended.
    pub log_digest: Option<Digest>,
    /// The build caches mounted, and whether each was warm (never their content).
    pub caches: Vec<CacheRecord>,
    /// The steps (1-based) that ran with the network.
    pub network_steps: Vec<usize>,
}

/// A build cache as provenance records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheRecord {
    /// The directory in the container.
    pub path: String,
    /// The cache's identity: sha256 of (repository, recipe path, builder digest, path).
    pub id: String,
    /// Whether it held what an earlier build left.
    pub warm: bool,
    /// Another build held it (or it was unavailable): this build ran without it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scratch: bool,
}

/// The limits a build ran under, as the provenance records them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EffectiveLimits {
    pub memory: u64,
    pub cpus: f64,
    pub pids: i64,
    /// Bytes of output collected.
    pub output: u64,
    /// Bytes of step output kept in the log.
    pub log: u64,
    /// Seconds.
    pub timeout: u64,
    /// Whether the build had a network.
    pub network: bool,
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
        let recipe_uri = match (&self.source_url, &self.revision) {
            (Some(u), Some(rev)) => format!("git+{u}@{rev}#{}", self.recipe_path),
            _ => self.recipe_path.clone(),
        };
        deps.push(json!({"uri": recipe_uri, "digest": {"sha256": self.recipe_digest.hex()}, "name": "recipe"}));
        let mut byproducts: Vec<Value> = self
            .log_digest
            .iter()
            .map(|d| json!({"name": "build log", "digest": {"sha256": d.hex()}, "mediaType": "text/plain"}))
            .collect();
        if let Some(d) = &self.sbom {
            byproducts.push(json!({"name": SBOM_BYPRODUCT, "digest": {"sha256": d.hex()}, "mediaType": super::SPDX_MEDIA_TYPE}));
        }
        let mut external = json!({
            "source": self.source_url,
            "remote": self.remote,
            "ref": self.git_ref,
            "revision": self.revision,
            "recipe": self.recipe_path,
            "dir": self.dir,
            "artifact": self.name,
        });
        if self.dirty {
            external["dirty"] = Value::Bool(true);
        }
        let mut internal = json!({
            "sourceDateEpoch": self.epoch,
            "compression": self.compression,
            "compressor": self.compressor,
            "level": self.level,
            "recipeDigest": self.recipe_digest.to_string(),
            "limits": self.limits,
            "network": self.limits.network,
        });
        // Only where there are any: a build without them reads as it always did.
        if !self.caches.is_empty() {
            internal["caches"] = json!(self.caches);
        }
        if !self.network_steps.is_empty() {
            internal["networkSteps"] = json!(self.network_steps);
        }
        json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.name, "digest": {"sha256": self.digest.hex()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": external,
                    "internalParameters": internal,
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": self.builder_id, "version": {"kiln": env!("CARGO_PKG_VERSION")}},
                    "metadata": {
                        "invocationId": self.invocation_id,
                        "startedOn": rfc3339(self.started),
                        "finishedOn": rfc3339(self.finished),
                    },
                    "byproducts": byproducts,
                },
            },
        })
    }
}

/// Why a statement cannot be rebuilt from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// Whether a statement was made by kiln (its buildType).
pub(crate) fn is_kiln(st: &Value) -> bool {
    st["predicate"]["buildDefinition"]["buildType"] == BUILD_TYPE
}

/// The newest kiln statement about `subject` among `statements` (by `finishedOn`), if any.
pub fn newest_for(statements: impl IntoIterator<Item = Value>, subject: &Digest) -> Option<Value> {
    let finished = |v: &Value| {
        v["predicate"]["runDetails"]["metadata"]["finishedOn"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mut found: Option<Value> = None;
    for st in statements {
        if !is_kiln(&st)
            || st["subject"][0]["digest"]["sha256"].as_str() != Some(subject.hex().as_str())
        {
            continue;
        }
        if found.as_ref().is_none_or(|f| finished(&st) > finished(f)) {
            found = Some(st);
        }
    }
    found
}

/// What the provenance records, as a rebuild needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub artifact: String,
    /// The source link (or, when there is none, the raw remote).
    pub source: String,
    /// The raw remote the build fetched from, when recorded.
    pub remote: Option<String>,
    pub revision: String,
    pub git_ref: Option<String>,
    pub recipe: String,
    pub dir: String,
    pub recipe_digest: String,
    pub compression: String,
    pub compressor: String,
    pub builder_image: String,
    pub builder_digest: String,
    /// Base images by name, pinned to the recorded digest.
    pub bases: BTreeMap<String, String>,
    /// SOURCE_DATE_EPOCH, when the statement records it (else the commit time).
    pub epoch: Option<u64>,
    /// The kiln that built it.
    pub kiln: Option<String>,
    /// The digest of the SBOM document it lists among its byproducts (kiln 0.1 statements
    /// before SBOMs have none).
    pub sbom: Option<String>,
}

impl Recorded {
    /// Read what a kiln statement records.
    pub fn from_statement(st: &Value) -> Result<Recorded, Unusable> {
        let bad = |reason: &str| Unusable(reason.to_owned());
        let def = &st["predicate"]["buildDefinition"];
        let ext = &def["externalParameters"];
        let int = &def["internalParameters"];
        let s = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("it does not record {what}")))
        };
        if !is_kiln(st) {
            return Err(bad("it was not made by kiln (another buildType)"));
        }
        if ext["dirty"] == true {
            return Err(bad(
                "the artifact was built from uncommitted changes; only committed trees can be rebuilt",
            ));
        }
        let recipe = s(&ext["recipe"], "the recipe path")?;
        // Older statements have no "dir": it is the recipe's directory.
        let dir = match ext["dir"].as_str() {
            Some(d) => d.to_owned(),
            None => recipe
                .strip_suffix("kiln.toml")
                .unwrap_or("")
                .trim_end_matches('/')
                .to_owned(),
        };
        let deps = def["resolvedDependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let builder = deps
            .iter()
            .find(|d| d["name"] == "builder")
            .ok_or_else(|| bad("it does not record the builder image"))?;
        let builder_image = s(&builder["uri"], "the builder image")?
            .trim_start_matches("docker-image://")
            .to_owned();
        let builder_digest = builder["digest"]["sha256"]
            .as_str()
            .map(|h| format!("sha256:{h}"))
            .ok_or_else(|| bad("it does not record the builder's digest"))?;
        let mut bases = BTreeMap::new();
        for d in deps.iter().filter(|d| d["name"] == "base") {
            let name = s(&d["uri"], "the base image")?
                .trim_start_matches("oci://")
                .to_owned();
            let hex = s(&d["digest"]["sha256"], "the base image's digest")?;
            bases.insert(name, format!("sha256:{hex}"));
        }
        let remote = ext["remote"].as_str().map(str::to_owned);
        let source = match (ext["source"].as_str(), &remote) {
            (Some(u), _) => u.to_owned(),
            (None, Some(r)) => r.clone(),
            (None, None) => return Err(bad("it does not record the source URL")),
        };
        Ok(Recorded {
            artifact: s(&ext["artifact"], "the artifact's name")?,
            source,
            remote,
            revision: s(&ext["revision"], "the revision")?,
            git_ref: ext["ref"].as_str().map(str::to_owned),
            recipe,
            dir,
            recipe_digest: s(&int["recipeDigest"], "the recipe digest")?,
            compression: s(&int["compression"], "the compression")?,
            compressor: s(&int["compressor"], "the compressor")?,
            builder_image,
            builder_digest,
            bases,
            epoch: int["sourceDateEpoch"].as_u64(),
            kiln: st["predicate"]["runDetails"]["builder"]["version"]["kiln"]
                .as_str()
                .map(str::to_owned),
            sbom: st["predicate"]["runDetails"]["byproducts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["name"] == SBOM_BYPRODUCT)
                .and_then(|b| b["digest"]["sha256"].as_str())
                .map(|h| format!("sha256:{h}")),
        })
    }
}

impl Recorded {
    /// Where a rebuild fetches the source: the remote the build fetched from when it is a
    /// URL anyone could fetch (https, http, git), else the link when it is https (a forge's
    /// public form of an ssh remote), else the remote (a local path) or the link.
    pub fn fetch_url(&self) -> &str {
        if let Some(r) = &self.remote
            && ["https://", "http://", "git://"]
                .iter()
                .any(|s| r.to_ascii_lowercase().starts_with(s))
        {
            return r;
        }
        if self.source.starts_with("https://") {
            return &self.source;
        }
        self.remote.as_deref().unwrap_or(&self.source)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_build_is_read_from_a_statement() {
        let p = Provenance {
            name: "app".into(),
            digest: Digest::of(b"m"),
            sbom: Some(Digest::of(b"sbom")),
            source_url: Some("https://git.example.com/o/r".into()),
            remote: Some("git@git.example.com:o/r.git".into()),
            revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            git_ref: Some("refs/heads/main".into()),
            recipe_path: "svc/kiln.toml".into(),
            dir: "svc".into(),
            recipe_digest: Digest::of(b"recipe"),
            dirty: false,
            compression: "gzip".into(),
            compressor: crate::pack::Compression::Gzip.describe(6),
            level: 6,
            builder_image: "kiln-builder/busybox:latest".into(),
            builder_digest: Digest::of(b"builder").to_string(),
            base: Some(("reg/base:1".into(), Digest::of(b"base"))),
            builder_id: "kiln://h".into(),
            invocation_id: "x".into(),
            epoch: 7,
            started: 1,
            finished: 2,
            limits: EffectiveLimits::default(),
            log_digest: Some(Digest::of(b"log")),
            caches: Vec::new(),
            network_steps: Vec::new(),
        };
        let r = Recorded::from_statement(&p.statement()).unwrap();
        assert_eq!(r.artifact, "app");
        assert_eq!(r.dir, "svc");
        assert_eq!(r.builder_image, "kiln-builder/busybox:latest");
        assert_eq!(r.builder_digest, Digest::of(b"builder").to_string());
        assert_eq!(r.bases["reg/base:1"], Digest::of(b"base").to_string());
        assert_eq!(r.epoch, Some(7));
        assert_eq!(r.sbom, Some(Digest::of(b"sbom").to_string()));
        assert_eq!(r.fetch_url(), "https://git.example.com/o/r");
        let st = p.statement();
        let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let recipe = deps.iter().find(|d| d["name"] == "recipe").unwrap();
        assert_eq!(recipe["digest"]["sha256"], Digest::of(b"recipe").hex());
        assert_eq!(
            st["predicate"]["runDetails"]["byproducts"][0]["digest"]["sha256"],
            Digest::of(b"log").hex()
        );
        let mut local = p.clone();
        local.source_url = None;
        local.remote = Some("/srv/git/r".into());
        let r = Recorded::from_statement(&local.statement()).unwrap();
        assert_eq!(
            (r.source.as_str(), r.fetch_url()),
            ("/srv/git/r", "/srv/git/r")
        );
        assert_eq!(r.kiln.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        let mut dirty = p.clone();
        dirty.dirty = true;
        assert!(matches!(
            Recorded::from_statement(&dirty.statement()),
            Err(Unusable(_))
        ));
    }
}
