//! Re-checking everything an OCI layout holds, the way a careful client would.
//!
//! For every manifest reachable from `index.json`: the blob's size and digest, that it parses,
//! that its config parses, and for every layer its size, digest, that it decompresses to a
//! well-formed tar and that the tar's sha256 is the config's `diff_id` at the same position.
//! Every file under `blobs/sha256/` must hash to its name. Tests run this on all they produce.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, hash_reader};
use crate::store::OciLayout;

/// What was checked.
#[derive(Debug, Default)]
pub struct Report {
    pub manifests: usize,
    pub layers: usize,
    pub blobs: usize,
}

/// Everything found wrong, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{} is not a valid OCI layout:\n  {}", path.display(), problems.join("\n  "))]
pub struct ValidationError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

/// Validate the layout at `root`.
pub fn validate_layout(root: &Path) -> Result<Report, ValidationError> {
    let mut v = Validator {
        root: root.to_owned(),
        problems: Vec::new(),
        report: Report::default(),
        seen: BTreeSet::new(),
    };
    match OciLayout::open(root) {
        Ok(layout) => v.run(&layout),
        Err(e) => v.problems.push(e.to_string()),
    }
    if v.problems.is_empty() {
        Ok(v.report)
    } else {
        Err(ValidationError {
            path: root.to_owned(),
            problems: v.problems,
        })
    }
}

struct Validator {
    root: PathBuf,
    problems: Vec<String>,
    report: Report,
    /// Blobs already hashed and found to match their names.
    seen: BTreeSet<Digest>,
}

impl Validator {
    fn run(&mut self, layout: &OciLayout) {
        match layout.index() {
            Ok(index) => self.index(layout, &index, "index.json"),
            Err(e) => self.problems.push(e.to_string()),
        }
        self.all_blobs();
    }

    fn index(&mut self, layout: &OciLayout, index: &ImageIndex, at: &str) {
        for d in index.manifests() {
            match d.media_type() {
                MediaType::ImageManifest => self.manifest(layout, d),
                MediaType::ImageIndex => {
                    if let Some(bytes) = self.blob_bytes(layout, d, "nested index") {
                        match serde_json::from_slice::<ImageIndex>(&bytes) {
                            Ok(i) => self.index(layout, &i, d.digest().as_ref()),
                            Err(e) => self
                                .problems
                                .push(format!("index {}: does not parse: {e}", d.digest())),
                        }
                    }
                }
                other => self.problems.push(format!(
                    "{at}: entry {} has unexpected media type {other}",
                    d.digest()
                )),
            }
        }
    }

    /// Check a small blob against its descriptor and return its bytes.
    fn blob_bytes(&mut self, layout: &OciLayout, d: &Descriptor, what: &str) -> Option<Vec<u8>> {
        let digest = match Digest::from_oci(d.digest()) {
            Ok(x) => x,
            Err(e) => {
                self.problems.push(format!("{what}: {e}"));
                return None;
            }
        };
        let bytes = match layout.read_blob(&digest) {
            Ok(b) => b,
            Err(e) => {
                self.problems.push(format!("{what} {digest}: {e}"));
                return None;
            }
        };
        if bytes.len() as u64 != d.size() {
            self.problems.push(format!(
                "{what} {digest}: size is {} but the descriptor says {}",
                bytes.len(),
                d.size()
            ));
        }
        let actual = Digest::of(&bytes);
        if actual == digest {
            self.seen.insert(digest);
        } else {
            self.problems
                .push(format!("{what} {digest}: content hashes to {actual}"));
        }
        Some(bytes)
    }

