//! Deterministic layers: a directory tree (or a tar stream) in, a compressed blob out.
//!
//! One streaming pass: tar bytes are hashed for the `diff_id` as they are produced, compressed
//! (on every core for gzip), and streamed into a [`BlobSink`], which hashes the compressed bytes
//! for the blob digest. Memory stays bounded by the block buffers, whatever the layer size.

mod header;
pub mod pgzip;
mod tree;
mod untar;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_util::sync::CancellationToken;

pub use header::{Kind, USTAR_MAX};

use crate::digest::{Digest, HashingWriter};
use crate::events::{Event, Observer};
use crate::store::{BlobSink, BlobUpload, StoreError};

/// How layer blobs are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (pigz-style parallel blocks, deterministic), the default: every client reads it.
    #[default]
    Gzip,
    /// zstd; image-spec 1.1 clients only.
    Zstd,
    /// Uncompressed tar.
    None,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The default level kiln uses; part of what makes the bytes reproducible.
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::None => 0,
        }
    }

    /// A description of the exact compressor, for provenance: a verifier needs the same one to
    /// rebuild the same bytes. Library versions are those pinned in kiln's Cargo.lock.
    pub fn describe(self, level: u32) -> String {
        match self {
            Compression::Gzip => format!(
                "gzip level {level}, {} KiB parallel blocks, zlib-rs {}",
                pgzip::BLOCK_SIZE / 1024,
                locked_version("zlib-rs")
            ),
            Compression::Zstd => {
                format!("zstd level {level}, libzstd {} (bundled)", bundled_zstd())
            }
            Compression::None => "none".to_owned(),
        }
    }

    /// Whether this kiln compresses exactly as its description says: the zstd it runs is the
    /// one bundled at build time (never the system's, which a `ZSTD_SYS_USE_PKG_CONFIG` build
    /// would link).
    pub fn check(self) -> Result<(), String> {
        if self == Compression::Zstd {
            let linked = zstd::zstd_safe::version_string();
            if linked != bundled_zstd() {
                return Err(format!(
                    "this kiln runs libzstd {linked}, not the bundled {} its Cargo.lock pins: rebuild it without ZSTD_SYS_USE_PKG_CONFIG",
                    bundled_zstd()
                ));
            }
        }
        Ok(())
    }
}

/// kiln's own Cargo.lock, compiled in: the exact versions of what it was built with.
const CARGO_LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"));

/// The version of crate `name` in kiln's Cargo.lock.
pub fn locked_version(name: &str) -> &'static str {
    let needle = format!("name = \"{name}\"\nversion = \"");
    CARGO_LOCK
        .find(&needle)
        .and_then(|i| {
            let rest = &CARGO_LOCK[i + needle.len()..];
            rest.split('"').next()
        })
        .unwrap_or("unknown")
}

/// The libzstd version zstd-sys bundles (its version is `X+zstd.A.B.C`).
fn bundled_zstd() -> &'static str {
    let v = locked_version("zstd-sys");
    v.split_once("+zstd.").map_or(v, |(_, z)| z)
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        })
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd or none"
            )),
        }
    }
}

/// How to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Every entry's mtime (SOURCE_DATE_EPOCH), seconds since 1970 UTC.
    pub epoch: u64,
    pub compression: Compression,
    /// Compression level; `None` for the compression's default.
    pub level: Option<u32>,
    /// Compression threads; the output does not depend on it.
    pub threads: usize,
}

