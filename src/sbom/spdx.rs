//! The SPDX 2.3 JSON document: canonical, with identifiers derived from content, so that the
//! same artifact always gives the same bytes.

use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Contents, FILE_CAP, Found, PREDICATE_TYPE};
use crate::digest::Digest;

/// The base of every SBOM's `documentNamespace` (a name, never fetched).
pub const NAMESPACE: &str = "https://github.com/kiln-build/kiln/spdx";

/// The root package's identifier.
pub const ROOT_ID: &str = "SPDXRef-Artifact";

/// The artifact an SBOM describes, and where it came from.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The artifact's name (the recipe's).
    pub name: String,
    /// Its manifest digest.
    pub digest: Digest,
    /// An image (`CONTAINER`) or a files artifact (`ARCHIVE`).
    pub image: bool,
    /// SOURCE_DATE_EPOCH: the document's `created`.
    pub epoch: u64,
    /// The source link and commit, when known.
    pub source_url: Option<String>,
    pub revision: Option<String>,
}

/// A base image and the packages found in it.
#[derive(Clone, Debug)]
pub struct Base {
    pub name: String,
    pub digest: Digest,
    pub packages: Vec<Found>,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// A listed file's identifier: from its path's bytes.
pub fn file_id(raw_path: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(raw_path);
    h.update([0]);
    format!("SPDXRef-File-{}", hex::encode(&h.finalize()[..8]))
}

fn package_id(scope: &str, f: &Found) -> String {
    format!(
        "SPDXRef-Package-{}-{}",
        f.ecosystem.purl_type(),
        short_hash(&[scope, &f.purl, &f.found_in])
    )
}

fn purl_ref(purl: &str) -> Value {
    json!({"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl})
}

/// The `pkg:oci` purl of an artifact: its name's last part, lowercased, at its digest, with
/// no `repository_url` (the SBOM never depends on where the artifact is pushed).
pub fn oci_purl(name: &str, digest: &Digest) -> String {
    let short = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    super::purl("oci", None, &short, &digest.to_string(), &[])
}

fn found_package(id: &str, f: &Found, location: &str) -> Value {
    let mut p = json!({
        "SPDXID": id,
        "name": f.name,
        "versionInfo": f.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "sourceInfo": format!("{}: ./{}{location}", f.how, f.found_in),
        "externalRefs": [purl_ref(&f.purl)],
    });
    if let Some(c) = &f.comment {
        p["comment"] = Value::String(c.clone());
    }
    p
}

/// The SPDX document for `subject`, whose own layer holds `contents` with `packages` (see
/// [`Contents::packages`]), on `base`.
pub fn document(
    subject: &Subject,
    contents: &Contents,
    packages_found: &[Found],
    base: Option<&Base>,
) -> Value {
    let hex = subject.digest.hex();
    let mut packages = Vec::new();
    let mut relationships: Vec<(String, &'static str, String)> = vec![(
        "SPDXRef-DOCUMENT".to_owned(),
        "DESCRIBES",
        ROOT_ID.to_owned(),
    )];
    // The artifact.
    let mut root = json!({
        "SPDXID": ROOT_ID,
        "name": subject.name,
        "versionInfo": subject.digest.to_string(),
        "downloadLocation": "NOASSERTION",
        "primaryPackagePurpose": if subject.image { "CONTAINER" } else { "ARCHIVE" },
        "filesAnalyzed": true,
        "packageVerificationCode": {"packageVerificationCodeValue": contents.verification_code},
        "checksums": [{"algorithm": "SHA256", "checksumValue": hex}],
        "externalRefs": [purl_ref(&oci_purl(&subject.name, &subject.digest))],
        "copyrightText": "NOASSERTION",
    });
    let listed = contents.files.len() as u64;
    let mut comment = format!(
        "{} regular files ({} bytes) in the artifact's own layers",
        contents.total_files, contents.total_bytes
    );
    if listed < contents.total_files {
        comment.push_str(&format!(
            "; the first {listed} in path order are listed (kiln lists at most {FILE_CAP}); the package verification code covers all of them"
        ));
    }
    root["comment"] = Value::String(comment);
    match (&subject.source_url, &subject.revision) {
        (Some(u), Some(r)) => {
            let vcs = format!("git+{u}@{r}");
            root["sourceInfo"] = Value::String(format!("built by kiln from {vcs}"));
            root["externalRefs"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"referenceCategory": "OTHER", "referenceType": "vcs", "referenceLocator": vcs}));
        }
        (None, Some(r)) => {
            root["sourceInfo"] = Value::String(format!("built by kiln from commit {r}"));
        }
        _ => {}
    }
    packages.push(root);

