//! Helpers shared by the integration tests: the real `kiln` binary, real peer tools, trees.
//!
//! Tests that need an outside tool (skopeo, umoci, ...) fail when it is missing: `.ci/run`
//! installs them, and a silently skipped test would hide a broken pipeline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `kiln` binary cargo built for these tests.
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("SOURCE_DATE_EPOCH").env_remove("RUST_LOG");
    c
}

/// Run a command and return its output; panics with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Fail (never skip) when a peer tool is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required for this test but is not on PATH; run .ci/run or apt-get install it"
    );
}

/// `kiln pack DIR --output LAYOUT [extra...]`: returns the digest on the last line of stdout.
pub fn pack(dir: &Path, layout: &Path, extra: &[&str]) -> String {
    let out = run_ok(
        kiln()
            .arg("pack")
            .arg(dir)
            .arg("--output")
            .arg(layout)
            .args(extra),
    );
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let last = stdout
        .lines()
        .last()
        .expect("kiln pack printed nothing on stdout")
        .to_owned();
    assert!(
        is_digest(&last),
        "last stdout line is not a digest: {last:?}"
    );
    last
}

pub fn is_digest(s: &str) -> bool {
    s.len() == 71
        && s.starts_with("sha256:")
        && s[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Validate a layout with kiln's validator; panics with every problem found.
pub fn validate(layout: &Path) -> kiln::validate::Report {
    kiln::validate::validate_layout(layout).unwrap_or_else(|e| panic!("{e}"))
}

/// The uncompressed tar of the single layer of `tag` in `layout`.
pub fn layer_tar(layout: &Path, tag: &str) -> Vec<u8> {
    let l = kiln::store::OciLayout::open(layout).unwrap();
    let d = kiln::store::Store::resolve(&l, tag)
        .unwrap()
        .expect("tag exists");
    let m: serde_json::Value =
        serde_json::from_slice(&l.read_blob(&d.digest().as_ref().parse().unwrap()).unwrap())
            .unwrap();
    let layer = &m["layers"][0];
    let blob = l
        .read_blob(&layer["digest"].as_str().unwrap().parse().unwrap())
        .unwrap();
    let mut out = Vec::new();
    match layer["mediaType"].as_str().unwrap() {
        t if t.ends_with("+gzip") => {
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        t if t.ends_with("+zstd") => out = zstd::decode_all(&blob[..]).unwrap(),
        _ => out = blob,
    }
    out
}

/// What a tree holds, keyed by relative path bytes: enough to compare two trees.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Node {
    Dir,
    File { content: Vec<u8>, executable: bool },
    Symlink(Vec<u8>),
}

pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, &[], &mut out);
    out
}

fn walk(dir: &Path, prefix: &[u8], out: &mut BTreeMap<Vec<u8>, Node>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.file_name().as_bytes());
        let md = fs::symlink_metadata(e.path()).unwrap();
        let node = if md.file_type().is_symlink() {
            Node::Symlink(
                fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if md.is_dir() {
            walk(&e.path(), &rel, out);
            Node::Dir
        } else {
            Node::File {
                content: fs::read(e.path()).unwrap(),
                executable: md.permissions().mode() & 0o100 != 0,
            }
        };
        out.insert(rel, node);
    }
}

/// A path from raw bytes (for non-UTF-8 names).
pub fn bytes_path(base: &Path, rel: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(rel))
}

/// Peak resident memory (KiB) of a child process, read from wait4's rusage.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives the rusage
pub fn run_measuring_rss(cmd: &mut Command) -> (std::process::ExitStatus, i64, Vec<u8>) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let mut stdout = child.stdout.unwrap();
    let t = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).unwrap();
        s
    });
    let mut err = Vec::new();
    stderr.read_to_end(&mut err).unwrap();
    let out = t.join().unwrap();
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 failed");
    let st = std::process::ExitStatus::from_raw(status);
    assert!(
        st.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&err)
    );
    (st, ru.ru_maxrss, out)
}
