//! The SPDX 2.3 JSON document: canonical, with identifiers derived from content, so that the
//! same artifact always gives the same bytes.

use serde::Serialize;
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

/// 16 hex digits of SHA-256 over `parts`, each followed by a zero byte.
fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// A listed file's identifier: from its path's bytes.
pub fn file_id(raw_path: &[u8]) -> String {
    format!("SPDXRef-File-{}", short_hash(&[raw_path]))
}

fn package_id(scope: &str, f: &Found) -> String {
    format!(
        "SPDXRef-Package-{}-{}",
        f.ecosystem.purl_type(),
        short_hash(&[scope.as_bytes(), f.purl.as_bytes(), f.found_in.as_bytes()])
    )
}

// The document's shape. Fields are declared in the byte order of their JSON names, and every
// list is sorted by its builder, so serde_json's compact output is already canonical JSON
// (sorted keys, no spaces): the same bytes `crate::json::to_canonical_vec` gives, without
// holding a copy of the document as a `serde_json::Value` (a 10,000-file document is
// several MiB).

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "SPDXID")]
    spdx_id: &'a str,
    #[serde(rename = "creationInfo")]
    creation_info: CreationInfo,
    #[serde(rename = "dataLicense")]
    data_license: &'a str,
    #[serde(rename = "documentNamespace")]
    document_namespace: String,
    files: Vec<File>,
    name: String,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
    #[serde(rename = "spdxVersion")]
    spdx_version: &'a str,
}

#[derive(Serialize)]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
struct File {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    checksums: [Checksum; 2],
    #[serde(rename = "fileName")]
    file_name: String,
}

#[derive(Serialize)]
struct Checksum {
    algorithm: &'static str,
    #[serde(rename = "checksumValue")]
    value: String,
}

#[derive(Serialize, Default)]
struct Package {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(rename = "copyrightText", skip_serializing_if = "Option::is_none")]
    copyright_text: Option<&'static str>,
    #[serde(rename = "downloadLocation")]
    download_location: &'static str,
    #[serde(rename = "externalRefs")]
    external_refs: Vec<ExternalRef>,
    #[serde(rename = "filesAnalyzed")]
    files_analyzed: bool,
    name: String,
    #[serde(
        rename = "packageVerificationCode",
        skip_serializing_if = "Option::is_none"
    )]
    verification_code: Option<VerificationCode>,
    #[serde(
        rename = "primaryPackagePurpose",
        skip_serializing_if = "Option::is_none"
    )]
    purpose: Option<&'static str>,
    #[serde(rename = "sourceInfo", skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    #[serde(rename = "versionInfo")]
    version_info: String,
}

#[derive(Serialize)]
struct VerificationCode {
    #[serde(rename = "packageVerificationCodeValue")]
    value: String,
}

#[derive(Serialize)]
struct ExternalRef {
    #[serde(rename = "referenceCategory")]
    category: &'static str,
    #[serde(rename = "referenceLocator")]
    locator: String,
    #[serde(rename = "referenceType")]
    kind: &'static str,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Relationship {
    #[serde(rename = "relatedSpdxElement")]
    related: String,
    #[serde(rename = "relationshipType")]
    kind: &'static str,
    #[serde(rename = "spdxElementId")]
    element: String,
}

fn purl_ref(purl: &str) -> ExternalRef {
    ExternalRef {
        category: "PACKAGE-MANAGER",
        locator: purl.to_owned(),
        kind: "purl",
    }
}

/// The `pkg:oci` purl of an artifact: its name's last part, lowercased, at its digest, with
/// no `repository_url` (the SBOM never depends on where the artifact is pushed).
pub fn oci_purl(name: &str, digest: &Digest) -> String {
    let short = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    super::purl("oci", None, &short, &digest.to_string(), &[])
}

