//! `kiln pack`: determinism, real OCI clients, hostile trees, bounded memory.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::*;

const EPOCH: &str = "1700000000";

/// The same content, built two very different ways.
fn tree_a(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc/app/conf.d")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::write(root.join("etc/app/app.conf"), b"key = value\n").unwrap();
    fs::write(root.join("etc/app/conf.d/10-x.conf"), vec![b'x'; 70_000]).unwrap();
    fs::write(root.join("a-b"), b"sorts between a and a/").unwrap();
    symlink("../usr/bin/tool", root.join("etc/tool")).unwrap();
    symlink("/etc/app/app.conf", root.join("app.conf")).unwrap();
    // Noise that must not reach the layer: owners, mtimes.
    for (i, p) in [
        "usr/bin/tool",
        "etc/app/app.conf",
        "a-b",
        "etc",
        "var/empty",
    ]
    .iter()
    .enumerate()
    {
        std::os::unix::fs::chown(root.join(p), Some(1000 + i as u32), Some(2000 + i as u32))
            .unwrap();
    }
    run_ok(
        Command::new("touch")
            .args(["-h", "-d", "2001-02-03 04:05:06"])
            .arg(root.join("etc/tool")),
    );
    run_ok(
        Command::new("touch")
            .args(["-d", "1999-12-31 23:59:59"])
            .arg(root.join("etc/app/app.conf")),
    );
}

fn tree_b(root: &Path) {
    // Reverse creation order, umask 077, other owners and times, made by a shell.
    let script = r#"
        set -e
        umask 077
        cd "$1"
        ln -s /etc/app/app.conf app.conf
        printf 'sorts between a and a/' > a-b
        mkdir -p var/empty etc/app/conf.d usr/bin
        ln -s ../usr/bin/tool etc/tool
        head -c 70000 /dev/zero | tr '\0' x > etc/app/conf.d/10-x.conf
        printf 'key = value\n' > etc/app/app.conf
        printf '#!/bin/sh\necho tool\n' > usr/bin/tool
        chmod 0700 usr/bin/tool
        chmod g+s etc
        chown -R 4242:4343 .
        touch -d '2030-01-01 00:00:00' usr/bin/tool etc/app
    "#;
    fs::create_dir_all(root).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(script).arg("sh").arg(root));
}

#[test]
fn same_content_packs_to_the_same_digest() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    tree_a(&a);
    tree_b(&b);
    assert_eq!(
        snapshot(&a),
        snapshot(&b),
        "the two trees must hold the same content"
    );
    let layout = t.path().join("layout");
    let da = pack(&a, &layout, &["--tag", "a", "--source-date-epoch", EPOCH]);
    let db = pack(
        &b,
        &t.path().join("other"),
        &["--tag", "b", "--source-date-epoch", EPOCH],
    );
    assert_eq!(da, db);

    // The same tree again into the same layout: same digest, still one entry.
    let again = pack(&a, &layout, &["--tag", "a", "--source-date-epoch", EPOCH]);
    assert_eq!(again, da);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");

    // SOURCE_DATE_EPOCH from the environment is the same as the flag.
    let env = run_ok(
        kiln()
            .arg("pack")
            .arg(&a)
            .arg("--output")
            .arg(t.path().join("env"))
            .env("SOURCE_DATE_EPOCH", EPOCH),
    );
    assert_eq!(
        String::from_utf8(env.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
        da
    );

    // Another epoch, another digest; the default epoch is 0.
    let other = pack(
        &a,
        &layout,
        &["--tag", "later", "--source-date-epoch", "1700000001"],
    );
    assert_ne!(other, da);
    let zero = pack(&a, &t.path().join("zero"), &[]);
    let zero_flag = pack(&a, &t.path().join("zero2"), &["--source-date-epoch", "0"]);
    assert_eq!(zero, zero_flag);
    assert_ne!(zero, da);

    // A content change (one exec bit) changes the digest.
    fs::set_permissions(
        a.join("etc/app/app.conf"),
        fs::Permissions::from_mode(0o744),
    )
    .unwrap();
    assert_ne!(
        pack(&a, &t.path().join("x"), &["--source-date-epoch", EPOCH]),
        da
    );
    validate(&layout);
}

