//! The OCI image layout on disk: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!
//! Every write is atomic. Blobs stream into a temporary file under `.kiln/tmp/` (same
//! filesystem) and are renamed into place only once complete and fsynced; `index.json` is
//! rewritten through a temporary file and a rename, under an exclusive lock on `.kiln/lock`, so
//! concurrent kiln processes never lose each other's tags. A failure leaves the previous
//! state, never a partial blob or index.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use super::{BlobInfo, BlobSink, BlobUpload, ContentStore, StoreError, validate_tag};
use crate::digest::{Digest, HashingWriter};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = "1.0.0";

/// A local OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
    /// This handle's scratch directory under `.kiln/tmp/`, shared by its clones and locked
    /// while any of them lives.
    session: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Session>>>>,
}

/// A scratch directory owned by a live process: its `.lock` is held (flock) until the last
/// handle drops, then the directory is removed. One whose lock can be taken was left by a
/// process that died, and is removed when a layout is opened.
#[derive(Debug)]
struct Session {
    dir: PathBuf,
    _lock: File,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Loose entries in `.kiln/tmp` (no owner lock) older than this are leftovers.
const STALE: std::time::Duration = std::time::Duration::from_secs(3600);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl OciLayout {
    /// Open an existing layout.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let marker = root.join(LAYOUT_FILE);
        let text = fs::read_to_string(&marker).map_err(|e| StoreError::NotALayout {
            path: root.clone(),
            reason: format!("cannot read {LAYOUT_FILE}: {e}"),
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StoreError::NotALayout {
                path: root.clone(),
                reason: format!("{LAYOUT_FILE} is not JSON: {e}"),
            })?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some(LAYOUT_VERSION) {
            return Err(StoreError::NotALayout {
                path: root,
                reason: format!(
                    "{LAYOUT_FILE} does not declare imageLayoutVersion {LAYOUT_VERSION}"
                ),
            });
        }
        let layout = OciLayout::at(root);
        layout.clean_scratch();
        Ok(layout)
    }

    fn at(root: PathBuf) -> OciLayout {
        OciLayout {
            root,
            session: Default::default(),
        }
    }

    /// Remove what dead processes left in `.kiln/tmp`: scratch directories whose owner lock
    /// can be taken, and loose entries older than an hour. Live processes' scratch stays.
    fn clean_scratch(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let lock = path.join(".lock");
            if lock.is_file() {
                if let Ok(f) = File::open(&lock)
                    && f.try_lock().is_ok()
                {
                    let _ = fs::remove_dir_all(&path);
                }
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE);
            if old {
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
    }

    /// This process's scratch directory in the layout: on the blobs' filesystem (so a
    /// finished blob is renamed into place), removed when the last handle drops, and cleaned
    /// up by the next opener if the process dies.
    pub fn scratch(&self) -> Result<PathBuf, StoreError> {
        let mut s = crate::sync::lock(&self.session);
        if let Some(sess) = s.as_ref() {
            return Ok(sess.dir.clone());
        }
        let dir = self.tmp_dir().join(format!("s-{}", crate::ids::new_id()));
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        *s = Some(std::sync::Arc::new(Session {
            dir: dir.clone(),
            _lock: lock,
        }));
        Ok(dir)
    }

    /// Open a layout, creating it if `root` does not exist or is an empty directory.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if root.join(LAYOUT_FILE).exists() {
            return Self::open(root);
        }
        if root.exists() {
            // Only what kiln itself writes before `oci-layout` (a creation in progress in
            // another process, or one a crash interrupted) may be there already.
            for e in fs::read_dir(&root).map_err(io_err("read directory", &root))? {
                let name = e.map_err(io_err("read directory", &root))?.file_name();
                if !matches!(
                    name.to_str(),
                    Some("blobs" | ".kiln" | "index.json" | LAYOUT_FILE)
                ) {
                    return Err(StoreError::NotALayout {
                        path: root,
                        reason: "the directory is not empty and has no oci-layout file; refusing to write into it".into(),
                    });
                }
            }
        }
        let layout = OciLayout::at(root);
        fs::create_dir_all(layout.blob_dir())
            .map_err(io_err("create directory", &layout.blob_dir()))?;
        fs::create_dir_all(layout.tmp_dir())
            .map_err(io_err("create directory", &layout.tmp_dir()))?;
        let _lock = layout.lock()?;
        if !layout.root.join("index.json").exists() {
            let empty = ImageIndex::default();
            layout.write_index(&empty)?;
        }
        // oci-layout last: its presence marks a complete layout.
        layout.write_atomic(
            &layout.root.join(LAYOUT_FILE),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".kiln").join("tmp")
    }