    fn manifest(&mut self, layout: &OciLayout, d: &Descriptor) {
        self.report.manifests += 1;
        let Some(bytes) = self.blob_bytes(layout, d, "manifest") else {
            return;
        };
        let m: ImageManifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .problems
                    .push(format!("manifest {}: does not parse: {e}", d.digest()));
            }
        };
        let Some(cbytes) = self.blob_bytes(layout, m.config(), "config") else {
            return;
        };
        let diff_ids: Vec<String> = if *m.config().media_type() == MediaType::ImageConfig {
            match serde_json::from_slice::<ImageConfiguration>(&cbytes) {
                Ok(c) => c.rootfs().diff_ids().clone(),
                Err(e) => {
                    return self.problems.push(format!(
                        "config {}: does not parse: {e}",
                        m.config().digest()
                    ));
                }
            }
        } else {
            Vec::new()
        };
        let is_image = *m.config().media_type() == MediaType::ImageConfig;
        if is_image && diff_ids.len() != m.layers().len() {
            self.problems.push(format!(
                "manifest {}: {} layers but {} diff_ids in the config",
                d.digest(),
                m.layers().len(),
                diff_ids.len()
            ));
        }
        for (i, l) in m.layers().iter().enumerate() {
            self.report.layers += 1;
            let expected = if is_image {
                diff_ids.get(i).map(String::as_str)
            } else {
                None
            };
            self.layer(layout, l, expected);
        }
    }

    fn layer(&mut self, layout: &OciLayout, d: &Descriptor, diff_id: Option<&str>) {
        let digest = match Digest::from_oci(d.digest()) {
            Ok(x) => x,
            Err(e) => return self.problems.push(format!("layer: {e}")),
        };
        let c = match check_layer(&layout.blob_path(&digest), d.media_type().as_ref()) {
            Ok(c) => c,
            Err(e) => return self.problems.push(format!("layer {digest}: {e}")),
        };
        if c.digest == digest {
            self.seen.insert(digest);
        } else {
            self.problems
                .push(format!("layer {digest}: content hashes to {}", c.digest));
        }
        if c.size != d.size() {
            self.problems.push(format!(
                "layer {digest}: size is {} but the descriptor says {}",
                c.size,
                d.size()
            ));
        }
        if let (Some(want), Some(got)) = (diff_id, c.diff_id)
            && want != got.to_string()
        {
            self.problems.push(format!(
                "layer {digest}: uncompressed digest is {got} but diff_id says {want}"
            ));
        }
    }

    fn all_blobs(&mut self) {
        let dir = self.root.join("blobs").join("sha256");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => return self.problems.push(format!("{}: {e}", dir.display())),
        };
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let digest: Digest = match format!("sha256:{name}").parse() {
                Ok(d) => d,
                Err(_) => {
                    self.problems
                        .push(format!("blobs/sha256/{name}: not a sha256 digest name"));
                    continue;
                }
            };
            self.report.blobs += 1;
            // Blobs checked through a manifest were hashed already.
            if !self.seen.insert(digest) {
                continue;
            }
            match File::open(item.path()).and_then(hash_reader) {
                Ok((actual, _)) if actual == digest => {}
                Ok((actual, _)) => self
                    .problems
                    .push(format!("blobs/sha256/{name}: content hashes to {actual}")),
                Err(e) => self.problems.push(format!("blobs/sha256/{name}: {e}")),
            }
        }
    }
}

/// What a layer blob turned out to be.
struct LayerCheck {
    digest: Digest,
    size: u64,
    /// The uncompressed tar's digest, for the layer media types kiln knows.
    diff_id: Option<Digest>,
}

fn check_layer(path: &Path, media_type: &str) -> Result<LayerCheck, String> {
    let open = || File::open(path).map_err(|e| e.to_string());
    let (digest, size) = hash_reader(open()?).map_err(|e| e.to_string())?;
    let tar: Option<Box<dyn Read>> = match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip" => Some(Box::new(
            flate2::read::GzDecoder::new(BufReader::new(open()?)),
        )),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Box::new(
            zstd::stream::read::Decoder::new(open()?).map_err(|e| e.to_string())?,
        )),
        "application/vnd.oci.image.layer.v1.tar" => Some(Box::new(BufReader::new(open()?))),
        _ => None,
    };
    let diff_id = match tar {
        Some(r) => Some(
            tar_digest(r)
                .map_err(|e| format!("not a readable tar: {e}"))?
                .0,
        ),
        None => None,
    };
    Ok(LayerCheck {
        digest,
        size,
        diff_id,
    })
}

/// Read a tar stream entry by entry (so it must be well formed) while hashing every byte.
fn tar_digest(r: impl Read) -> io::Result<(Digest, u64)> {
    let mut hr = HashingReader {
        inner: r,
        hasher: Sha256::new(),
        count: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hr);
        for entry in archive.entries()? {
            let mut entry = entry?;
            io::copy(&mut entry, &mut io::sink())?;
        }
    }
    // The end-of-archive blocks and anything after belong to the diff_id too.
    io::copy(&mut hr, &mut io::sink())?;
    Ok((Digest::from_bytes(hr.hasher.finalize().into()), hr.count))
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