    // The packages found in its own layer.
    let own_ids: std::collections::BTreeMap<String, String> = packages_found
        .iter()
        .map(|f| (f.key(), package_id("", f)))
        .collect();
    let mut found: Vec<(String, Value)> = Vec::new();
    for f in packages_found {
        let id = own_ids[&f.key()].clone();
        relationships.push((ROOT_ID.to_owned(), "CONTAINS", id.clone()));
        for d in &f.depends_on {
            if let Some(dep) = own_ids.get(d) {
                relationships.push((id.clone(), "DEPENDS_ON", dep.clone()));
            }
        }
        found.push((id.clone(), found_package(&id, f, "")));
    }
    // The base and what it holds.
    if let Some(b) = base {
        let base_id = format!("SPDXRef-Base-{}", &b.digest.hex()[..16]);
        let base_ids: std::collections::BTreeMap<String, String> = b
            .packages
            .iter()
            .map(|f| (f.key(), package_id(&b.digest.to_string(), f)))
            .collect();
        packages.push(json!({
            "SPDXID": base_id,
            "name": b.name,
            "versionInfo": b.digest.to_string(),
            "downloadLocation": "NOASSERTION",
            "primaryPackagePurpose": "CONTAINER",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": b.digest.hex()}],
            "externalRefs": [purl_ref(&oci_purl(&b.name_for_purl(), &b.digest))],
            "sourceInfo": "the base image the artifact's layers are added to",
        }));
        relationships.push((ROOT_ID.to_owned(), "CONTAINS", base_id.clone()));
        for f in &b.packages {
            let id = base_ids[&f.key()].clone();
            relationships.push((base_id.clone(), "CONTAINS", id.clone()));
            for d in &f.depends_on {
                if let Some(dep) = base_ids.get(d) {
                    relationships.push((id.clone(), "DEPENDS_ON", dep.clone()));
                }
            }
            found.push((id.clone(), found_package(&id, f, " (in the base image)")));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    packages.extend(found.into_iter().map(|(_, v)| v));

    // The files.
    let mut files = Vec::with_capacity(contents.files.len());
    for f in &contents.files {
        let id = f.id.clone();
        files.push(json!({
            "SPDXID": id,
            "fileName": format!("./{}", f.path),
            "checksums": [
                {"algorithm": "SHA1", "checksumValue": hex::encode(f.sha1)},
                {"algorithm": "SHA256", "checksumValue": hex::encode(f.sha256)},
            ],
        }));
        relationships.push((id, "CONTAINED_BY", ROOT_ID.to_owned()));
    }
    relationships.sort();
    relationships.dedup();
    let relationships: Vec<Value> = relationships
        .into_iter()
        .map(
            |(a, t, b)| json!({"spdxElementId": a, "relationshipType": t, "relatedSpdxElement": b}),
        )
        .collect();
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", subject.name, subject.digest),
        "documentNamespace": format!("{NAMESPACE}/{}/{}", subject.name.replace(['/', ' ', '#'], "-"), subject.digest),
        "creationInfo": {
            "created": crate::image::rfc3339(subject.epoch).unwrap_or_default(),
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "files": files,
        "relationships": relationships,
    })
}

impl Base {
    /// The base's repository name, without registry host, tag or digest: its purl's name.
    fn name_for_purl(&self) -> String {
        let n = self.name.split('@').next().unwrap_or(&self.name);
        let last = n.rsplit('/').next().unwrap_or(n);
        last.split(':').next().unwrap_or(last).to_owned()
    }
}

/// The in-toto statement an SBOM is attached as.
pub fn statement(subject: &Subject, document: &Value) -> Value {
    json!({
        "_type": crate::attest::STATEMENT_TYPE,
        "subject": [{"name": subject.name, "digest": {"sha256": subject.digest.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": document,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oci_purl_has_no_repository_url() {
        let d = Digest::of(b"x");
        let p = oci_purl("acme/Web", &d);
        assert_eq!(p, format!("pkg:oci/web@sha256%3A{}", d.hex()));
    }
}