    /// Where a blob lives (whether or not it exists yet).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Read a whole (small) blob into memory.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(digest);
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::BlobNotFound { digest: *digest },
            _ => StoreError::Io {
                op: "read blob",
                path: p.clone(),
                source: e,
            },
        })
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<ImageIndex, StoreError> {
        let p = self.root.join("index.json");
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: p,
            reason: e.to_string(),
        })
    }

    pub(super) fn lock(&self) -> Result<File, StoreError> {
        let dir = self.root.join(".kiln");
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let p = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))?;
        f.lock().map_err(io_err("lock", &p))?;
        Ok(f)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp_dir = self.tmp_dir();
        fs::create_dir_all(&tmp_dir).map_err(io_err("create directory", &tmp_dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("write-")
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(&tmp_dir)
            .map_err(io_err("create temporary file in", &tmp_dir))?;
        tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err("sync", path))?;
        tmp.persist(path).map_err(|e| StoreError::Io {
            op: "rename into",
            path: path.to_owned(),
            source: e.error,
        })?;
        sync_dir(path.parent().unwrap_or(&self.root));
        Ok(())
    }

    /// Entries are written sorted (by tag, then digest), so `index.json` is byte-identical for
    /// the same set of entries however they were added.
    pub(super) fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let mut index = index.clone();
        let mut entries = index.manifests().clone();
        entries.sort_by(|a, b| {
            (ref_name(a).unwrap_or(""), a.digest().as_ref())
                .cmp(&(ref_name(b).unwrap_or(""), b.digest().as_ref()))
        });
        index.set_manifests(entries);
        index.set_media_type(Some(MediaType::ImageIndex));
        let bytes = crate::json::to_canonical_vec(&index).map_err(|e| StoreError::Corrupt {
            path: self.root.join("index.json"),
            reason: e.to_string(),
        })?;
        self.write_atomic(&self.root.join("index.json"), &bytes)
    }
}

