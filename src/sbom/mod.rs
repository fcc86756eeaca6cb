//! What is inside an artifact: a deterministic SPDX 2.3 SBOM.
//!
//! The inventory is taken while the layer is packed ([`Inventory`] is a
//! [`FileTap`](crate::pack::FileTap)): every regular file is hashed (SHA-1 and SHA-256) from
//! the same bytes that go into the layer, package databases and metadata files are kept, and
//! ELF binaries are remembered, to read their build info once packing is done. Nothing is
//! read twice and nothing depends on the host: the document ([`spdx::document`]) is a function
//! of the layer's content, the manifest digest, the commit and the base image alone.
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
/// The largest binary read from a base layer's stream (spooled to scratch to read sections).
const MAX_SPOOLED_BINARY: u64 = 512 << 20;

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
    pub path: String,
    pub sha1: [u8; 20],
    pub sha256: [u8; 32],
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
    /// Detected packages, sorted by purl and path.
    pub packages: Vec<Found>,
}

/// A binary to read once packing is done.
enum Binary {
    /// Its bytes are in this file on the host (the build's output).
    Path(PathBuf),
    /// Its bytes were copied here from a layer's stream.
    Spooled(std::fs::File),
}

struct Current {
    path: String,
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
    captured: Vec<(String, Metadata, Vec<u8>)>,
    binaries: Vec<(String, Binary)>,
    /// Where binaries from a stream are spooled.
    scratch: Option<PathBuf>,
    /// Metadata files too large to read, and binaries too large to spool.
    pub skipped: Vec<String>,
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
            captured: Vec::new(),
            binaries: Vec::new(),
            scratch: None,
            skipped: Vec::new(),
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

    /// Read what was captured: the packages, sorted, and the files.
    pub fn finish(mut self) -> Contents {
        let distro = self
            .captured
            .iter()
            .filter(|(_, m, _)| *m == Metadata::OsRelease)
            .min_by_key(|(p, _, _)| p != "etc/os-release")
            .and_then(|(_, _, b)| detect::os_release(&String::from_utf8_lossy(b)));
        let mut packages = Vec::new();
        for (path, kind, bytes) in &self.captured {
            let text = || String::from_utf8_lossy(bytes);
            packages.extend(match kind {
                Metadata::Dpkg => detect::dpkg(path, &text(), distro.as_ref()),
                Metadata::Apk => detect::apk(path, &text(), distro.as_ref()),
                Metadata::Python => detect::python(path, &text()),
                Metadata::Node => detect::node(path, bytes),
                Metadata::OsRelease => Vec::new(),
            });
        }
        for (path, b) in std::mem::take(&mut self.binaries) {
            let file = match b {
                Binary::Path(p) => match std::fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(path, error = %e, "cannot reopen a binary to read its build info");
                        continue;
                    }
                },
                Binary::Spooled(f) => f,
            };
            packages.extend(binary::detect(&path, &file));
        }
        packages.sort_by(|a, b| (&a.purl, &a.found_in).cmp(&(&b.purl, &b.found_in)));
        packages.dedup_by(|a, b| a.key() == b.key());
        self.sha1s.sort_unstable();
        let mut code = sha1::Sha1::new();
        for s in &self.sha1s {
            code.update(hex::encode(s).as_bytes());
        }
        Contents {
            files: self.files,
            total_files: self.total_files,
            total_bytes: self.total_bytes,
            verification_code: hex::encode(code.finalize()),
            packages,
        }
    }
}

