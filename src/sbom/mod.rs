//! What is inside an artifact: a deterministic SPDX 2.3 SBOM.
//!
//! The inventory is taken while the layer is packed ([`Inventory`] is a
//! [`FileTap`](crate::pack::FileTap)): every regular file is hashed (SHA-1 and SHA-256) from
//! the same bytes that go into the layer, metadata files are read as they pass, package
//! databases are kept until the distribution is known, and each ELF binary's build info is
//! read from its file once its bytes are in the layer. Nothing depends on the host: the
//! document ([`spdx::document`]) is a function of the layer's content, the manifest digest,
//! the commit, the base image and kiln's version alone.
//!
//! What is detected ([`detect`], [`binary`]):
//! - Debian packages: `var/lib/dpkg/status` and `var/lib/dpkg/status.d/*`;
//! - Alpine packages: `lib/apk/db/installed`;
//! - Go binaries (Go 1.18 and later): the module build info `go version -m` prints;
//! - Rust binaries built with `cargo auditable`: the `.dep-v0` section;
//! - Python distributions: `*.dist-info/METADATA` and `*.egg-info/PKG-INFO`;
//! - node packages: `node_modules/**/package.json` (a package's own directory only).
//!
//! Anything else is not guessed: a binary without build info gives no package.

pub mod binary;
pub mod cyclonedx;
pub mod detect;
pub mod fetch;
pub mod spdx;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha1::Digest as _;

use crate::digest::Digest;
use crate::pack::{FileTap, Layer};
use crate::store::OciLayout;
use detect::Metadata;

pub use crate::attest::{SPDX_MEDIA_TYPE as MEDIA_TYPE, SPDX_PREDICATE_TYPE as PREDICATE_TYPE};
/// The most files an SBOM lists; the rest are counted, and covered by the package
/// verification code.
pub const FILE_CAP: usize = 10_000;
/// The largest metadata file (a dpkg status, a `package.json`) kiln reads.
const MAX_METADATA: u64 = 32 << 20;

/// Where a package was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ecosystem {
    Deb,
    Apk,
    Go,
    Cargo,
    PyPi,
    Npm,
}

impl Ecosystem {
    fn purl_type(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Apk => "apk",
            Ecosystem::Go => "golang",
            Ecosystem::Cargo => "cargo",
            Ecosystem::PyPi => "pypi",
            Ecosystem::Npm => "npm",
        }
    }
}

/// A package detected in a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub ecosystem: Ecosystem,
    /// Its name as its ecosystem writes it (a Go module path, an npm `@scope/name`).
    pub name: String,
    pub version: String,
    pub purl: String,
    /// The layer path it was read from.
    pub found_in: String,
    /// How it was found (the database or metadata read).
    pub how: String,
    pub comment: Option<String>,
    /// [`Found::key`]s of the packages it depends on (a Go main module's dependencies, a
    /// crate's).
    pub depends_on: Vec<String>,
}

impl Found {
    pub(crate) fn new(
        ecosystem: Ecosystem,
        name: &str,
        version: &str,
        namespace: Option<&str>,
        qualifiers: &[(&str, String)],
        found_in: &str,
        how: &str,
    ) -> Found {
        let purl = purl(ecosystem.purl_type(), namespace, name, version, qualifiers);
        Found {
            ecosystem,
            name: name.to_owned(),
            version: version.to_owned(),
            purl,
            found_in: found_in.to_owned(),
            how: how.to_owned(),
            comment: None,
            depends_on: Vec::new(),
        }
    }

    /// What identifies it in one document: its purl where it was found.
    pub fn key(&self) -> String {
        format!("{}\n{}", self.purl, self.found_in)
    }
}

