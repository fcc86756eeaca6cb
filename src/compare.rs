//! Comparing two images path by path: layer by layer from the uncompressed tar entries, and
//! configs and annotations key by key. A path that did not change is never listed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

use crate::digest::Digest;
use crate::store::{ContentStore, OciLayout, StoreError};

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
    /// What differs beyond paths: the same entries in another order, or the same content
    /// compressed differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
    /// Other manifest fields (layer media types, sizes, artifactType, ...).
    pub manifest: Vec<KeyDiff>,
}

impl Comparison {
    /// How many paths differ, over all layers.
    pub fn paths(&self) -> usize {
        self.layers.iter().map(|l| l.paths.len()).sum()
    }

    /// A short summary: the first differing paths, or what else differs.
    pub fn summary(&self) -> String {
        let paths: Vec<&str> = self
            .layers
            .iter()
            .flat_map(|l| l.paths.iter().map(PathDiff::path))
            .collect();
        if !paths.is_empty() {
            let mut s = format!(
                "{} path{} differ{}: ",
                paths.len(),
                if paths.len() == 1 { "" } else { "s" },
                if paths.len() == 1 { "s" } else { "" }
            );
            s.push_str(&paths.iter().take(3).copied().collect::<Vec<_>>().join(", "));
            if paths.len() > 3 {
                s.push_str(", ...");
            }
            return s;
        }
        let mut parts: Vec<String> = self
            .layers
            .iter()
            .filter_map(|l| Some(format!("layer {}: {}", l.index, l.note.as_ref()?)))
            .collect();
        for (what, keys) in [
            ("config", &self.config),
            ("annotation", &self.annotations),
            ("manifest", &self.manifest),
        ] {
            if !keys.is_empty() {
                parts.push(format!(
                    "{} {what} key{} differ{}",
                    keys.len(),
                    if keys.len() == 1 { "" } else { "s" },
                    if keys.len() == 1 { "s" } else { "" }
                ));
            }
        }
        if parts.is_empty() {
            "the manifests differ".to_owned()
        } else {
            parts.join("; ")
        }
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
            if let Some(n) = &l.note {
                out.push_str(&format!("  {n}\n"));
            }
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
        for (what, keys) in [
            ("config", &self.config),
            ("annotation", &self.annotations),
            ("manifest", &self.manifest),
        ] {
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
    /// uid:gid and user:group names.
    owner: String,
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

/// The entries of a layer, by path, and the order they came in.
fn entries(
    layout: &OciLayout,
    digest: &Digest,
    media_type: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(BTreeMap<String, Entry>, Vec<String>), StoreError> {
    let bad = |e: std::io::Error| corrupt(layout, format!("layer {digest}: {e}"));
    let mut ar = tar::Archive::new(open_layer(layout, digest, media_type)?);
    let mut out = BTreeMap::new();
    let mut order = Vec::new();
    for e in ar.entries().map_err(bad)? {
        if cancel.is_cancelled() {
            return Err(corrupt(layout, "the comparison was cancelled"));
        }
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
        let owner = format!(
            "{}:{} {}:{}",
            h.uid().unwrap_or(0),
            h.gid().unwrap_or(0),
            String::from_utf8_lossy(h.username_bytes().unwrap_or_default()),
            String::from_utf8_lossy(h.groupname_bytes().unwrap_or_default())
        );
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
        order.push(path.clone());
        out.insert(
            path,
            Entry {
                kind,
                mode,
                mtime,
                owner,
                file,
                link,
            },
        );
    }
    Ok((out, order))
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
                if x.owner != y.owner {
                    meta.push(format!("owner {} expected, {} rebuilt", x.owner, y.owner));
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
    let empty = v.is_null()
        || v.as_object().is_some_and(|m| m.is_empty())
        || v.as_array().is_some_and(|a| a.is_empty());
    if prefix.is_empty() && empty {
        return; // an empty or absent document has no keys
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        // Empty containers are values too: `"Env": []` is not an absent Env.
        Value::Object(m) if m.is_empty() => {
            out.insert(prefix.to_owned(), v.clone());
        }
        Value::Array(a) if a.is_empty() => {
            out.insert(prefix.to_owned(), v.clone());
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
    let len = std::fs::metadata(layout.blob_path(&digest)).map_or(0, |m| m.len());
    if len > 4 << 20 {
        return Err(corrupt(
            layout,
            format!("config {digest} is larger than 4 MiB"),
        ));
    }
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
/// rebuilt). Layers whose diff_ids appear on both sides are not read; the others are paired in
/// order.
pub fn compare(
    la: &OciLayout,
    a: &Digest,
    lb: &OciLayout,
    b: &Digest,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Comparison, StoreError> {
    let (ma, mb) = (manifest(la, a)?, manifest(lb, b)?);
    let (ca, cb) = (blob_json(la, &ma["config"])?, blob_json(lb, &mb["config"])?);
    let (la_layers, lb_layers) = (layers(&ma), layers(&mb));
    let (ida, idb) = (diff_ids(&ca), diff_ids(&cb));
    // A layer's identity: its diff_id (its layer digest for artifacts, which have no rootfs).
    let id = |ids: &[Option<String>], l: &[(Digest, String)], i: usize| {
        ids.get(i)
            .cloned()
            .flatten()
            .unwrap_or_else(|| l[i].0.to_string())
    };
    let a_ids: Vec<String> = (0..la_layers.len())
        .map(|i| id(&ida, &la_layers, i))
        .collect();
    let b_ids: Vec<String> = (0..lb_layers.len())
        .map(|i| id(&idb, &lb_layers, i))
        .collect();
    let mut out_layers = Vec::new();
    // Same content, different bytes: the compression differs.
    for (i, (x, xid)) in la_layers.iter().zip(&a_ids).enumerate() {
        if let Some(j) = b_ids.iter().position(|y| y == xid)
            && lb_layers[j].0 != x.0
        {
            out_layers.push(LayerDiff {
                index: i + 1,
                expected_diff_id: Some(xid.clone()),
                rebuilt_diff_id: Some(b_ids[j].clone()),
                paths: Vec::new(),
                note: Some(format!(
                    "the same content, compressed differently ({} expected, {} rebuilt)",
                    x.0, lb_layers[j].0
                )),
            });
        }
    }
    let only_a: Vec<usize> = (0..la_layers.len())
        .filter(|i| !b_ids.contains(&a_ids[*i]))
        .collect();
    let only_b: Vec<usize> = (0..lb_layers.len())
        .filter(|i| !a_ids.contains(&b_ids[*i]))
        .collect();
    for k in 0..only_a.len().max(only_b.len()) {
        let (xa, xb) = (only_a.get(k).copied(), only_b.get(k).copied());
        let read = |l: &OciLayout, layers: &[(Digest, String)], i: Option<usize>| match i {
            Some(i) => entries(l, &layers[i].0, &layers[i].1, cancel),
            None => Ok((BTreeMap::new(), Vec::new())),
        };
        let (ea, oa) = read(la, &la_layers, xa)?;
        let (eb, ob) = read(lb, &lb_layers, xb)?;
        let paths = diff_entries(&ea, &eb);
        let note =
            (paths.is_empty() && oa != ob).then(|| "the same entries, in another order".to_owned());
        out_layers.push(LayerDiff {
            index: xa.or(xb).unwrap_or(0) + 1,
            expected_diff_id: xa.map(|i| a_ids[i].clone()),
            rebuilt_diff_id: xb.map(|i| b_ids[i].clone()),
            paths,
            note,
        });
    }
    out_layers.sort_by_key(|l| l.index);
    // The config's rootfs is the layers' business, listed above.
    let strip = |mut c: Value, keys: &[&str]| {
        if let Some(o) = c.as_object_mut() {
            for k in keys {
                o.remove(*k);
            }
        }
        c
    };
    let config = diff_json(&strip(ca, &["rootfs"]), &strip(cb, &["rootfs"]));
    let annotations = diff_json(&ma["annotations"], &mb["annotations"]);
    // The rest of the manifest, but digests that follow from what is listed above.
    let rest = |m: &Value| {
        let mut m = strip(m.clone(), &["annotations"]);
        if let Some(ls) = m["layers"].as_array_mut() {
            for l in ls {
                if let Some(o) = l.as_object_mut() {
                    o.remove("digest");
                    o.remove("size");
                }
            }
        }
        if let Some(o) = m["config"].as_object_mut() {
            o.remove("digest");
            o.remove("size");
        }
        m
    };
    let manifest = diff_json(&rest(&ma), &rest(&mb));
    Ok(Comparison {
        identical: a == b,
        expected: a.to_string(),
        rebuilt: b.to_string(),
        layers: out_layers,
        config,
        annotations,
        manifest,
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
            owner: "0:0 :".into(),
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
        // An empty list is not an absent one.
        let d = diff_json(&serde_json::json!({"Env": []}), &serde_json::json!({}));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, "Env");
    }
}