impl FileTap for Inventory {
    fn begin(&mut self, path: &[u8], source: Option<&Path>, size: u64) {
        let path = String::from_utf8_lossy(path).into_owned();
        let listed = self.hash && self.files.len() < self.cap;
        let capture = detect::classify(&path).and_then(|m| {
            if size > MAX_METADATA {
                self.skipped.push(path.clone());
                None
            } else {
                Some((m, Vec::with_capacity(size as usize)))
            }
        });
        self.cur = Some(Current {
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
        if earlier < 4 {
            let want = (4 - earlier).min(bytes.len());
            c.head.extend_from_slice(&bytes[..want]);
            // A binary from a stream: spool it from its first byte, to read its sections.
            if c.head.len() == 4
                && c.head == b"\x7fELF"
                && c.source.is_none()
                && let Some(dir) = &self.scratch
            {
                if c.size > MAX_SPOOLED_BINARY {
                    self.skipped.push(c.path.clone());
                } else {
                    c.spool = tempfile::tempfile_in(dir).ok();
                    // The bytes of earlier calls are only in `head`.
                    if let Some(f) = c.spool.as_mut()
                        && (f.write_all(&c.head[..earlier]).is_err() || f.write_all(bytes).is_err())
                    {
                        c.spool = None;
                    }
                    return;
                }
            }
        }
        if let Some(f) = c.spool.as_mut()
            && f.write_all(bytes).is_err()
        {
            c.spool = None;
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
                sha1: s1,
                sha256: s256.finalize().into(),
            });
        }
        if let Some((m, buf)) = c.capture {
            self.captured.push((c.path.clone(), m, buf));
        }
        if c.head == b"\x7fELF" {
            match (c.source, c.spool) {
                (Some(p), _) => self.binaries.push((c.path, Binary::Path(p))),
                (None, Some(f)) => self.binaries.push((c.path, Binary::Spooled(f))),
                (None, None) => {}
            }
        }
    }
}

/// Why the packages of a base image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("reading the base image's layer {digest}: {source}")]
    Layer {
        digest: Digest,
        source: std::io::Error,
    },
    #[error("reading the SBOM: {0}")]
    Invalid(String),
    #[error("the SBOM scan was cancelled")]
    Cancelled,
}

/// The packages detected in a base image's layers (in the layout), as the image's filesystem
/// has them: a later layer's file replaces an earlier one's, and whiteouts remove them.
pub fn scan_base(
    layout: &OciLayout,
    layers: &[Layer],
    scratch: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<Found>, SbomError> {
    let mut by_path: BTreeMap<String, Vec<Found>> = BTreeMap::new();
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
            let under = |prefix: &str| {
                let p = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                move |k: &String| p.is_empty() || k.starts_with(&p)
            };
            if name == ".wh..wh..opq" {
                let keep = under(dir);
                by_path.retain(|k, _| !keep(k));
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                let target = if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                };
                let inside = under(&target);
                by_path.retain(|k, _| *k != target && !inside(k));
                continue;
            }
            by_path.remove(&path);
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
        let mut layer_found: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        for f in inv.finish().packages {
            layer_found.entry(f.found_in.clone()).or_default().push(f);
        }
        by_path.extend(layer_found);
    }
    let mut out: Vec<Found> = by_path.into_values().flatten().collect();
    out.sort_by(|a, b| (&a.purl, &a.found_in).cmp(&(&b.purl, &b.found_in)));
    Ok(out)
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
            ],
        );
        let two = tar_layer(
            &layout,
            &[
                ("var/lib/dpkg/status", status("new").as_bytes()),
                ("usr/lib/py/.wh.x-1.0.dist-info", b""),
                ("srv/.wh..wh..opq", b""),
            ],
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let found = scan_base(&layout, &[one, two], t.path(), &cancel).unwrap();
        let purls: Vec<&str> = found.iter().map(|f| f.purl.as_str()).collect();
        assert_eq!(
            purls,
            ["pkg:deb/debian/new@1?arch=all", "pkg:npm/b@2.0.0"],
            "the later status replaces the earlier; whiteouts remove what they cover"
        );
    }

    #[test]
    fn the_inventory_hashes_lists_up_to_its_cap_and_counts_everything() {
        let mut inv = Inventory::new(2);
        for (p, body) in [("a", "1"), ("b", "22"), ("c", "333")] {
            inv.begin(p.as_bytes(), None, body.len() as u64);
            inv.data(body.as_bytes());
            inv.end();
        }
        let c = inv.finish();
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