/// A package URL. The `packageurl` crate applies each type's rules (lowercased deb names, `_`
/// to `-` in PyPI names) and encodes the type, namespace, name and qualifiers; the version is
/// encoded here, every character but the unreserved ones, as the purl specification's
/// examples (`pkg:oci/debian@sha256%3A...`) and its reference implementation do (the crate
/// leaves `:` and `(` as they are).
fn purl(
    ty: &str,
    namespace: Option<&str>,
    name: &str,
    version: &str,
    qualifiers: &[(&str, String)],
) -> String {
    let build = || -> Result<String, packageurl::Error> {
        let mut p = packageurl::PackageUrl::new(ty, name)?;
        if let Some(ns) = namespace {
            p.with_namespace(ns)?;
        }
        for (k, v) in qualifiers {
            p.add_qualifier(*k, v.as_str())?;
        }
        Ok(p.to_string())
    };
    let mut s = build().unwrap_or_else(|_| {
        // Only an empty or invalid name gets here; keep the document valid and say so.
        format!("pkg:generic/{}", hex::encode(name.as_bytes()))
    });
    if !version.is_empty() {
        let at = s.find('?').unwrap_or(s.len());
        s.insert_str(at, &format!("@{}", encode_version(version)));
    }
    s
}

fn encode_version(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One listed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// Its path, as text (a name that is not UTF-8 is shown with replacement characters).
    pub path: String,
    /// Its identifier in the document, from the path's bytes (so two names that only differ
    /// in bytes that are not UTF-8 never share one).
    pub id: String,
    pub sha1: [u8; 20],
    pub sha256: [u8; 32],
}

/// A distribution's package database (dpkg, apk): read once the distribution is known,
/// which may be named by another layer's `os-release`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub path: String,
    kind: Metadata,
    bytes: Vec<u8>,
}

/// What an artifact's own layer holds, as the SBOM records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// The first [`FILE_CAP`] regular files, in path order.
    pub files: Vec<FileRecord>,
    pub total_files: u64,
    pub total_bytes: u64,
    /// SPDX's package verification code over every regular file (not only those listed).
    pub verification_code: String,
    /// Packages that name themselves: binaries' build info, Python and node metadata.
    found: Vec<Found>,
    /// Distribution package databases.
    databases: Vec<Database>,
    /// The distribution the layer's `os-release` names (`etc/` before `usr/lib/`).
    pub distro: Option<detect::Distro>,
    /// Metadata files and binaries too large to read (their packages are not listed).
    pub skipped: Vec<String>,
}

impl Contents {
    /// The detected packages, sorted by purl and path; distribution packages are named after
    /// this layer's distribution, else `fallback` (the base's).
    pub fn packages(&self, fallback: Option<&detect::Distro>) -> Vec<Found> {
        let distro = self.distro.as_ref().or(fallback);
        let mut out = self.found.clone();
        for d in &self.databases {
            let text = String::from_utf8_lossy(&d.bytes);
            out.extend(match d.kind {
                Metadata::Dpkg => detect::dpkg(&d.path, &text, distro),
                Metadata::Apk => detect::apk(&d.path, &text, distro),
                _ => Vec::new(),
            });
        }
        sorted(out)
    }

    /// The paths this layer reads packages from: a base's findings at these paths are
    /// replaced by this layer's files.
    pub fn package_paths(&self) -> std::collections::BTreeSet<&str> {
        self.found
            .iter()
            .map(|f| f.found_in.as_str())
            .chain(self.databases.iter().map(|d| d.path.as_str()))
            .collect()
    }
}

fn sorted(mut packages: Vec<Found>) -> Vec<Found> {
    packages.sort_by(|a, b| (&a.purl, &a.found_in).cmp(&(&b.purl, &b.found_in)));
    packages.dedup_by(|a, b| a.key() == b.key());
    packages
}

/// The largest binary whose build info kiln reads (its sections are read from the file, so
/// a crafted header can make kiln read at most this much).
const MAX_BINARY: u64 = 512 << 20;
/// The most a layer's distribution databases may hold in all, kept until the layer ends.
const MAX_DATABASES: u64 = 128 << 20;

struct Current {
    path: String,
    id: String,
    sha1: Option<sha1::Sha1>,
    sha256: Option<sha2::Sha256>,
    capture: Option<(Metadata, Vec<u8>)>,
    head: Vec<u8>,
    source: Option<PathBuf>,
    size: u64,
    spool: Option<std::fs::File>,
}

