//! Hostile build outputs, from real builds: symlinks pointing outside, `files.from` with `..`,
//! 100k small files, nesting 1000 levels deep, names with newlines or invalid UTF-8, a
//! multi-GiB file (memory stays bounded), and 300 MB on stdout (the log stays at its limit).

mod common;

use std::path::Path;
use std::process::Output;

use common::recipe::*;
use common::*;

const FILES: &str = "[[artifact]]\nname = \"out\"\nkind = \"files\"\n";

fn build(dir: &Path, layout: &Path, extra: &[&str]) -> Output {
    kiln()
        .arg("build")
        .arg(dir)
        .arg("--output")
        .arg(layout)
        .args(extra)
        .checked_output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Entries of the single layer of `tag`: path, type and link target.
fn entries(layout: &Path, tag: &str) -> Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>)> {
    let bytes = layer_tar(layout, tag);
    let mut ar = tar::Archive::new(&bytes[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.header().entry_type(),
                e.link_name_bytes().map(|l| l.into_owned()),
            )
        })
        .collect()
}

#[test]
fn symlinks_out_are_data_and_odd_names_survive() {
    let t = tempfile::tempdir().unwrap();
    let dir = recipe_repo(
        t.path(),
        "links",
        &Recipe::steps(&[
            "mkdir -p /out",
            "ln -s /etc/passwd /out/passwd",
            "ln -s ../../../../.. /out/up",
            "ln -s loop /out/loop",
            "printf newline > \"/out/$(printf 'new\\nline')\"",
            "printf bytes > \"/out/$(printf 'bad\\377\\376name')\"",
        ])
        .build("timeout = \"15m\"")
        .then(FILES)
        .bytes(),
    );
    let layout = t.path().join("l");
    ok(&build(&dir, &layout, &[]));
    validate(&layout);
    let e = entries(&layout, "out");
    let find = |p: &[u8]| e.iter().find(|(path, _, _)| path == p).unwrap().clone();
    let (_, ty, link) = find(b"passwd");
    assert_eq!(ty, tar::EntryType::Symlink);
    assert_eq!(link.as_deref(), Some(&b"/etc/passwd"[..]), "kept as data");
    assert_eq!(find(b"up").2.as_deref(), Some(&b"../../../../.."[..]));
    assert_eq!(find(b"loop").2.as_deref(), Some(&b"loop"[..]));
    assert_eq!(find(b"new\nline").1, tar::EntryType::Regular);
    assert_eq!(find(b"bad\xff\xfename").1, tar::EntryType::Regular);
    // No host file came in through a link.
    assert!(!e.iter().any(|(p, _, _)| p.starts_with(b"passwd/")));
}

#[test]
fn files_from_with_dotdot_is_refused_before_anything_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = recipe_repo(
        t.path(),
        "dotdot",
        &Recipe::steps(&["mkdir -p /out"]).build("timeout = \"15m\"").then("[[artifact]]\nname = \"out\"\nkind = \"files\"\nfiles = [{ from = \"../etc\", to = \"/x\" }]\n").bytes(),
    );
    let out = build(&dir, &t.path().join("l"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("files") && err.contains(".."), "{err}");
    assert!(!err.contains("step 1"), "nothing ran: {err}");
}

#[test]
fn a_hundred_thousand_files_and_a_thousand_levels() {
    // The files come with the builder image (made on the host: creating 100k files inside a
    // container on this engine's FUSE storage driver takes minutes); the build outputs them.
    let image = builder_image("hostile");
    let t = tempfile::tempdir().unwrap();
    let r = format!(
        "[build]\nimage = \"{image}\"\nsteps = [\"ls /data/many | wc -l\"]\noutput = \"/data\"\ntimeout = \"15m\"\n\n{FILES}"
    );
    let dir = t.path().join("many");
    git_repo(&dir, &[("kiln.toml", r.as_bytes())], None);
    let layout = t.path().join("l");
    let started = std::time::Instant::now();
    ok(&build(&dir, &layout, &[]));
    eprintln!(
        "100k files and 1000 levels collected and packed in {:?}",
        started.elapsed()
    );
    let e = entries(&layout, "out");
    let files = e
        .iter()
        .filter(|(p, ty, _)| p.starts_with(b"many/") && *ty == tar::EntryType::Regular)
        .count();
    assert_eq!(files, 100_000);
    let bottom = format!("deep/{}f", "d/".repeat(1000));
    assert!(
        e.iter().any(|(p, _, _)| p == bottom.as_bytes()),
        "the file 1000 levels down"
    );
    validate(&layout);
}

#[test]
fn a_multi_gib_output_packs_in_bounded_memory_and_a_flood_of_output_stays_at_the_log_limit() {
    let t = tempfile::tempdir().unwrap();
    let dir = recipe_repo(
        t.path(),
        "huge",
        &Recipe::steps(&[
            "mkdir -p /out && dd if=/dev/zero of=/out/huge bs=1M count=2100 2>/dev/null",
            // 300 MB on stdout.
            "dd if=/dev/zero bs=1M count=300 2>/dev/null | tr '\\\\0' x",
        ])
        .build("timeout = \"15m\"")
        .then(FILES)
        .bytes(),
    );
    let layout = t.path().join("l");
    let mut cmd = kiln();
    cmd.arg("build").arg(&dir).arg("--output").arg(&layout);
    let (_, rss_kib, _) = run_measuring_rss(&mut cmd);
    eprintln!(
        "peak RSS building a 2.1 GiB output with 300 MB of logs: {} MiB",
        rss_kib / 1024
    );
    assert!(rss_kib < 200 * 1024, "peak RSS {rss_kib} KiB");
    let e = entries(&layout, "out");
    assert!(e.iter().any(|(p, _, _)| p == b"huge"));
    let logs: Vec<_> = std::fs::read_dir(layout.join(".kiln/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let size = std::fs::metadata(&logs[0]).unwrap().len();
    assert!(size <= (64 << 20) + 4096, "log of {size} bytes");
    assert!(size >= 64 << 20, "the log filled up to its limit: {size}");
}
