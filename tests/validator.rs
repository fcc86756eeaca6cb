//! The validator every test relies on must be able to fail: each kind of corruption of a good
//! layout is rejected, with a message that names it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use kiln::store::{BlobSink, OciLayout};

/// A good one-layer layout, and where its manifest, config and layer blobs are.
fn good(
    dir: &Path,
) -> (
    PathBuf,
    serde_json::Value,
    kiln::Digest,
    kiln::Digest,
    kiln::Digest,
) {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("f"), random_bytes(300_000, 1)).unwrap();
    let layout = dir.join("l");
    let digest = pack(&tree, &layout, &["--tag", "t"]);
    validate(&layout);
    let l = OciLayout::open(&layout).unwrap();
    let m: kiln::Digest = digest.parse().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&l.read_blob(&m).unwrap()).unwrap();
    let config: kiln::Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let layer: kiln::Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (layout, manifest, m, config, layer)
}

fn rejected(layout: &Path) -> String {
    match kiln::validate::validate_layout(layout) {
        Ok(r) => panic!("a corrupt layout passed validation: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn blob(layout: &Path, d: &kiln::Digest) -> PathBuf {
    layout.join("blobs/sha256").join(d.hex())
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (layout, _, _, config, _) = good(t.path());
    let p = blob(&layout, &config);
    let mut bytes = fs::read(&p).unwrap();
    bytes[10] ^= 1;
    fs::write(&p, bytes).unwrap();
    let err = rejected(&layout);
    assert!(
        err.contains(&config.hex()[..12]) || err.contains("digest"),
        "{err}"
    );
}

#[test]
fn a_truncated_layer_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (layout, _, _, _, layer) = good(t.path());
    let p = blob(&layout, &layer);
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = rejected(&layout);
    assert!(
        err.contains("incomplete") && err.contains("content hashes to"),
        "{err}"
    );
}

#[test]
fn a_config_naming_another_diff_id_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (layout, manifest, m, config, _) = good(t.path());
    let l = OciLayout::open(&layout).unwrap();
    // A consistent layout (every digest right) whose config claims another diff_id.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&l.read_blob(&config).unwrap()).unwrap();
    cfg["rootfs"]["diff_ids"][0] = kiln::Digest::of(b"not the layer").to_string().into();
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let new_cfg = l.put_blob(&cfg_bytes).unwrap();
    let mut man = manifest.clone();
    man["config"]["digest"] = new_cfg.digest.to_string().into();
    man["config"]["size"] = new_cfg.size.into();
    let man_bytes = serde_json::to_vec(&man).unwrap();
    let new_man = l.put_blob(&man_bytes).unwrap();
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    let index = index
        .replace(&m.to_string(), &new_man.digest.to_string())
        .replace(
            &format!(
                "\"size\":{}",
                fs::metadata(blob(&layout, &m)).unwrap().len()
            ),
            &format!("\"size\":{}", new_man.size),
        );
    fs::write(layout.join("index.json"), index).unwrap();
    let err = rejected(&layout);
    assert!(err.contains("diff_id"), "{err}");
}

#[test]
fn a_bad_index_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let (layout, _, m, _, _) = good(t.path());
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    // Not JSON at all.
    fs::write(layout.join("index.json"), "{ not json").unwrap();
    let err = rejected(&layout);
    assert!(err.contains("index.json"), "{err}");
    // JSON, but naming a manifest that is not there.
    fs::write(
        layout.join("index.json"),
        index.replace(&m.hex(), &kiln::Digest::of(b"gone").hex()),
    )
    .unwrap();
    let err = rejected(&layout);
    assert!(err.contains("missing") || err.contains("not"), "{err}");
}
