//! Comparing two images path by path: layer by layer from the uncompressed tar entries, and
//! configs and annotations key by key. A path that did not change is never listed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

use crate::digest::Digest;
use crate::store::{OciLayout, Store, StoreError};

/// One side of a file whose content differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSide {
    pub size: u64,
    pub sha256: String,
}

/// A path that differs between the two images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PathDiff {
    /// The bytes differ (or the entry changed type).
    Content {
        path: String,
        expected: Option<FileSide>,
        rebuilt: Option<FileSide>,
        /// Metadata changes besides the content, if any.
        also: Vec<String>,
    },
    /// Same bytes; the mode, link target or time differ.
    Metadata {
        path: String,
        changes: Vec<String>,
    },
    OnlyInExpected {
        path: String,
    },
    OnlyInRebuilt {
        path: String,
    },
}

impl PathDiff {
    pub fn path(&self) -> &str {
        match self {
            PathDiff::Content { path, .. }
            | PathDiff::Metadata { path, .. }
            | PathDiff::OnlyInExpected { path }
            | PathDiff::OnlyInRebuilt { path } => path,
        }
    }
}

/// The differences of one layer (by position).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerDiff {
    /// 1-based.
    pub index: usize,
    pub expected_diff_id: Option<String>,
    pub rebuilt_diff_id: Option<String>,
    pub paths: Vec<PathDiff>,
}

/// A JSON key whose value differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyDiff {
    pub key: String,
    pub expected: Option<Value>,
    pub rebuilt: Option<Value>,
}

/// Two images compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub identical: bool,
    /// Manifest digests.
    pub expected: String,
    pub rebuilt: String,
    pub layers: Vec<LayerDiff>,
    pub config: Vec<KeyDiff>,
    pub annotations: Vec<KeyDiff>,
}

impl Comparison {
    /// How many paths differ, over all layers.
    pub fn paths(&self) -> usize {
        self.layers.iter().map(|l| l.paths.len()).sum()
    }

    /// A short summary: the first differing paths.
    pub fn summary(&self) -> String {
        let paths: Vec<&str> = self
            .layers
            .iter()
            .flat_map(|l| l.paths.iter().map(PathDiff::path))
            .collect();
        let mut s = format!(
            "{} path{} differ{}",
            paths.len(),
            if paths.len() == 1 { "" } else { "s" },
            if paths.len() == 1 { "s" } else { "" }
        );
        if !paths.is_empty() {
            s.push_str(": ");
            s.push_str(&paths.iter().take(3).copied().collect::<Vec<_>>().join(", "));
            if paths.len() > 3 {
                s.push_str(", ...");
            }
        } else if !self.config.is_empty() || !self.annotations.is_empty() {
            s = format!(
                "{} config and {} annotation keys differ",
                self.config.len(),
                self.annotations.len()
            );
        }
        s
    }

    /// The report as text, one line per difference.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let short = |d: &Option<String>| {
            d.as_deref().map_or("(none)".to_owned(), |d| {
                d.chars().take(19).collect::<String>()
            })
        };
        for l in &self.layers {
            out.push_str(&format!(
                "layer {}: {} expected, {} rebuilt\n",
                l.index,
                short(&l.expected_diff_id),
                short(&l.rebuilt_diff_id)
            ));
            for p in &l.paths {
                match p {
                    PathDiff::Content {
                        path,
                        expected,
                        rebuilt,
                        also,
                    } => {
                        let side = |s: &Option<FileSide>| match s {
                            Some(f) => format!("{} bytes sha256:{}", f.size, f.sha256),
                            None => "not a file".to_owned(),
                        };
                        out.push_str(&format!(
                            "  content       {path}\n                  expected {}\n                  rebuilt  {}\n",
                            side(expected),
                            side(rebuilt)
                        ));
                        for a in also {
                            out.push_str(&format!("                  and {a}\n"));
                        }
                    }
                    PathDiff::Metadata { path, changes } => {
                        out.push_str(&format!("  metadata only {path}: {}\n", changes.join("; ")));
                    }
                    PathDiff::OnlyInExpected { path } => {
                        out.push_str(&format!("  only expected {path}\n"))
                    }
                    PathDiff::OnlyInRebuilt { path } => {
                        out.push_str(&format!("  only rebuilt  {path}\n"))
                    }
                }
            }
        }
        for (what, keys) in [("config", &self.config), ("annotation", &self.annotations)] {
            for k in keys {
                let show =
                    |v: &Option<Value>| v.as_ref().map_or("(absent)".to_owned(), |v| v.to_string());
                out.push_str(&format!(
                    "{what} {}: {} expected, {} rebuilt\n",
                    k.key,
                    show(&k.expected),
                    show(&k.rebuilt)
                ));
            }
        }
        out
    }
}

/// One tar entry, as far as a comparison cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    mtime: u64,
    file: Option<FileSide>,
    link: Option<String>,
}

fn corrupt(layout: &OciLayout, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: layout.root().to_owned(),
        reason: reason.into(),
    }
}