/// Collects an SBOM's inventory from a layer's files as they are packed (or read).
pub struct Inventory {
    /// Hash and list files (an artifact's own layer), or only detect packages (a base's).
    hash: bool,
    cap: usize,
    files: Vec<FileRecord>,
    sha1s: Vec<[u8; 20]>,
    total_files: u64,
    total_bytes: u64,
    cur: Option<Current>,
    found: Vec<Found>,
    databases: Vec<Database>,
    database_bytes: u64,
    os_release: Vec<(String, Vec<u8>)>,
    /// Where binaries from a stream are spooled.
    scratch: Option<PathBuf>,
    skipped: Vec<String>,
    /// The first failure to read a binary (a full scratch disk, a file gone): the SBOM
    /// cannot be complete, so it is not written.
    failed: Option<SbomError>,
}

impl Inventory {
    /// An inventory of an artifact's own layer: files hashed and listed up to `cap`.
    pub fn new(cap: usize) -> Inventory {
        Inventory {
            hash: true,
            cap,
            files: Vec::new(),
            sha1s: Vec::new(),
            total_files: 0,
            total_bytes: 0,
            cur: None,
            found: Vec::new(),
            databases: Vec::new(),
            database_bytes: 0,
            os_release: Vec::new(),
            scratch: None,
            skipped: Vec::new(),
            failed: None,
        }
    }

    /// An inventory that only detects packages, spooling binaries under `scratch`.
    fn detect_only(scratch: &Path) -> Inventory {
        Inventory {
            hash: false,
            scratch: Some(scratch.to_owned()),
            ..Inventory::new(0)
        }
    }

    /// What the layer holds, or why its binaries could not be read.
    pub fn finish(mut self) -> Result<Contents, SbomError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let distro = self
            .os_release
            .iter()
            .min_by_key(|(p, _)| p != "etc/os-release")
            .and_then(|(_, b)| detect::os_release(&String::from_utf8_lossy(b)));
        self.sha1s.sort_unstable();
        let mut code = sha1::Sha1::new();
        for s in &self.sha1s {
            code.update(hex::encode(s).as_bytes());
        }
        for path in &self.skipped {
            tracing::warn!(
                path,
                "too large to read for the SBOM: its packages are not listed"
            );
        }
        Ok(Contents {
            files: self.files,
            total_files: self.total_files,
            total_bytes: self.total_bytes,
            verification_code: hex::encode(code.finalize()),
            found: sorted(self.found),
            databases: self.databases,
            distro,
            skipped: self.skipped,
        })
    }

    fn fail(&mut self, path: &str, source: std::io::Error) {
        if self.failed.is_none() {
            self.failed = Some(SbomError::Binary {
                path: path.to_owned(),
                source,
            });
        }
    }
}

impl FileTap for Inventory {
    fn begin(&mut self, raw: &[u8], source: Option<&Path>, size: u64) {
        let path = String::from_utf8_lossy(raw).into_owned();
        let listed = self.hash && self.files.len() < self.cap;
        let capture = detect::classify(&path).and_then(|m| {
            let over = size > MAX_METADATA
                || (matches!(m, Metadata::Dpkg | Metadata::Apk)
                    && self.database_bytes + size > MAX_DATABASES);
            if over {
                self.skipped.push(path.clone());
                None
            } else {
                Some((m, Vec::with_capacity(size as usize)))
            }
        });
        self.cur = Some(Current {
            id: if listed {
                spdx::file_id(raw)
            } else {
                String::new()
            },
            sha1: self.hash.then(sha1::Sha1::new),
            sha256: listed.then(sha2::Sha256::new),
            capture,
            head: Vec::with_capacity(4),
            source: source.map(Path::to_owned),
            size,
            spool: None,
            path,
        });
    }