#[test]
fn layer_headers_are_normalized_and_sorted() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_a(&src);
    let layout = t.path().join("l");
    pack(&src, &layout, &["--tag", "t", "--source-date-epoch", EPOCH]);
    let tar_bytes = layer_tar(&layout, "t");
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut paths = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        let p = e.path_bytes().into_owned();
        assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{p:?}");
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username_bytes().unwrap(), b"");
        assert_eq!(h.groupname_bytes().unwrap(), b"");
        let mode = h.mode().unwrap();
        match h.entry_type() {
            tar::EntryType::Directory => assert_eq!(mode, 0o755),
            tar::EntryType::Symlink => assert_eq!(mode, 0o777),
            tar::EntryType::Regular => assert!(mode == 0o644 || mode == 0o755, "{mode:o}"),
            other => panic!("unexpected entry type {other:?}"),
        }
        paths.push(p);
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let bare: Vec<&str> = names.iter().map(|n| n.trim_end_matches('/')).collect();
    let mut sorted = bare.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(bare, sorted, "entries sorted by path bytes, no duplicates");
    assert_eq!(bare[..3], ["a-b", "app.conf", "etc"]);
    assert!(names.contains(&"usr/bin/tool".to_string()));
    // setuid is dropped, the exec bit kept.
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let tool_mode = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path_bytes().as_ref() == b"usr/bin/tool")
        .map(|e| e.header().mode().unwrap());
    assert_eq!(tool_mode, Some(0o755));
    // The archive ends with the two zero blocks and nothing else.
    assert!(
        tar_bytes.len().is_multiple_of(512)
            && tar_bytes[tar_bytes.len() - 1024..].iter().all(|&b| b == 0)
    );
}

/// Everything awkward a real tree holds, compared after a round trip through umoci.
#[test]
fn skopeo_and_umoci_accept_the_layout_and_unpack_the_same_tree() {
    require("skopeo");
    require("umoci");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_a(&src);
    // A 300-byte path (several directory levels), a long symlink target, a non-UTF-8 name,
    // a dangling link, a symlink loop and a hardlink.
    let deep: Vec<String> = (0..6).map(|i| format!("{i}{}", "d".repeat(45))).collect();
    let deep_dir = src.join(deep.join("/"));
    fs::create_dir_all(&deep_dir).unwrap();
    let long_file = deep_dir.join("f".repeat(20));
    fs::write(&long_file, b"deep").unwrap();
    assert!(long_file.strip_prefix(&src).unwrap().as_os_str().len() > 255);
    symlink(long_file.strip_prefix(&src).unwrap(), src.join("to-deep")).unwrap();
    fs::write(bytes_path(&src, b"caf\xe9-\xff.bin"), b"latin1 name").unwrap();
    symlink("nowhere/at/all", src.join("dangling")).unwrap();
    symlink("loop-b", src.join("loop-a")).unwrap();
    symlink("loop-a", src.join("loop-b")).unwrap();
    symlink(".", src.join("self")).unwrap();
    fs::hard_link(src.join("etc/app/app.conf"), src.join("hardlink.conf")).unwrap();

    let layout = t.path().join("layout");
    let digest = pack(
        &src,
        &layout,
        &["--tag", "v1", "--source-date-epoch", EPOCH],
    );
    let report = validate(&layout);
    assert_eq!((report.manifests, report.layers), (1, 1));

    let inspect = run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", layout.display())),
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(info["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
    // skopeo also re-verifies every blob when it copies.
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci:{}:copy", t.path().join("copy").display())),
    );

    let bundle = t.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
    );
    let mut want = snapshot(&src);
    let got = snapshot(&bundle.join("rootfs"));
    // Hardlinks are stored as independent regular files with the same content.
    assert_eq!(
        got.get(b"hardlink.conf".as_slice()),
        want.get(b"etc/app/app.conf".as_slice())
    );
    want.insert(
        b"hardlink.conf".to_vec(),
        got[b"hardlink.conf".as_slice()].clone(),
    );
    assert_eq!(got, want);
    assert!(got.contains_key(b"caf\xe9-\xff.bin".as_slice()));
}

#[test]
fn hostile_special_files_are_rejected_by_name_and_leave_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let ok = t.path().join("ok");
    fs::create_dir_all(&ok).unwrap();
    fs::write(ok.join("f"), b"x").unwrap();
    pack(&ok, &layout, &["--tag", "good"]);
    let index_before = fs::read(layout.join("index.json")).unwrap();
    let blobs_before = fs::read_dir(layout.join("blobs/sha256")).unwrap().count();

    let fifo_tree = t.path().join("fifo");
    fs::create_dir_all(fifo_tree.join("sub")).unwrap();
    fs::write(fifo_tree.join("a"), vec![7u8; 300_000]).unwrap();
    run_ok(Command::new("mkfifo").arg(fifo_tree.join("sub/pipe")));
    let sock_tree = t.path().join("sock");
    fs::create_dir_all(&sock_tree).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(sock_tree.join("control.sock")).unwrap();

    for (tree, name, what) in [
        (&fifo_tree, "sub/pipe", "a fifo"),
        (&sock_tree, "control.sock", "a socket"),
    ] {
        let out = kiln()
            .arg("pack")
            .arg(tree)
            .arg("--output")
            .arg(&layout)
            .args(["--tag", "bad"])
            .checked_output()
            .unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "no digest on failure");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name) && err.contains(what), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(fs::read(layout.join("index.json")).unwrap(), index_before);
    assert_eq!(
        fs::read_dir(layout.join("blobs/sha256")).unwrap().count(),
        blobs_before
    );
    assert_eq!(
        fs::read_dir(layout.join(".kiln/tmp")).unwrap().count(),
        0,
        "no temporary files left"
    );
    validate(&layout);
}