fn sync_dir(dir: &Path) {
    // Durability of the rename; failure here does not make the data wrong, only less durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

struct LayoutUpload {
    file: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    blob_dir: PathBuf,
}

impl Write for LayoutUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobUpload for LayoutUpload {
    fn commit(self: Box<Self>) -> Result<BlobInfo, StoreError> {
        let (digest, size, buf) = self.file.finish();
        let tmp = buf.into_inner().map_err(|e| StoreError::Io {
            op: "write",
            path: self.blob_dir.clone(),
            source: e.into_error(),
        })?;
        let target = self.blob_dir.join(digest.hex());
        if target.is_file() {
            // Content-addressed: the same digest is the same bytes. Drop ours.
            return Ok(BlobInfo { digest, size });
        }
        tmp.as_file()
            .sync_all()
            .map_err(io_err("sync", tmp.path()))?;
        tmp.persist(&target).map_err(|e| StoreError::Io {
            op: "rename into",
            path: target.clone(),
            source: e.error,
        })?;
        sync_dir(&self.blob_dir);
        Ok(BlobInfo { digest, size })
    }
}

impl BlobSink for OciLayout {
    fn begin_blob(&self) -> Result<Box<dyn BlobUpload>, StoreError> {
        let tmp_dir = self.scratch()?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(&tmp_dir)
            .map_err(io_err("create temporary file in", &tmp_dir))?;
        Ok(Box::new(LayoutUpload {
            file: HashingWriter::new(BufWriter::with_capacity(256 * 1024, tmp)),
            blob_dir: self.blob_dir(),
        }))
    }
}

impl OciLayout {
    /// Copy the manifest `desc` (an image manifest or an index, with everything it references)
    /// and its referrers from `src` into this layout, blobs first and the index last. Blobs
    /// are hard-linked where both layouts share a filesystem, else copied and checked.
    pub fn import(&self, src: &OciLayout, desc: &Descriptor) -> Result<(), StoreError> {
        let digest = Digest::from_oci(desc.digest()).map_err(|e| StoreError::Corrupt {
            path: src.root.clone(),
            reason: e.to_string(),
        })?;
        self.import_tree(src, &digest, desc.media_type())?;
        for r in src.referrers(&digest)? {
            let rd = Digest::from_oci(r.digest()).map_err(|e| StoreError::Corrupt {
                path: src.root.clone(),
                reason: e.to_string(),
            })?;
            self.import_tree(src, &rd, r.media_type())?;
            self.add_referrer(desc, r)?;
        }
        Ok(())
    }

    fn import_tree(
        &self,
        src: &OciLayout,
        digest: &Digest,
        media_type: &MediaType,
    ) -> Result<(), StoreError> {
        let bytes = src.read_blob(digest)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: src.blob_path(digest),
            reason,
        };
        let children: Vec<Descriptor> = match media_type {
            MediaType::ImageIndex => serde_json::from_slice::<ImageIndex>(&bytes)
                .map_err(|e| corrupt(e.to_string()))?
                .manifests()
                .clone(),
            _ => {
                let m: oci_spec::image::ImageManifest =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                std::iter::once(m.config().clone())
                    .chain(m.layers().iter().cloned())
                    .collect()
            }
        };
        for c in &children {
            let cd = Digest::from_oci(c.digest()).map_err(|e| corrupt(e.to_string()))?;
            match c.media_type() {
                MediaType::ImageIndex | MediaType::ImageManifest => {
                    self.import_tree(src, &cd, c.media_type())?
                }
                _ => self.link_blob(src, &cd)?,
            }
        }
        self.link_blob(src, digest)
    }

    /// Put `src`'s blob `digest` here: a hard link when possible, else a verified copy.
    fn link_blob(&self, src: &OciLayout, digest: &Digest) -> Result<(), StoreError> {
        let dst = self.blob_path(digest);
        if dst.is_file() {
            return Ok(());
        }
        let from = src.blob_path(digest);
        match fs::hard_link(&from, &dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(_) => {
                let mut r = File::open(&from).map_err(io_err("open", &from))?;
                let mut up = self.begin_blob()?;
                io::copy(&mut r, &mut up).map_err(io_err("copy blob", &from))?;
                let info = up.commit()?;
                if info.digest != *digest {
                    return Err(StoreError::Corrupt {
                        path: from,
                        reason: format!("holds {} instead", info.digest),
                    });
                }
                Ok(())
            }
        }
    }
}

impl ContentStore for OciLayout {
    fn tag(&self, tag: Option<&str>, manifest: &Descriptor) -> Result<(), StoreError> {
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let mut entries: Vec<Descriptor> = index.manifests().clone();
        match tag {
            Some(t) => {
                entries.retain(|d| ref_name(d) != Some(t));
                // A tagged entry supersedes an untagged one for the same manifest.
                entries.retain(|d| !(ref_name(d).is_none() && d.digest() == manifest.digest()));
                let mut d = manifest.clone();
                let mut ann = d.annotations().clone().unwrap_or_default();
                ann.insert(REF_NAME.to_owned(), t.to_owned());
                d.set_annotations(Some(ann));
                entries.push(d);
            }
            None => {
                if !entries.iter().any(|d| d.digest() == manifest.digest()) {
                    entries.push(manifest.clone());
                }
            }
        }
        index.set_manifests(entries);
        self.write_index(&index)
    }

