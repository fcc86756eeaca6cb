//! Helpers shared by the integration tests: the real `kiln` binary, real peer tools, trees.
//!
//! Tests that need an outside tool (skopeo, umoci, ...) fail when it is missing: `.ci/run`
//! installs them, and a silently skipped test would hide a broken pipeline.

#![allow(dead_code)]

pub mod attest;
pub mod daemon;
pub mod farm;
pub mod forge;
pub mod net;
pub mod postgres;
pub mod recipe;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `kiln` binary cargo built for these tests, at trace logging: every end-to-end run
/// logs all it can, and [`Checked::checked_output`] / [`run_ok`] look there for secrets. A
/// test about the default level's output says so with `.env_remove("RUST_LOG")`.
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("SOURCE_DATE_EPOCH")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1");
    c
}

/// The GitHub token every test hands kiln. Nothing kiln prints, logs or writes may hold it.
pub const GITHUB_TOKEN: &str = "ghp_kilnTestToken_NeverShown_0123456789abcdef";
/// The registry user and password tests use with htpasswd.
pub const REGISTRY_USER: &str = "builder";
pub const REGISTRY_PASSWORD: &str = "kiln-registry-Passw0rd-NeverShown-8686";

/// The secrets, and the forms they travel in (a Basic header, a docker config `auth`).
pub fn secret_forms() -> Vec<String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let mut forms = vec![
        GITHUB_TOKEN.into(),
        REGISTRY_PASSWORD.into(),
        basic,
        postgres::DB_PASSWORD.into(),
    ];
    forms.extend(attest::key_secret_forms());
    forms
}

/// Panics if `text` holds a secret; `what` names where it came from.
pub fn assert_no_secret(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for s in secret_forms() {
        assert!(
            !text.contains(&s),
            "a secret appeared in {what}: {}",
            text.lines()
                .filter(|l| l.contains(&s))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `Command::output`, then a check that neither stdout nor stderr holds a secret.
pub trait Checked {
    fn checked_output(&mut self) -> std::io::Result<Output>;
}

impl Checked for Command {
    fn checked_output(&mut self) -> std::io::Result<Output> {
        let out = self.output()?;
        assert_no_secret(&format!("the stdout of {self:?}"), &out.stdout);
        assert_no_secret(&format!("the stderr of {self:?}"), &out.stderr);
        Ok(out)
    }
}

/// Run a command and return its output; panics with its stderr if it fails, or if its
/// output holds a secret.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .checked_output()
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
    let d = kiln::store::ContentStore::resolve(&l, tag)
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

/// Fail (never skip) when no Docker engine answers.
pub fn require_docker() {
    require("docker");
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "a running Docker engine is required for this test (`docker info` failed); .ci/run starts one"
    );
}

/// Make (once per test process) a local builder image with tests/support/builder-image.sh.
pub fn builder_image(kind: &str) -> String {
    use std::sync::{Mutex, OnceLock};
    static MADE: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    require_docker();
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(tag) = made.get(kind) {
        return tag.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/builder-image.sh");
    let out = run_ok(Command::new("sh").arg(script).arg(kind));
    let tag = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    made.insert(kind.to_owned(), tag.clone());
    tag
}

/// A fixed commit time for test repositories: 2024-01-02T03:04:05Z.
pub const COMMIT_TIME: u64 = 1_704_164_645;

/// Create a git repository at `dir` with `files` committed at [`COMMIT_TIME`] and `origin`
/// set to `remote`; returns the commit SHA.
pub fn git_repo(dir: &Path, files: &[(&str, &[u8])], remote: Option<&str>) -> String {
    fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        let out = run_ok(
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .env("GIT_AUTHOR_DATE", format!("@{COMMIT_TIME} +0000"))
                .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"))
                .env("GIT_AUTHOR_NAME", "kiln test")
                .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
                .env("GIT_COMMITTER_NAME", "kiln test")
                .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid"),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        if path.ends_with(".sh") {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "test commit"]);
    if let Some(r) = remote {
        git(&["remote", "add", "origin", r]);
    }
    git(&["rev-parse", "HEAD"])
}

/// Names of containers kiln left behind for builds of `revision`.
pub fn leftover_containers(revision: &str) -> Vec<String> {
    containers_labelled("dev.kiln.revision", revision)
}

/// Names of containers (running or not) carrying `label=value`.
pub fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = run_ok(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label={label}={value}"),
        "--format",
        "{{.Names}}",
    ]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `git -C dir ARGS` as a test author (dates are now); trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "kiln test")
            .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
            .env("GIT_COMMITTER_NAME", "kiln test")
            .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid"),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Files of the single layer of `tag`, by path: content for files, `->target` for symlinks.
pub fn layer_files(layout: &Path, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let bytes = layer_tar(layout, tag);
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let value = match e.header().entry_type() {
            tar::EntryType::Symlink => {
                format!("->{}", e.link_name().unwrap().unwrap().display()).into_bytes()
            }
            tar::EntryType::Directory => continue,
            _ => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                v
            }
        };
        out.insert(path, value);
    }
    out
}

/// `n` incompressible bytes (xorshift64), the same for the same seed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