    fn data(&mut self, bytes: &[u8]) {
        let Some(c) = self.cur.as_mut() else {
            return;
        };
        if let Some(h) = c.sha1.as_mut() {
            h.update(bytes);
        }
        if let Some(h) = c.sha256.as_mut() {
            h.update(bytes);
        }
        if let Some((_, buf)) = c.capture.as_mut() {
            buf.extend_from_slice(bytes);
        }
        let earlier = c.head.len();
        let mut wrote = Ok(());
        if earlier < 4 {
            let want = (4 - earlier).min(bytes.len());
            c.head.extend_from_slice(&bytes[..want]);
            // A binary from a stream: spool it from its first byte, to read its sections.
            if c.head == b"\x7fELF"
                && c.source.is_none()
                && let Some(dir) = &self.scratch
            {
                if c.size > MAX_BINARY {
                    self.skipped.push(c.path.clone());
                } else {
                    // The bytes of earlier calls are only in `head`.
                    wrote = tempfile::tempfile_in(dir).and_then(|mut f| {
                        f.write_all(&c.head[..earlier])?;
                        f.write_all(bytes)?;
                        c.spool = Some(f);
                        Ok(())
                    });
                }
            }
        } else if let Some(f) = c.spool.as_mut() {
            wrote = f.write_all(bytes);
        }
        if let Err(e) = wrote {
            let path = c.path.clone();
            c.spool = None;
            self.fail(&path, e);
        }
    }

    fn end(&mut self) {
        let Some(c) = self.cur.take() else {
            return;
        };
        if self.hash {
            self.total_files += 1;
            self.total_bytes += c.size;
        }
        let sha1: Option<[u8; 20]> = c.sha1.map(|h| h.finalize().into());
        if let Some(s) = sha1 {
            self.sha1s.push(s);
        }
        if let (Some(s1), Some(s256)) = (sha1, c.sha256) {
            self.files.push(FileRecord {
                path: c.path.clone(),
                id: c.id,
                sha1: s1,
                sha256: s256.finalize().into(),
            });
        }
        // Metadata that names its own version is read now; databases wait for the distro.
        match c.capture {
            Some((Metadata::Python, b)) => self
                .found
                .extend(detect::python(&c.path, &String::from_utf8_lossy(&b))),
            Some((Metadata::Node, b)) => self.found.extend(detect::node(&c.path, &b)),
            Some((Metadata::OsRelease, b)) => self.os_release.push((c.path.clone(), b)),
            Some((kind, bytes)) => {
                self.database_bytes += bytes.len() as u64;
                self.databases.push(Database {
                    path: c.path.clone(),
                    kind,
                    bytes,
                });
            }
            None => {}
        }
        // A binary is read at once, one open file at a time.
        if c.head == b"\x7fELF" {
            let file = match (c.source, c.spool) {
                (_, Some(f)) => Some(Ok(f)),
                (Some(_), None) if c.size > MAX_BINARY => {
                    self.skipped.push(c.path.clone());
                    None
                }
                (Some(p), None) => Some(std::fs::File::open(p)),
                (None, None) => None,
            };
            match file {
                Some(Ok(f)) => self.found.extend(binary::detect(&c.path, &f)),
                Some(Err(e)) => self.fail(&c.path, e),
                None => {}
            }
        }
    }
}

/// Why an SBOM could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("reading the base image's layer {digest}: {source}")]
    Layer {
        digest: Digest,
        source: std::io::Error,
    },
    #[error("reading the binary {path} for its build info: {source}")]
    Binary {
        path: String,
        source: std::io::Error,
    },
    #[error("reading the SBOM: {0}")]
    Invalid(String),
    #[error("the SBOM scan was cancelled")]
    Cancelled,
}

impl SbomError {
    /// Whether trying again could help: the disk, not the content, failed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SbomError::Layer { .. } | SbomError::Binary { .. })
    }
}

/// What a base image holds: its packages, and the distribution its `os-release` names.
#[derive(Clone, Debug, Default)]
pub struct BaseContents {
    pub packages: Vec<Found>,
    pub distro: Option<detect::Distro>,
}

/// A merged view of layers, path by path: a later layer's file replaces an earlier one's,
/// whiteouts remove them.
#[derive(Default)]
struct Merged {
    found: BTreeMap<String, Vec<Found>>,
    databases: BTreeMap<String, Database>,
    os_release: BTreeMap<String, Vec<u8>>,
}

impl Merged {
    /// Remove `dir` and everything under it (`""`: everything).
    fn remove_under(&mut self, dir: &str, and_itself: bool) {
        let prefix = format!("{dir}/");
        let gone =
            |k: &String| dir.is_empty() || k.starts_with(&prefix) || (and_itself && k == dir);
        self.found.retain(|k, _| !gone(k));
        self.databases.retain(|k, _| !gone(k));
        self.os_release.retain(|k, _| !gone(k));
    }
}