fn found_package(id: &str, f: &Found, location: &str) -> Package {
    Package {
        spdx_id: id.to_owned(),
        comment: f.comment.clone(),
        download_location: "NOASSERTION",
        external_refs: vec![purl_ref(&f.purl)],
        files_analyzed: false,
        name: f.name.clone(),
        source_info: Some(format!("{}: ./{}{location}", f.how, f.found_in)),
        version_info: f.version.clone(),
        ..Package::default()
    }
}

fn sha256_checksum(hex: String) -> Checksum {
    Checksum {
        algorithm: "SHA256",
        value: hex,
    }
}

/// The SPDX document for `subject`, whose own layer holds `contents` with `packages_found`
/// (see [`Contents::packages`]), on `base`: canonical JSON bytes.
pub fn document(
    subject: &Subject,
    contents: &Contents,
    packages_found: &[Found],
    base: Option<&Base>,
) -> Vec<u8> {
    let hex = subject.digest.hex();
    let rel = |element: &str, kind: &'static str, related: &str| Relationship {
        related: related.to_owned(),
        kind,
        element: element.to_owned(),
    };
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", ROOT_ID)];
    // The artifact.
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
    let mut root = Package {
        spdx_id: ROOT_ID.to_owned(),
        checksums: vec![sha256_checksum(hex.clone())],
        comment: Some(comment),
        copyright_text: Some("NOASSERTION"),
        download_location: "NOASSERTION",
        external_refs: vec![purl_ref(&oci_purl(&subject.name, &subject.digest))],
        files_analyzed: true,
        name: subject.name.clone(),
        verification_code: Some(VerificationCode {
            value: contents.verification_code.clone(),
        }),
        purpose: Some(if subject.image {
            "CONTAINER"
        } else {
            "ARCHIVE"
        }),
        source_info: None,
        version_info: subject.digest.to_string(),
    };
    match (&subject.source_url, &subject.revision) {
        (Some(u), Some(r)) => {
            let vcs = format!("git+{u}@{r}");
            root.source_info = Some(format!("built by kiln from {vcs}"));
            root.external_refs.push(ExternalRef {
                category: "OTHER",
                locator: vcs,
                kind: "vcs",
            });
        }
        (None, Some(r)) => root.source_info = Some(format!("built by kiln from commit {r}")),
        _ => {}
    }
    let mut packages = vec![root];

    // The packages found in its own layer.
    let own_ids: std::collections::BTreeMap<String, String> = packages_found
        .iter()
        .map(|f| (f.key(), package_id("", f)))
        .collect();
    let mut found: Vec<(String, Package)> = Vec::new();
    for f in packages_found {
        let id = own_ids[&f.key()].clone();
        relationships.push(rel(ROOT_ID, "CONTAINS", &id));
        for d in &f.depends_on {
            if let Some(dep) = own_ids.get(d) {
                relationships.push(rel(&id, "DEPENDS_ON", dep));
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
        packages.push(Package {
            spdx_id: base_id.clone(),
            checksums: vec![sha256_checksum(b.digest.hex())],
            download_location: "NOASSERTION",
            external_refs: vec![purl_ref(&oci_purl(&b.name_for_purl(), &b.digest))],
            files_analyzed: false,
            name: b.name.clone(),
            purpose: Some("CONTAINER"),
            source_info: Some("the base image the artifact's layers are added to".to_owned()),
            version_info: b.digest.to_string(),
            ..Package::default()
        });
        relationships.push(rel(ROOT_ID, "CONTAINS", &base_id));
        for f in &b.packages {
            let id = base_ids[&f.key()].clone();
            relationships.push(rel(&base_id, "CONTAINS", &id));
            for d in &f.depends_on {
                if let Some(dep) = base_ids.get(d) {
                    relationships.push(rel(&id, "DEPENDS_ON", dep));
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
        relationships.push(rel(&f.id, "CONTAINED_BY", ROOT_ID));
        files.push(File {
            spdx_id: f.id.clone(),
            checksums: [
                Checksum {
                    algorithm: "SHA1",
                    value: hex::encode(f.sha1),
                },
                sha256_checksum(hex::encode(f.sha256)),
            ],
            file_name: format!("./{}", f.path),
        });
    }
    // Sorted as canonical JSON would have sorted the tuples: by element, type, related.
    relationships
        .sort_by(|a, b| (&a.element, a.kind, &a.related).cmp(&(&b.element, b.kind, &b.related)));
    relationships.dedup();
    let doc = Document {
        spdx_id: "SPDXRef-DOCUMENT",
        creation_info: CreationInfo {
            created: crate::image::rfc3339(subject.epoch).unwrap_or_default(),
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        data_license: "CC0-1.0",
        document_namespace: format!(
            "{NAMESPACE}/{}/{}",
            subject.name.replace(['/', ' ', '#'], "-"),
            subject.digest
        ),
        files,
        name: format!("{}@{}", subject.name, subject.digest),
        packages,
        relationships,
        spdx_version: "SPDX-2.3",
    };
    serde_json::to_vec(&doc).expect("a document of strings serializes")
}

impl Base {
    /// The base's repository name, without registry host, tag or digest: its purl's name.
    fn name_for_purl(&self) -> String {
        let n = self.name.split('@').next().unwrap_or(&self.name);
        let last = n.rsplit('/').next().unwrap_or(n);
        last.split(':').next().unwrap_or(last).to_owned()
    }
}

/// The in-toto statement an SBOM is attached as, around its `document` (canonical JSON):
/// canonical JSON too (its keys `_type`, `predicate`, `predicateType`, `subject` in order).
pub fn statement(subject: &Subject, document: &[u8]) -> Vec<u8> {
    let subjects =
        serde_json::json!([{"digest": {"sha256": subject.digest.hex()}, "name": subject.name}]);
    let mut out = Vec::with_capacity(document.len() + 256);
    out.extend_from_slice(b"{\"_type\":");
    out.extend_from_slice(&serde_json::to_vec(crate::attest::STATEMENT_TYPE).expect("a string"));
    out.extend_from_slice(b",\"predicate\":");
    out.extend_from_slice(document);
    out.extend_from_slice(b",\"predicateType\":");
    out.extend_from_slice(&serde_json::to_vec(PREDICATE_TYPE).expect("a string"));
    out.extend_from_slice(b",\"subject\":");
    out.extend_from_slice(&crate::json::to_canonical_vec(&subjects).expect("strings"));
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_and_statement_are_canonical_json_as_written() {
        let mut inv = super::super::Inventory::new(10);
        for (p, body) in [(&b"usr/bin/x"[..], &b"x"[..]), (b"a\"b", b"y")] {
            crate::pack::FileTap::begin(&mut inv, p, None, 1);
            crate::pack::FileTap::data(&mut inv, body);
            crate::pack::FileTap::end(&mut inv);
        }
        let contents = inv.finish().unwrap();
        let found = vec![Found::new(
            super::super::Ecosystem::Npm,
            "a",
            "1.0.0",
            None,
            &[],
            "node_modules/a/package.json",
            "package.json",
        )];
        let subject = Subject {
            name: "app".into(),
            digest: Digest::of(b"m"),
            image: true,
            epoch: 1,
            source_url: Some("https://example.com/o/r".into()),
            revision: Some("abc".into()),
        };
        let base = Base {
            name: "reg/base:1".into(),
            digest: Digest::of(b"b"),
            packages: found.clone(),
        };
        let doc = document(&subject, &contents, &found, Some(&base));
        let value: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(doc, crate::json::to_canonical_vec(&value).unwrap());
        let st = statement(&subject, &doc);
        let value: serde_json::Value = serde_json::from_slice(&st).unwrap();
        assert_eq!(st, crate::json::to_canonical_vec(&value).unwrap());
        assert_eq!(value["predicate"]["files"][1]["fileName"], "./a\"b");
    }

    #[test]
    fn the_oci_purl_has_no_repository_url() {
        let d = Digest::of(b"x");
        let p = oci_purl("acme/Web", &d);
        assert_eq!(p, format!("pkg:oci/web@sha256%3A{}", d.hex()));
    }
}