/// A layer blob of `layout`, decompressed as its media type says.
pub fn open_layer(
    layout: &OciLayout,
    digest: &Digest,
    media_type: &str,
) -> Result<Box<dyn Read + Send>, StoreError> {
    let raw = layout.open_blob(digest)?;
    Ok(
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                raw,
            )))
        } else if media_type.ends_with("+zstd") {
            Box::new(
                zstd::Decoder::new(raw)
                    .map_err(|e| corrupt(layout, format!("layer {digest}: {e}")))?,
            )
        } else {
            raw
        },
    )
}

/// The entries of a layer, by path.
fn entries(
    layout: &OciLayout,
    digest: &Digest,
    media_type: &str,
) -> Result<BTreeMap<String, Entry>, StoreError> {
    let bad = |e: std::io::Error| corrupt(layout, format!("layer {digest}: {e}"));
    let mut ar = tar::Archive::new(open_layer(layout, digest, media_type)?);
    let mut out = BTreeMap::new();
    for e in ar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() {
            continue;
        }
        let h = e.header();
        let (kind, link) = match h.entry_type() {
            tar::EntryType::Directory => ("directory", None),
            tar::EntryType::Symlink => (
                "symlink",
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
            ),
            tar::EntryType::Link => (
                "hardlink",
                e.link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
            ),
            tar::EntryType::Regular | tar::EntryType::Continuous => ("file", None),
            _ => ("special", None),
        };
        let mode = h.mode().unwrap_or(0) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let file = if kind == "file" {
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = e.read(&mut buf).map_err(bad)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Some(FileSide {
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        } else {
            None
        };
        out.insert(
            path,
            Entry {
                kind,
                mode,
                mtime,
                file,
                link,
            },
        );
    }
    Ok(out)
}

fn diff_entries(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<PathDiff> {
    let mut out = Vec::new();
    let paths: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for p in paths {
        match (a.get(p), b.get(p)) {
            (Some(_), None) => out.push(PathDiff::OnlyInExpected { path: p.clone() }),
            (None, Some(_)) => out.push(PathDiff::OnlyInRebuilt { path: p.clone() }),
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let mut meta = Vec::new();
                if x.mode != y.mode {
                    meta.push(format!(
                        "mode {:04o} expected, {:04o} rebuilt",
                        x.mode, y.mode
                    ));
                }
                if x.link != y.link {
                    meta.push(format!(
                        "link target {:?} expected, {:?} rebuilt",
                        x.link.as_deref().unwrap_or(""),
                        y.link.as_deref().unwrap_or("")
                    ));
                }
                if x.mtime != y.mtime {
                    meta.push(format!("mtime {} expected, {} rebuilt", x.mtime, y.mtime));
                }
                if x.kind != y.kind || x.file != y.file {
                    if x.kind != y.kind {
                        meta.insert(0, format!("type {} expected, {} rebuilt", x.kind, y.kind));
                    }
                    out.push(PathDiff::Content {
                        path: p.clone(),
                        expected: x.file.clone(),
                        rebuilt: y.file.clone(),
                        also: meta,
                    });
                } else {
                    out.push(PathDiff::Metadata {
                        path: p.clone(),
                        changes: meta,
                    });
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// Leaves of a JSON document by dotted key (`config.Env[0]`).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

fn diff_json(a: &Value, b: &Value) -> Vec<KeyDiff> {
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut x);
    flatten("", b, &mut y);
    let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
    keys.into_iter()
        .filter(|k| x.get(*k) != y.get(*k))
        .map(|k| KeyDiff {
            key: k.clone(),
            expected: x.get(k).cloned(),
            rebuilt: y.get(k).cloned(),
        })
        .collect()
}

fn manifest(layout: &OciLayout, digest: &Digest) -> Result<Value, StoreError> {
    serde_json::from_slice(&layout.read_blob(digest)?)
        .map_err(|e| corrupt(layout, format!("manifest {digest}: {e}")))
}

fn blob_json(layout: &OciLayout, d: &Value) -> Result<Value, StoreError> {
    let digest: Digest = d["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(layout, "a descriptor without a digest"))?;
    serde_json::from_slice(&layout.read_blob(&digest)?)
        .map_err(|e| corrupt(layout, format!("config {digest}: {e}")))
}

fn layers(m: &Value) -> Vec<(Digest, String)> {
    m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["digest"].as_str()?.parse().ok()?,
                l["mediaType"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn diff_ids(config: &Value) -> Vec<Option<String>> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().map(|d| d.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Compare the image manifest `a` in `la` (what was published) with `b` in `lb` (what was
/// rebuilt). Layers whose diff_ids match are not read.
pub fn compare(
    la: &OciLayout,
    a: &Digest,
    lb: &OciLayout,
    b: &Digest,
) -> Result<Comparison, StoreError> {
    let (ma, mb) = (manifest(la, a)?, manifest(lb, b)?);
    let (ca, cb) = (blob_json(la, &ma["config"])?, blob_json(lb, &mb["config"])?);
    let (la_layers, lb_layers) = (layers(&ma), layers(&mb));
    let (ida, idb) = (diff_ids(&ca), diff_ids(&cb));
    let mut out_layers = Vec::new();
    for i in 0..la_layers.len().max(lb_layers.len()) {
        let (xa, xb) = (la_layers.get(i), lb_layers.get(i));
        let (da, db) = (ida.get(i).cloned().flatten(), idb.get(i).cloned().flatten());
        // For artifacts (no rootfs), compare layer digests instead.
        let same = match (&da, &db) {
            (Some(x), Some(y)) => x == y,
            _ => xa.map(|l| l.0) == xb.map(|l| l.0),
        };
        if same && xa.is_some() && xb.is_some() {
            continue;
        }
        let ea = match xa {
            Some((d, t)) => entries(la, d, t)?,
            None => BTreeMap::new(),
        };
        let eb = match xb {
            Some((d, t)) => entries(lb, d, t)?,
            None => BTreeMap::new(),
        };
        out_layers.push(LayerDiff {
            index: i + 1,
            expected_diff_id: da.or_else(|| xa.map(|l| l.0.to_string())),
            rebuilt_diff_id: db.or_else(|| xb.map(|l| l.0.to_string())),
            paths: diff_entries(&ea, &eb),
        });
    }
    // The config's rootfs is the layers' business, listed above.
    let strip = |mut c: Value| {
        if let Some(o) = c.as_object_mut() {
            o.remove("rootfs");
        }
        c
    };
    let config = diff_json(&strip(ca), &strip(cb));
    let annotations = diff_json(&ma["annotations"], &mb["annotations"]);
    Ok(Comparison {
        identical: a == b,
        expected: a.to_string(),
        rebuilt: b.to_string(),
        layers: out_layers,
        config,
        annotations,
    })
}

/// Unpack the layers of manifest `digest` in order into `dst` (safely: nothing outside it).
pub fn unpack_image(
    layout: &OciLayout,
    digest: &Digest,
    dst: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), crate::pack::PackError> {
    let m = manifest(layout, digest)?;
    std::fs::create_dir_all(dst).map_err(|source| crate::pack::PackError::Read {
        path: dst.to_owned(),
        source,
    })?;
    for (d, t) in layers(&m) {
        crate::pack::unpack_tar(open_layer(layout, &d, &t)?, dst, cancel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: &'static str, mode: u32, content: Option<&str>, link: Option<&str>) -> Entry {
        Entry {
            kind,
            mode,
            mtime: 1,
            file: content.map(|c| FileSide {
                size: c.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(c.as_bytes())),
            }),
            link: link.map(str::to_owned),
        }
    }

    #[test]
    fn differences_are_classified_and_unchanged_paths_never_listed() {
        let a: BTreeMap<String, Entry> = [
            ("same", e("file", 0o644, Some("x"), None)),
            ("content", e("file", 0o644, Some("a"), None)),
            ("mode", e("file", 0o644, Some("m"), None)),
            ("link", e("symlink", 0o777, None, Some("a"))),
            ("gone", e("file", 0o644, Some("g"), None)),
            ("typed", e("file", 0o644, Some("t"), None)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let b: BTreeMap<String, Entry> = [
            ("same", e("file", 0o644, Some("x"), None)),
            ("content", e("file", 0o755, Some("b"), None)),
            ("mode", e("file", 0o755, Some("m"), None)),
            ("link", e("symlink", 0o777, None, Some("b"))),
            ("new", e("file", 0o644, Some("n"), None)),
            ("typed", e("symlink", 0o777, None, Some("t"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let d = diff_entries(&a, &b);
        let by: BTreeMap<&str, &PathDiff> = d.iter().map(|p| (p.path(), p)).collect();
        assert!(!by.contains_key("same"));
        assert!(matches!(by["content"], PathDiff::Content { also, .. } if also.len() == 1));
        assert!(
            matches!(by["mode"], PathDiff::Metadata { changes, .. } if changes == &["mode 0644 expected, 0755 rebuilt"])
        );
        assert!(
            matches!(by["link"], PathDiff::Metadata { changes, .. } if changes[0].starts_with("link target"))
        );
        assert!(matches!(by["gone"], PathDiff::OnlyInExpected { .. }));
        assert!(matches!(by["new"], PathDiff::OnlyInRebuilt { .. }));
        assert!(
            matches!(by["typed"], PathDiff::Content { also, .. } if also[0].starts_with("type file"))
        );
        assert_eq!(d.len(), 6);
    }

    #[test]
    fn json_differs_key_by_key() {
        let a = serde_json::json!({"created": "1", "config": {"Env": ["A=1", "B=2"]}, "same": 1});
        let b = serde_json::json!({"created": "2", "config": {"Env": ["A=1"]}, "same": 1});
        let d = diff_json(&a, &b);
        let keys: Vec<&str> = d.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["config.Env[1]", "created"]);
    }
}