#[test]
fn bad_arguments_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let foreign = t.path().join("foreign");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("precious"), b"keep me").unwrap();
    // (arguments, environment variable, what the error must mention)
    type Case<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--compression", "brotli"], None, "brotli"),
        (vec!["--tag=-nope"], None, "invalid tag"),
        (vec!["--source-date-epoch=-5"], None, "-5"),
        (
            vec![],
            Some(("SOURCE_DATE_EPOCH", "yesterday")),
            "SOURCE_DATE_EPOCH",
        ),
        (vec!["--platform", "linux"], None, "platform"),
    ];
    for (args, env, needle) in cases {
        let mut c = kiln();
        c.arg("pack")
            .arg(&src)
            .arg("--output")
            .arg(t.path().join("l"))
            .args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.checked_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let missing = kiln()
        .arg("pack")
        .arg(t.path().join("missing"))
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing"));
    let out = kiln()
        .arg("pack")
        .arg(&src)
        .arg("--output")
        .arg(&foreign)
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OCI image layout"));
    assert_eq!(
        fs::read_dir(&foreign).unwrap().count(),
        1,
        "a foreign directory is left alone"
    );
}

#[test]
fn zstd_and_uncompressed_layers_are_valid() {
    require("skopeo");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_a(&src);
    let layout = t.path().join("l");
    let mut digests = Vec::new();
    for c in ["gzip", "zstd", "none"] {
        let d = pack(
            &src,
            &layout,
            &["--tag", c, "--compression", c, "--source-date-epoch", EPOCH],
        );
        assert_eq!(
            pack(
                &src,
                &layout,
                &["--tag", c, "--compression", c, "--source-date-epoch", EPOCH]
            ),
            d
        );
        let info = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci:{}:{c}", layout.display())),
        );
        let m: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let mt = m["layers"][0]["mediaType"].as_str().unwrap().to_owned();
        assert!(
            mt.starts_with("application/vnd.oci.image.layer.v1.tar"),
            "{mt}"
        );
        digests.push((d, mt));
    }
    assert!(
        digests[0].1.ends_with("+gzip")
            && digests[1].1.ends_with("+zstd")
            && digests[2].1.ends_with(".tar")
    );
    assert_eq!(layer_tar(&layout, "gzip"), layer_tar(&layout, "zstd"));
    assert_eq!(layer_tar(&layout, "gzip"), layer_tar(&layout, "none"));
    let r = validate(&layout);
    assert_eq!(r.manifests, 3);
}

/// The output never depends on how many threads compress it.
#[test]
fn thread_count_does_not_change_the_bytes() {
    use kiln::events::Quiet;
    use kiln::pack::{Compression, PackOptions, pack_dir};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree_a(&src);
    // Enough data for many gzip blocks and several zstd jobs.
    let mut big = Vec::with_capacity(6 << 20);
    let mut x: u64 = 1;
    while big.len() < 6 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(format!("{} ", x % 10_000).as_bytes());
    }
    fs::write(src.join("big.txt"), &big).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    for c in [Compression::Gzip, Compression::Zstd] {
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let store =
                kiln::store::OciLayout::open_or_create(t.path().join(format!("{c}-{threads}")))
                    .unwrap();
            let mut o = PackOptions::new(1_700_000_000);
            o.compression = c;
            o.threads = threads;
            results.push(pack_dir(&src, &o, &store, &cancel, &Quiet).unwrap());
        }
        assert_eq!(results[0], results[1], "{c}");
        assert_eq!(results[0], results[2], "{c}");
    }
}

/// Streaming: packing a 2 GiB file takes no more memory than packing a small one.
#[test]
fn memory_does_not_grow_with_file_size() {
    let t = tempfile::tempdir().unwrap();
    let (small, large) = (t.path().join("small"), t.path().join("large"));
    fs::create_dir_all(&small).unwrap();
    fs::create_dir_all(&large).unwrap();
    fs::write(small.join("f"), vec![1u8; 1 << 20]).unwrap();
    let f = fs::File::create(large.join("f")).unwrap();
    f.set_len(2 << 30).unwrap(); // sparse: cheap to create, 2 GiB to read
    let measure = |dir: &Path, out: &str| {
        let (_, rss_kib, stdout) = run_measuring_rss(
            kiln()
                .arg("pack")
                .arg(dir)
                .arg("--output")
                .arg(t.path().join(out))
                .args(["--compression", "gzip"]),
        );
        assert!(is_digest(String::from_utf8_lossy(&stdout).trim()));
        rss_kib
    };
    let rss_small = measure(&small, "ls");
    let rss_large = measure(&large, "ll");
    eprintln!("peak RSS: 1 MiB file {rss_small} KiB, 2 GiB file {rss_large} KiB");
    assert!(rss_large < 100 * 1024, "peak RSS {rss_large} KiB");
    assert!(
        rss_large < rss_small + 32 * 1024,
        "memory grew with the file: {rss_small} -> {rss_large} KiB"
    );
    let r = validate(&t.path().join("ll"));
    assert_eq!(r.layers, 1);
}