impl PackOptions {
    pub fn new(epoch: u64) -> Self {
        PackOptions {
            epoch,
            compression: Compression::Gzip,
            level: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn level(&self) -> u32 {
        self.level
            .unwrap_or_else(|| self.compression.default_level())
    }
}

/// A layer blob written to a store: what a manifest and config need to reference it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The compressed blob's digest.
    pub digest: Digest,
    /// The compressed blob's size.
    pub size: u64,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    pub media_type: &'static str,
    /// What was packed, for progress and reports.
    pub entries: u64,
    pub uncompressed_size: u64,
}

/// Why packing failed, and on what.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} is {what}; layers hold only regular files, directories and symlinks", path.display())]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("{} changed while it was being packed (expected {expected} bytes, read {actual})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("source date epoch {0} is out of range (at most {max})", max = USTAR_MAX)]
    EpochOutOfRange(u64),
    #[error("invalid tar stream: {0}")]
    BadTar(String),
    #[error("writing the layer: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("packing was cancelled")]
    Cancelled,
    #[error("the compressor is not the one kiln pins: {0}")]
    Compressor(String),
    #[error("the files add up to more than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

impl PackError {
    /// Whether running the same pack again could succeed: a file that changed under us or a
    /// transient store error, not bad input.
    pub fn is_retryable(&self) -> bool {
        match self {
            PackError::Changed { .. } => true,
            PackError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Sees every regular file's bytes as they are written into a layer, in layer order: what an
/// SBOM's inventory hashes, without reading anything twice.
pub trait FileTap {
    /// A regular file starts: its path in the layer, where its bytes are read from (when they
    /// come from a file on this host), and its size.
    fn begin(&mut self, path: &[u8], source: Option<&Path>, size: u64);
    /// The next bytes of the file that [`FileTap::begin`] started.
    fn data(&mut self, bytes: &[u8]);
    /// The file is complete.
    fn end(&mut self);
}

/// A tap that sees nothing.
pub struct NoTap;

impl FileTap for NoTap {
    fn begin(&mut self, _: &[u8], _: Option<&Path>, _: u64) {}
    fn data(&mut self, _: &[u8]) {}
    fn end(&mut self) {}
}

/// Pack the contents of directory `root` (at `/` in the layer) into a blob in `sink`.
pub fn pack_dir(
    root: &Path,
    opts: &PackOptions,
    sink: &dyn BlobSink,
    cancel: &CancellationToken,
    observer: &dyn Observer,
) -> Result<Layer, PackError> {
    pack_dir_tapped(root, opts, sink, cancel, observer, &mut NoTap)
}

/// [`pack_dir`], showing every regular file's bytes to `tap` as they are written.
pub fn pack_dir_tapped(
    root: &Path,
    opts: &PackOptions,
    sink: &dyn BlobSink,
    cancel: &CancellationToken,
    observer: &dyn Observer,
    tap: &mut dyn FileTap,
) -> Result<Layer, PackError> {
    if opts.epoch > USTAR_MAX {
        return Err(PackError::EpochOutOfRange(opts.epoch));
    }
    opts.compression.check().map_err(PackError::Compressor)?;
    let entries = tree::walk(root, cancel)?;
    let total: u64 = entries
        .iter()
        .map(|e| match e.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    observer.event(&Event::PackScanned {
        entries: entries.len() as u64,
        bytes: total,
    });

    let upload = sink.begin_blob()?;
    let mut out = HashingWriter::new(Compressor::new(upload, opts)?);
    let mut next_report: u64 = 0;
    write_entries(&entries, &|_| opts.epoch, &mut out, cancel, tap, |done| {
        if done >= next_report {
            observer.event(&Event::PackProgress { bytes: done, total });
            next_report = done + 16 * 1024 * 1024;
        }
    })?;
    let (diff_id, uncompressed_size, compressor) = out.finish();
    let upload = compressor.finish().map_err(PackError::Write)?;
    let blob = upload.commit()?;
    let layer = Layer {
        digest: blob.digest,
        size: blob.size,
        diff_id,
        media_type: opts.compression.media_type(),
        entries: entries.len() as u64,
        uncompressed_size,
    };
    observer.event(&Event::LayerWritten {
        digest: layer.digest,
        size: layer.size,
        diff_id,
    });
    Ok(layer)
}

/// Write the entries (sorted by path) as a tar stream, ending with the two zero blocks.
fn write_entries(
    entries: &[tree::Entry],
    epoch: &dyn Fn(&tree::Entry) -> u64,
    out: &mut impl Write,
    cancel: &CancellationToken,
    tap: &mut dyn FileTap,
    mut progress: impl FnMut(u64),
) -> Result<(), PackError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut done: u64 = 0;
    for e in entries {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let (ext, h) = header::headers(&e.path, &e.kind, epoch(e));
        if let Some((x, data)) = ext {
            out.write_all(x.as_bytes()).map_err(PackError::Write)?;
            out.write_all(&data).map_err(PackError::Write)?;
            pad(out, data.len() as u64)?;
        }
        out.write_all(h.as_bytes()).map_err(PackError::Write)?;
        if let Kind::File { size, .. } = e.kind {
            tap.begin(&e.path, Some(&e.source), size);
            copy_file(&e.source, size, out, tap, &mut buf, cancel)?;
            tap.end();
            pad(out, size)?;
            done += size;
            progress(done);
        }
    }
    out.write_all(&[0u8; 1024]).map_err(PackError::Write)
}

/// Write directory `root` as an uncompressed deterministic tar (the same rules as a layer)
/// with every path under `prefix` (for example `src` for a container's `/src`), plus empty
/// directories `extra_dirs`; every parent directory gets its own entry. Returns the number
/// of entries. Used to copy a source tree into a build container. Every entry gets mtime
/// `epoch`, but the files of `fresh` (paths relative to `root`), which get its time.
pub fn write_tree_tar(
    root: &Path,
    prefix: &str,
    extra_dirs: &[&str],
    epoch: u64,
    fresh: Option<(&std::collections::BTreeSet<Vec<u8>>, u64)>,
    out: &mut impl Write,
    cancel: &CancellationToken,
) -> Result<u64, PackError> {
    if epoch > USTAR_MAX || fresh.is_some_and(|(_, t)| t > USTAR_MAX) {
        return Err(PackError::EpochOutOfRange(epoch));
    }
    let mut entries = tree::walk(root, cancel)?;
    // Stamp by the path relative to `root`, before the prefix goes on.
    let stamped: std::collections::BTreeSet<Vec<u8>> = match fresh {
        Some((set, _)) => entries
            .iter()
            .filter(|e| set.contains(&e.path))
            .map(|e| tree_path(prefix, &e.path))
            .collect(),
        None => Default::default(),
    };
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        for e in &mut entries {
            let mut p = prefix.as_bytes().to_vec();
            p.push(b'/');
            p.extend_from_slice(&e.path);
            e.path = p;
        }
    }
    let mut dirs: Vec<&str> = extra_dirs.iter().map(|d| d.trim_matches('/')).collect();
    dirs.push(prefix);
    for d in dirs {
        let mut at = String::new();
        for part in d.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            entries.push(tree::Entry {
                path: at.as_bytes().to_vec(),
                source: PathBuf::new(),
                kind: Kind::Dir,
            });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    let fresh_time = fresh.map_or(epoch, |(_, t)| t);
    let mtime = |e: &tree::Entry| {
        if stamped.contains(&e.path) {
            fresh_time
        } else {
            epoch
        }
    };
    write_entries(&entries, &mtime, out, cancel, &mut NoTap, |_| {})?;
    Ok(entries.len() as u64)
}

fn tree_path(prefix: &str, path: &[u8]) -> Vec<u8> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return path.to_vec();
    }
    let mut p = prefix.as_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(path);
    p
}

/// What a source tree holds, by path (relative to `root`): sha256 of each regular file's
/// bytes (its executable bit included) and of each symlink's target. Two trees with equal
/// manifests copy into a container alike, but for mtimes.
pub fn tree_manifest(
    root: &Path,
    cancel: &CancellationToken,
) -> Result<std::collections::BTreeMap<Vec<u8>, [u8; 32]>, PackError> {
    use sha2::{Digest as _, Sha256};
    let mut out = std::collections::BTreeMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    for e in tree::walk(root, cancel)? {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let mut h = Sha256::new();
        match &e.kind {
            Kind::Dir => continue,
            Kind::Symlink { target } => {
                h.update(b"link\0");
                h.update(target);
            }
            Kind::File { executable, .. } => {
                h.update(if *executable { b"exec\0" } else { b"file\0" });
                let mut f = std::fs::File::open(&e.source).map_err(|source| PackError::Read {
                    path: e.source.clone(),
                    source,
                })?;
                loop {
                    let n = std::io::Read::read(&mut f, &mut buf).map_err(|source| {
                        PackError::Read {
                            path: e.source.clone(),
                            source,
                        }
                    })?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
        out.insert(e.path, h.finalize().into());
    }
    Ok(out)
}

/// Unpack an untrusted tar stream into `dst`: only files, directories, symlinks and
/// hardlinks, nothing outside `dst`, no owners, times or xattrs.
pub fn unpack_tar(
    stream: impl Read,
    dst: &Path,
    cancel: &CancellationToken,
) -> Result<(), PackError> {
    untar::unpack(stream, dst, cancel, u64::MAX)
}

/// [`unpack_tar`], refusing a stream whose files add up to more than `max_bytes`
/// ([`PackError::TooLarge`]); nothing past the limit is written.
pub fn unpack_tar_limited(
    stream: impl Read,
    dst: &Path,
    cancel: &CancellationToken,
    max_bytes: u64,
) -> Result<(), PackError> {
    untar::unpack(stream, dst, cancel, max_bytes)
}

/// Pack a tar stream (for example a container's output) the same way as a directory: the
/// entries are checked and spooled to a temporary directory under `scratch`, then packed, so
/// the result depends only on the content, never on the stream's order or metadata.
pub fn pack_tar(
    stream: impl Read,
    scratch: &Path,
    opts: &PackOptions,
    sink: &dyn BlobSink,
    cancel: &CancellationToken,
    observer: &dyn Observer,
) -> Result<Layer, PackError> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-untar-")
        .tempdir_in(scratch)
        .map_err(|source| PackError::Read {
            path: scratch.to_owned(),
            source,
        })?;
    untar::unpack(stream, dir.path(), cancel, u64::MAX)?;
    pack_dir(dir.path(), opts, sink, cancel, observer)
}

fn pad(out: &mut impl Write, len: u64) -> Result<(), PackError> {
    let rem = (512 - (len % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..rem]).map_err(PackError::Write)
}

fn copy_file(
    path: &Path,
    size: u64,
    out: &mut impl Write,
    tap: &mut dyn FileTap,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<(), PackError> {
    let mut f = File::open(path).map_err(|source| PackError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut left = size;
    while left > 0 {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(PackError::Changed {
                    path: path.to_owned(),
                    expected: size,
                    actual: size - left,
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(PackError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        out.write_all(&buf[..n]).map_err(PackError::Write)?;
        tap.data(&buf[..n]);
        left -= n as u64;
    }
    // A file that grew after the walk would be cut short in the layer: refuse it too.
    match f.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(PackError::Changed {
            path: path.to_owned(),
            expected: size,
            actual: size + 1,
        }),
        Err(source) => Err(PackError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The compression stage, writing into the store's upload.
enum Compressor {
    Gzip(pgzip::ParGzEncoder<Box<dyn BlobUpload>>),
    Zstd(zstd::stream::write::Encoder<'static, Box<dyn BlobUpload>>),
    None(Box<dyn BlobUpload>),
}

impl Compressor {
    fn new(upload: Box<dyn BlobUpload>, opts: &PackOptions) -> Result<Self, PackError> {
        let level = opts.level();
        Ok(match opts.compression {
            Compression::Gzip => {
                Compressor::Gzip(pgzip::ParGzEncoder::new(upload, level.min(9), opts.threads))
            }
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(upload, level as i32)
                    .map_err(PackError::Write)?;
                // Multi-threaded zstd output does not depend on the worker count (>= 1), so
                // always use the multi-threaded mode, with at least one worker.
                z.multithread(opts.threads.max(1) as u32)
                    .map_err(PackError::Write)?;
                Compressor::Zstd(z)
            }
            Compression::None => Compressor::None(upload),
        })
    }

    fn finish(self) -> io::Result<Box<dyn BlobUpload>> {
        match self {
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
            Compressor::None(mut u) => {
                u.flush()?;
                Ok(u)
            }
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
            Compressor::None(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Never cut a compression block early: output must not depend on flushes.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressor_description_names_the_pinned_libraries() {
        let gz = Compression::Gzip.describe(6);
        assert!(
            gz.starts_with("gzip level 6, 128 KiB parallel blocks, zlib-rs 0."),
            "{gz}"
        );
        let zs = Compression::Zstd.describe(3);
        assert!(zs.starts_with("zstd level 3, libzstd 1."), "{zs}");
        assert!(!zs.contains("unknown") && !gz.contains("unknown"));
        // The zstd linked in is the bundled one, not the system's.
        Compression::Zstd.check().unwrap();
        assert_eq!(locked_version("no-such-crate"), "unknown");
    }
}