/// The packages detected in a base image's layers (in the layout), as the image's filesystem
/// has them: a later layer's file replaces an earlier one's, and whiteouts remove them.
pub fn scan_base(
    layout: &OciLayout,
    layers: &[Layer],
    scratch: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<BaseContents, SbomError> {
    let mut merged = Merged::default();
    for layer in layers {
        let err = |source| SbomError::Layer {
            digest: layer.digest,
            source,
        };
        let file = std::fs::File::open(layout.blob_path(&layer.digest)).map_err(err)?;
        let stream: Box<dyn Read> = if layer.media_type.contains("zstd") {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(err)?)
        } else if layer.media_type.contains("gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                file,
            )))
        } else {
            Box::new(file)
        };
        let mut inv = Inventory::detect_only(scratch);
        let mut archive = tar::Archive::new(stream);
        let mut buf = vec![0u8; 128 * 1024];
        for entry in archive.entries().map_err(err)? {
            if cancel.is_cancelled() {
                return Err(SbomError::Cancelled);
            }
            let mut entry = entry.map_err(err)?;
            let raw = entry.path_bytes().into_owned();
            let path = String::from_utf8_lossy(&raw)
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_owned();
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name == ".wh..wh..opq" {
                merged.remove_under(dir, false);
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                let target = if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                };
                merged.remove_under(&target, true);
                continue;
            }
            // Whatever stood at this path before is replaced (a directory replaced by a
            // file or a link takes what was under it too).
            if !entry.header().entry_type().is_dir() {
                merged.remove_under(&path, true);
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let size = entry.header().size().map_err(err)?;
            inv.begin(path.as_bytes(), None, size);
            let interesting = inv
                .cur
                .as_ref()
                .is_some_and(|c| c.capture.is_some() || size >= 64);
            if interesting {
                loop {
                    let n = entry.read(&mut buf).map_err(err)?;
                    if n == 0 {
                        break;
                    }
                    inv.data(&buf[..n]);
                    // Only binaries and metadata need more than their first bytes.
                    let c = inv.cur.as_ref();
                    if c.is_some_and(|c| {
                        c.capture.is_none() && c.spool.is_none() && c.head.len() >= 4
                    }) {
                        break;
                    }
                }
            }
            inv.end();
        }
        let found = std::mem::take(&mut inv.found);
        let databases = std::mem::take(&mut inv.databases);
        let os_release = std::mem::take(&mut inv.os_release);
        inv.finish()?;
        for f in found {
            merged.found.entry(f.found_in.clone()).or_default().push(f);
        }
        for d in databases {
            merged.databases.insert(d.path.clone(), d);
        }
        merged.os_release.extend(os_release);
    }
    let distro = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| merged.os_release.get(*p))
        .and_then(|b| detect::os_release(&String::from_utf8_lossy(b)));
    let contents = Contents {
        found: merged.found.into_values().flatten().collect(),
        databases: merged.databases.into_values().collect(),
        distro: distro.clone(),
        ..Contents::default()
    };
    Ok(BaseContents {
        packages: contents.packages(None),
        distro,
    })
}