    fn resolve(&self, tag: &str) -> Result<Option<Descriptor>, StoreError> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(tag))
            .cloned())
    }

    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, StoreError> {
        let p = self.blob_path(digest);
        match File::open(&p) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound { digest: *digest })
            }
            Err(e) => Err(StoreError::Io {
                op: "open blob",
                path: p,
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(bytes: &[u8]) -> Descriptor {
        Descriptor::new(
            MediaType::ImageManifest,
            bytes.len() as u64,
            Digest::of(bytes).to_oci(),
        )
    }

    #[test]
    fn blobs_are_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(dir.path().join("l")).unwrap();
        let a = layout.put_blob(b"hello").unwrap();
        assert_eq!(a.digest, Digest::of(b"hello"));
        assert_eq!(fs::read(layout.blob_path(&a.digest)).unwrap(), b"hello");
        let again = layout.put_blob(b"hello").unwrap();
        assert_eq!(a, again);
        // An abandoned upload leaves nothing behind.
        {
            let mut up = layout.begin_blob().unwrap();
            up.write_all(b"partial").unwrap();
        }
        assert!(!layout.has_blob(&Digest::of(b"partial")));
        // Only the handle's own scratch directory (and its lock) is left in .kiln/tmp.
        let scratch = layout.scratch().unwrap();
        assert_eq!(fs::read_dir(layout.tmp_dir()).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 1);
        assert_eq!(fs::read_dir(layout.blob_dir()).unwrap().count(), 1);
        drop(layout);
        assert!(
            !scratch.exists(),
            "the scratch directory goes with the last handle"
        );
    }

    #[test]
    fn retagging_moves_the_tag_and_untagged_entries_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(dir.path()).unwrap();
        let (m1, m2) = (desc(b"one"), desc(b"two"));
        layout.tag(None, &m1).unwrap();
        layout.tag(None, &m1).unwrap();
        assert_eq!(layout.index().unwrap().manifests().len(), 1);
        layout.tag(Some("v1"), &m1).unwrap();
        assert_eq!(
            layout.index().unwrap().manifests().len(),
            1,
            "tag supersedes untagged entry"
        );
        layout.tag(Some("v1"), &m2).unwrap();
        layout.tag(Some("v2"), &m2).unwrap();
        let idx = layout.index().unwrap();
        assert_eq!(idx.manifests().len(), 2);
        assert_eq!(layout.resolve("v1").unwrap().unwrap().digest(), m2.digest());
        assert!(layout.tag(Some("-bad"), &m1).is_err());
        assert!(layout.resolve("nope").unwrap().is_none());
    }

    #[test]
    fn refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious.txt"), b"x").unwrap();
        let err = OciLayout::open_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NotALayout { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join("precious.txt")).unwrap(), b"x");
    }

    #[test]
    fn concurrent_and_interrupted_creations_finish() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("l");
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let root = root.clone();
                    std::thread::spawn(move || OciLayout::open_or_create(&root).map(|_| ()))
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            assert!(root.join(LAYOUT_FILE).is_file());
        }
        // A creation that died before writing `oci-layout` is finished by the next one.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::create_dir_all(dir.path().join(".kiln/tmp")).unwrap();
        let l = OciLayout::open_or_create(dir.path()).unwrap();
        assert!(l.index().unwrap().manifests().is_empty());
        assert!(dir.path().join(LAYOUT_FILE).is_file());
    }

    #[test]
    fn what_a_dead_process_left_in_scratch_is_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let live = OciLayout::open_or_create(dir.path()).unwrap();
        let live_scratch = live.scratch().unwrap();
        fs::write(live_scratch.join("in-use"), b"x").unwrap();
        // A dead process's session: its lock file exists but nobody holds it.
        let dead = dir.path().join(".kiln/tmp/s-dead");
        fs::create_dir_all(&dead).unwrap();
        fs::write(dead.join(".lock"), b"").unwrap();
        fs::write(dead.join("blob-partial"), vec![0u8; 1024]).unwrap();
        // A loose file from an older kiln, two hours old, and a fresh one.
        let old = dir.path().join(".kiln/tmp/blob-old");
        fs::write(&old, b"x").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let fresh = dir.path().join(".kiln/tmp/blob-fresh");
        fs::write(&fresh, b"x").unwrap();
        let _again = OciLayout::open(dir.path()).unwrap();
        assert!(!dead.exists(), "the dead session was removed");
        assert!(!old.exists(), "the old loose file was removed");
        assert!(fresh.exists(), "a fresh loose file may belong to someone");
        assert!(live_scratch.join("in-use").exists(), "a live session stays");
    }
}