/// The SBOM document inside a statement's bytes (the predicate), as canonical JSON: what
/// `kiln sbom` prints, and what the provenance's `byproducts` digest covers.
pub fn document_bytes(statement: &serde_json::Value) -> Result<Vec<u8>, SbomError> {
    if statement["predicateType"] != PREDICATE_TYPE {
        return Err(SbomError::Invalid(format!(
            "the statement's predicateType is {}, not {PREDICATE_TYPE}",
            statement["predicateType"]
        )));
    }
    crate::json::to_canonical_vec(&statement["predicate"])
        .map_err(|e| SbomError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobSink as _;

    fn tar_layer(layout: &OciLayout, entries: &[(&str, &[u8])]) -> Layer {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *body).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let blob = layout.put_blob(&bytes).unwrap();
        Layer {
            digest: blob.digest,
            size: blob.size,
            diff_id: blob.digest,
            media_type: "application/vnd.oci.image.layer.v1.tar",
            entries: entries.len() as u64,
            uncompressed_size: bytes.len() as u64,
        }
    }

    #[test]
    fn a_base_is_read_as_its_filesystem_stands_whiteouts_and_all() {
        let t = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(t.path().join("l")).unwrap();
        let status = |name: &str| {
            format!(
                "Package: {name}\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n"
            )
        };
        let one = tar_layer(
            &layout,
            &[
                ("usr/lib/os-release", b"ID=ubuntu\nVERSION_ID=\"24.04\"\n"),
                ("var/lib/dpkg/status", status("old").as_bytes()),
                (
                    "usr/lib/py/x-1.0.dist-info/METADATA",
                    b"Name: x\nVersion: 1.0\n",
                ),
                (
                    "srv/node_modules/a/package.json",
                    br#"{"name":"a","version":"1.0.0"}"#,
                ),
                (
                    "opt/node_modules/b/package.json",
                    br#"{"name":"b","version":"2.0.0"}"#,
                ),
                (
                    "home/node_modules/c/package.json",
                    br#"{"name":"c","version":"3.0.0"}"#,
                ),
            ],
        );
        // A later layer rewrites the dpkg database (an `apt-get install` layer): its
        // packages belong to the distribution the first layer names.
        let two = tar_layer(
            &layout,
            &[
                ("var/lib/dpkg/status", status("new").as_bytes()),
                ("usr/lib/py/.wh.x-1.0.dist-info", b""),
                ("srv/.wh..wh..opq", b""),
                // A file where a directory stood replaces what was under it.
                ("home/node_modules", b"now a file"),
            ],
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let base = scan_base(&layout, &[one, two], t.path(), &cancel).unwrap();
        let purls: Vec<&str> = base.packages.iter().map(|f| f.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/ubuntu/new@1?arch=all&distro=ubuntu-24.04",
                "pkg:npm/b@2.0.0"
            ],
            "the later status replaces the earlier; whiteouts remove what they cover"
        );
        assert_eq!(base.distro.unwrap().id, "ubuntu");
    }

    #[test]
    fn an_artifact_without_os_release_takes_its_base_distribution() {
        let mut inv = Inventory::new(10);
        let status = b"Package: tool\nArchitecture: amd64\nVersion: 2\n";
        inv.begin(b"var/lib/dpkg/status.d/tool", None, status.len() as u64);
        inv.data(status);
        inv.end();
        let c = inv.finish().unwrap();
        let debian = detect::Distro {
            id: "debian".into(),
            version_id: Some("12".into()),
        };
        assert_eq!(
            c.packages(Some(&debian))[0].purl,
            "pkg:deb/debian/tool@2?arch=amd64&distro=debian-12"
        );
        assert!(c.package_paths().contains("var/lib/dpkg/status.d/tool"));
    }

    #[test]
    fn names_that_are_not_utf8_keep_distinct_identifiers() {
        let mut inv = Inventory::new(10);
        for p in [&b"a\xff"[..], b"a\xfe"] {
            inv.begin(p, None, 1);
            inv.data(b"x");
            inv.end();
        }
        let c = inv.finish().unwrap();
        assert_eq!(c.files[0].path, c.files[1].path, "both shown as a\u{fffd}");
        assert_ne!(c.files[0].id, c.files[1].id);
    }

    #[test]
    fn the_inventory_hashes_lists_up_to_its_cap_and_counts_everything() {
        let mut inv = Inventory::new(2);
        for (p, body) in [("a", "1"), ("b", "22"), ("c", "333")] {
            inv.begin(p.as_bytes(), None, body.len() as u64);
            inv.data(body.as_bytes());
            inv.end();
        }
        let c = inv.finish().unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.total_files, 3);
        assert_eq!(c.total_bytes, 6);
        assert_eq!(
            hex::encode(c.files[0].sha256),
            "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"
        );
        // SPDX's verification code: SHA-1 over the sorted SHA-1s, all three files.
        let mut sums: Vec<String> = ["1", "22", "333"]
            .iter()
            .map(|b| hex::encode(sha1::Sha1::digest(b.as_bytes())))
            .collect();
        sums.sort();
        assert_eq!(
            c.verification_code,
            hex::encode(sha1::Sha1::digest(sums.concat().as_bytes()))
        );
    }
}
