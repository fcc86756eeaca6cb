//! `kiln build` against the real Docker engine, with locally made builder images.

mod common;

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::attest::provenance_statement;
use common::recipe::*;
use common::*;

/// The remote of the test repositories: its canonical form is what provenance records.
const REMOTE: &str = "git@github.com:acme/hello.git";

/// `kiln build DIR --output LAYOUT`, which must fail: its stderr.
fn build_fails(dir: &Path, layout: &Path) -> String {
    let out = kiln()
        .arg("build")
        .arg(dir)
        .arg("--output")
        .arg(layout)
        .checked_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build should have failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn build_json(dir: &Path, layout: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(dir)
            .arg("--output")
            .arg(layout)
            .arg("--json")
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn hello_builds_runs_and_reproduces() {
    require("skopeo");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    let sha = hello_repo(
        &repo,
        "hello_builds_runs_and_reproduces",
        HELLO_TOML,
        Some(REMOTE),
    );
    // $SOURCE_DATE_EPOCH does not override a commit's time.
    let first = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(t.path().join("l1"))
            .args(["--json", "--load"])
            .env("SOURCE_DATE_EPOCH", "5"),
    );
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first["source"]["revision"], sha.as_str());
    assert_eq!(first["source"]["url"], "https://github.com/acme/hello");
    assert_eq!(first["source"]["epoch"], COMMIT_TIME);
    assert_eq!(first["source"]["dirty"], false);
    let art = &first["artifacts"][0];
    assert_eq!(art["name"], "hello");
    assert_eq!(art["kind"], "image");
    assert_eq!(
        art["media_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(art["size"].as_u64().unwrap() > 0);
    let digest = art["digest"].as_str().unwrap().to_owned();
    assert!(is_digest(&digest));

    // It runs, under the tag --load promised.
    let tag = format!("kiln/hello:{}", &sha[..12]);
    assert_eq!(art["loaded_as"], tag.as_str());
    let run = run_ok(Command::new("docker").args(["run", "--rm", &tag]));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        format!("hello from kiln (built reproducibly from a commit made at {COMMIT_TIME})")
    );

    // A second build, into another layout, gives the same digest.
    let second = build_json(&repo, &t.path().join("l2"), &[]);
    assert_eq!(second["artifacts"][0]["digest"], digest.as_str());
    validate(&t.path().join("l1"));

    // Annotations and config, as an independent client sees them.
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:hello", t.path().join("l1").display())),
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let ann = &m["annotations"];
    assert_eq!(ann["org.opencontainers.image.revision"], sha.as_str());
    assert_eq!(
        ann["org.opencontainers.image.source"],
        "https://github.com/acme/hello"
    );
    assert_eq!(
        ann["org.opencontainers.image.created"],
        "2024-01-02T03:04:05Z"
    );
    assert!(is_digest(ann["dev.kiln.recipe.digest"].as_str().unwrap()));
    assert!(
        ann["dev.kiln.builder.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let cfg = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:hello", t.path().join("l1").display())),
    );
    let c: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap();
    assert_eq!(c["created"], "2024-01-02T03:04:05Z");
    assert_eq!(c["config"]["Entrypoint"][0], "/bin/hello");

    // Symlinks stay symlinks.
    let files = layer_files(&t.path().join("l1"), "hello");
    assert_eq!(files["bin/sh"], b"->busybox");
    assert!(leftover_containers(&sha).is_empty());
    // The build log was kept.
    let logs: Vec<_> = fs::read_dir(t.path().join("l1/.kiln/logs"))
        .unwrap()
        .collect();
    assert_eq!(logs.len(), 1);
    let log = fs::read_to_string(logs[0].as_ref().unwrap().path()).unwrap();
    assert!(log.contains("$ mkdir -p /out/bin"), "{log}");
}

#[test]
fn builds_are_offline_and_see_the_commit_time() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("probe");
    let r = Recipe::steps(&[
        "mkdir -p /out",
        "ls /sys/class/net > /out/interfaces",
        "echo \"$SOURCE_DATE_EPOCH\" > /out/epoch",
        "echo \"$GREETING\" > /out/env",
        "pwd > /out/pwd",
        "ls > /out/source-files",
    ])
    .build("env = { GREETING = \"hi there\" }")
    .files("probe")
    .bytes();
    let sha = hello_repo(&repo, "offline", &r, Some(REMOTE));
    let res = build_json(&repo, &t.path().join("l"), &[]);
    assert_eq!(res["artifacts"][0]["kind"], "files");
    let files = layer_files(&t.path().join("l"), "probe");
    assert_eq!(
        String::from_utf8_lossy(&files["interfaces"]).trim(),
        "lo",
        "the build had a network"
    );
    assert_eq!(
        String::from_utf8_lossy(&files["epoch"]).trim(),
        COMMIT_TIME.to_string()
    );
    assert_eq!(String::from_utf8_lossy(&files["env"]).trim(), "hi there");
    assert_eq!(String::from_utf8_lossy(&files["pwd"]).trim(), "/src");
    // Exactly the committed files: no .git, nothing untracked.
    assert_eq!(
        String::from_utf8_lossy(&files["source-files"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["hello.sh", "kiln.toml", "marker.txt"]
    );
    // A generic artifact: artifactType and the empty config.
    let l = kiln::store::OciLayout::open(t.path().join("l")).unwrap();
    let d = kiln::store::ContentStore::resolve(&l, "probe")
        .unwrap()
        .unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&l.read_blob(&d.digest().as_ref().parse().unwrap()).unwrap())
            .unwrap();
    assert_eq!(m["artifactType"], "application/vnd.kiln.files.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    validate(&t.path().join("l"));
    assert!(leftover_containers(&sha).is_empty());
}

#[test]
fn failing_step_names_the_step_code_and_output() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("fail");
    let r = Recipe::steps(&[
        "echo first step ran",
        "echo compiling; echo 'error: boom' >&2; exit 3",
        "echo never runs > /tmp/x",
    ])
    .image_artifact("x")
    .bytes();
    let sha = hello_repo(&repo, "failing", &r, Some(REMOTE));
    // What a user sees at the default log level.
    let out = kiln()
        .env_remove("RUST_LOG")
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("step 2 of 3 failed with exit code 3"), "{err}");
    assert!(err.contains("error: boom"), "{err}");
    // Not a terminal: no progress on stderr; the whole output is in the build log.
    let log: String = fs::read_dir(t.path().join("l/.kiln/logs"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(log.contains("first step ran"), "{log}");
    assert!(
        !err.contains("first step ran"),
        "progress on a non-terminal: {err}"
    );
    assert!(!err.contains("never runs"), "{err}");
    assert!(err.contains("full build log"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(leftover_containers(&sha).is_empty());
}

#[test]
fn timeout_kills_the_build() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("slow");
    let r = Recipe::steps(&["echo starting", "sleep 60"])
        .build("timeout = \"3s\"")
        .image_artifact("x")
        .bytes();
    let sha = hello_repo(&repo, "timeout", &r, Some(REMOTE));
    let started = Instant::now();
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its timeout of 3s"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(leftover_containers(&sha).is_empty());
    // The stopped build unwound before kiln exited: no source tar or output spool is left.
    let scratch: Vec<_> = fs::read_dir(t.path().join("l/.kiln/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(scratch.is_empty(), "left in the scratch space: {scratch:?}");
}

#[test]
fn interrupt_exits_130_and_removes_the_container() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("interrupt");
    let r = Recipe::steps(&["echo waiting-for-signal", "sleep 120"])
        .image_artifact("x")
        .bytes();
    let sha = hello_repo(&repo, "interrupt", &r, Some(REMOTE));
    let mut child = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // The second step has started once the build log shows its command.
    let logs = t.path().join("l/.kiln/logs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = fs::read_dir(&logs).ok().is_some_and(|d| {
            d.flatten()
                .any(|e| fs::read_to_string(e.path()).is_ok_and(|l| l.contains("$ sleep 120")))
        });
        if started {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the build never reached its second step"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        leftover_containers(&sha).len(),
        1,
        "the build container is running"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(
        leftover_containers(&sha).is_empty(),
        "the container was left behind"
    );
}

#[test]
fn dirty_trees_need_allow_dirty_and_are_marked() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("dirty");
    hello_repo(&repo, "dirty", HELLO_TOML, Some(REMOTE));
    fs::write(repo.join("hello.sh"), b"#!/bin/sh\necho uncommitted\n").unwrap();
    fs::write(repo.join("untracked.txt"), b"not part of any build").unwrap();
    let err = build_fails(&repo, &t.path().join("l"));
    assert!(
        err.contains("uncommitted changes")
            && err.contains("--allow-dirty")
            && err.contains("hello.sh"),
        "{err}"
    );
    let res = build_json(&repo, &t.path().join("l"), &["--allow-dirty"]);
    assert_eq!(res["source"]["dirty"], true);
    let files = layer_files(&t.path().join("l"), "hello");
    assert_eq!(files["bin/hello"], b"#!/bin/sh\necho uncommitted\n");
    let l = kiln::store::OciLayout::open(t.path().join("l")).unwrap();
    let d = kiln::store::ContentStore::resolve(&l, "hello")
        .unwrap()
        .unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&l.read_blob(&d.digest().as_ref().parse().unwrap()).unwrap())
            .unwrap();
    assert_eq!(m["annotations"]["dev.kiln.dirty"], "true");
}

#[test]
fn plain_directories_need_an_epoch() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("plain");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("hello.sh"), HELLO_SH).unwrap();
    fs::write(dir.join("kiln.toml"), HELLO_TOML).unwrap();
    let out = kiln()
        .arg("build")
        .arg(&dir)
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--source-date-epoch"));
    let a = build_json(
        &dir,
        &t.path().join("l"),
        &["--source-date-epoch", "1700000000"],
    );
    assert_eq!(a["source"]["revision"], serde_json::Value::Null);
    assert_eq!(a["source"]["epoch"], 1_700_000_000);
    let b = run_ok(
        kiln()
            .arg("build")
            .arg(&dir)
            .arg("--output")
            .arg(t.path().join("l2"))
            .arg("--json")
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    let b: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(a["artifacts"][0]["digest"], b["artifacts"][0]["digest"]);
}

#[test]
fn outputs_are_mapped_checked_and_hostile_ones_rejected() {
    let t = tempfile::tempdir().unwrap();
    // files mappings: a subdirectory to another place, a single file.
    let repo = t.path().join("map");
    let r = Recipe::steps(&[
            "mkdir -p /out/bin /out/share/doc",
            "echo tool > /out/bin/tool",
            "chmod 755 /out/bin/tool",
            "echo readme > /out/share/doc/README",
            "ln -s /etc/passwd /out/escape",
        ]).then("[[artifact]]\nname = \"tool\"\nfiles = [{ from = \"bin\", to = \"/usr/local/bin\" }, { from = \"share/doc/README\", to = \"/README\" }]\n\
         [[artifact]]\nname = \"sneaky\"\nkind = \"files\"\nfiles = [{ from = \"escape/..\", to = \"/\" }]\n").bytes();
    let sha = hello_repo(&repo, "mapping", &r, Some(REMOTE));
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    // "escape/.." normalizes to "." (allowed), so both artifacts build; check the mapping.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = layer_files(&t.path().join("l"), "tool");
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["README", "usr/local/bin/tool"]
    );
    assert_eq!(files["usr/local/bin/tool"], b"tool\n");

    assert!(leftover_containers(&sha).is_empty());

    // Hostile outputs: each refused with an error that says why, and no container left.
    for h in HOSTILE_OUTPUTS {
        let repo = t.path().join(h.name);
        let recipe = Recipe::steps(h.steps).then(h.artifact).bytes();
        let sha = hello_repo(&repo, h.name, &recipe, Some(REMOTE));
        let err = build_fails(&repo, &t.path().join(format!("l-{}", h.name)));
        assert!(!h.says.is_empty(), "{}: says nothing to check", h.name);
        for says in h.says {
            assert!(err.contains(says), "{} ({}): {err}", h.name, h.why);
        }
        assert!(leftover_containers(&sha).is_empty(), "{}", h.name);
    }
}

/// An output a build must refuse.
struct Hostile {
    name: &'static str,
    why: &'static str,
    steps: &'static [&'static str],
    artifact: &'static str,
    /// What the error must say.
    says: &'static [&'static str],
}

const HOSTILE_OUTPUTS: &[Hostile] = &[
    Hostile {
        name: "escape",
        why: "a `from` through a symlink would read the host",
        steps: &["mkdir -p /out", "ln -s /etc /out/etc"],
        artifact: "[[artifact]]\nname = \"e\"\nfiles = [{ from = \"etc/passwd\", to = \"/passwd\" }]\n",
        says: &["symlink"],
    },
    Hostile {
        name: "outlink",
        why: "an output directory replaced by a symlink to the host is not followed",
        steps: &["rm -rf /out", "ln -s /etc /out"],
        artifact: "[[artifact]]\nname = \"o\"\n",
        says: &["symlink", "/out"],
    },
    Hostile {
        name: "stagelink",
        why: "a mapping staged as a symlink is not written through by a later mapping",
        steps: &[
            "mkdir -p /out/real",
            "ln -s /tmp /out/link",
            "echo x > /out/real/f",
        ],
        artifact: "[[artifact]]\nname = \"s\"\nfiles = [{ from = \"link\", to = \"/usr/lib\" }, { from = \"real\", to = \"/usr/lib/app\" }]\n",
        says: &["passes through a symlink"],
    },
    Hostile {
        name: "device",
        // Device nodes cannot even be made (builds run without CAP_MKNOD); a fifo needs no
        // capability.
        why: "special files in the output are rejected by name",
        steps: &["mkdir -p /out", "mkfifo /out/pipe"],
        artifact: "[[artifact]]\nname = \"d\"\n",
        says: &["pipe", "fifo"],
    },
];

#[test]
fn missing_builder_image_says_how_to_provide_it() {
    require_docker();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("noimage");
    let r = b"[build]\nimage = \"kiln-test/not-here:1\"\nsteps = [\"true\"]\n[[artifact]]\nname = \"x\"\n";
    git_repo(&repo, &[("kiln.toml", r)], None);
    let err = build_fails(&repo, &t.path().join("l"));
    assert!(
        err.contains("kiln-test/not-here:1")
            && err.contains("not available")
            && err.contains("docker load"),
        "{err}"
    );
}

#[test]
fn recipe_check_reports_every_problem() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("kiln.toml");
    fs::write(
        &bad,
        "[build]\nsteps = [\"make\"]\ntimeout = \"soon\"\nmystery = 1\n\n[[artifact]]\nname = \"Bad Name\"\nfiles = [{ from = \"../../etc\", to = \"/etc\" }]\n",
    )
    .unwrap();
    let out = kiln()
        .args(["recipe", "check"])
        .arg(t.path())
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "kiln.toml:1: build.image: missing",
        "kiln.toml:3: build.timeout: invalid duration \"soon\"",
        "kiln.toml:4: build.mystery: unknown key",
        "kiln.toml:7: artifact[0].name: invalid name \"Bad Name\"",
        "kiln.toml:8: artifact[0].files[0].from: \"../../etc\" leaves the output directory",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let good = run_ok(
        kiln()
            .args(["recipe", "check"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/kiln.toml")),
    );
    assert!(String::from_utf8_lossy(&good.stderr).contains("ok"));
}

/// A real compiled program, bit for bit: C with gcc in a debootstrap'd Debian builder.
#[test]
fn c_program_is_bit_for_bit_reproducible() {
    let image = builder_image("debian-gcc");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("c");
    let recipe = format!(
        "[build]\nimage = \"{image}\"\nsteps = [\n  \"mkdir -p /out\",\n  \"gcc -O2 -static -ffile-prefix-map=/src=. -o /out/hello hello.c\",\n]\n\
         [[artifact]]\nname = \"hello-c\"\nentrypoint = [\"/hello\"]\n"
    );
    let src = b"#include <stdio.h>\nint main(void) { printf(\"hello from C, built by kiln\\n\"); return 0; }\n";
    let sha = git_repo(
        &repo,
        &[("kiln.toml", recipe.as_bytes()), ("hello.c", src)],
        None,
    );
    let a = build_json(&repo, &t.path().join("a"), &["--load"]);
    let b = build_json(&repo, &t.path().join("b"), &[]);
    assert_eq!(a["artifacts"][0]["digest"], b["artifacts"][0]["digest"]);
    assert_eq!(
        layer_files(&t.path().join("a"), "hello-c")["hello"],
        layer_files(&t.path().join("b"), "hello-c")["hello"]
    );
    let run = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        a["artifacts"][0]["loaded_as"].as_str().unwrap(),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello from C, built by kiln"
    );
    assert!(leftover_containers(&sha).is_empty());
}

/// The build sees the committed bytes, whatever checkout conversions the repository or the
/// host would apply (here: `.gitattributes` asking for CRLF line endings on checkout, which
/// `git archive` would honour).
#[test]
fn the_source_is_the_committed_bytes() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("eol");
    let r = Recipe::steps(&["mkdir -p /out", "cp notes.txt /out/notes.txt"])
        .files("n")
        .bytes();
    builder_image("busybox");
    git_repo(
        &repo,
        &[
            ("kiln.toml", &r),
            (".gitattributes", b"*.txt text eol=crlf\n"),
            ("notes.txt", b"one\ntwo\n"),
        ],
        None,
    );
    build_json(&repo, &t.path().join("l"), &[]);
    assert_eq!(
        layer_files(&t.path().join("l"), "n")["notes.txt"],
        b"one\ntwo\n"
    );
}

/// `kiln build` of `dir` into `layout` with extra environment; its output.
fn build_with_env(dir: &Path, layout: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = kiln();
    c.arg("build").arg(dir).arg("--output").arg(layout);
    for (k, v) in env {
        c.env(k, v);
    }
    c.checked_output().unwrap()
}

#[test]
fn a_git_that_fails_is_an_error_never_a_plain_directory_build() {
    // Dubious ownership: the repository belongs to another user, so git refuses to read it.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test changes a repository's owner: run it as root (as .ci/run does)"
    );
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("dubious");
    hello_repo(&repo, "dubious", HELLO_TOML, Some(REMOTE));
    run_ok(Command::new("chown").args(["-R", "65534:65534"]).arg(&repo));
    let out = build_with_env(&repo, &t.path().join("l"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("dubious ownership"), "{err}");
    assert!(
        !err.contains("source-date-epoch"),
        "fell back to a plain directory: {err}"
    );

    // git missing from PATH: an error that says so, even with an epoch that would allow a
    // plain-directory build.
    let repo = t.path().join("nogit");
    hello_repo(&repo, "nogit", HELLO_TOML, Some(REMOTE));
    let empty = t.path().join("empty-path");
    fs::create_dir(&empty).unwrap();
    let out = build_with_env(
        &repo,
        &t.path().join("l2"),
        &[
            ("PATH", empty.to_str().unwrap()),
            ("SOURCE_DATE_EPOCH", "1"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("git is not installed"), "{err}");
}

#[test]
fn git_variables_of_the_caller_do_not_reach_kilns_git() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("real");
    let sha = hello_repo(&repo, "env-real", HELLO_TOML, Some(REMOTE));
    let other = t.path().join("other");
    let other_sha = git_repo(&other, &[("x.txt", b"other")], None);
    assert_ne!(sha, other_sha);
    // As a git hook would see them: pointing at another repository and index.
    let v = build_json_env(
        &repo,
        &t.path().join("l"),
        &[
            ("GIT_DIR", other.join(".git").to_str().unwrap()),
            ("GIT_WORK_TREE", other.to_str().unwrap()),
            ("GIT_INDEX_FILE", "/nonexistent/index"),
        ],
    );
    assert_eq!(v["source"]["revision"], sha.as_str());
}

fn build_json_env(dir: &Path, layout: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let mut c = kiln();
    c.arg("build")
        .arg(dir)
        .arg("--output")
        .arg(layout)
        .arg("--json");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run_ok(&mut c);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_builds_of_one_commit_at_once_get_their_own_container_and_log() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("twice");
    let r = Recipe::steps(&["sleep 1", "mkdir -p /out && echo same > /out/f"])
        .files("x")
        .bytes();
    hello_repo(&repo, "twice", &r, Some(REMOTE));
    let layout = t.path().join("l");
    let spawn = || {
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(&layout)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let digest = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["artifacts"][0]["digest"].as_str().unwrap().to_owned()
    };
    assert_eq!(digest(&a), digest(&b));
    let logs: Vec<_> = fs::read_dir(layout.join(".kiln/logs")).unwrap().collect();
    assert_eq!(logs.len(), 2, "one log per build");
}

/// One commit from checkouts whose `origin` differs (none, a local path, a `file://` URL, the
/// forge's ssh and https forms) gives one digest: the manifest's source link never names a
/// host's disk, and a forge's remotes share one canonical form. The raw remote goes to the
/// provenance, without credentials.
#[test]
fn the_source_link_does_not_depend_on_the_checkout() {
    require("git");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    hello_repo(
        &repo,
        "the_source_link_does_not_depend_on_the_checkout",
        HELLO_TOML,
        None,
    );
    let clone = |name: &str, origin: Option<&str>| {
        let dir = t.path().join(name);
        run_ok(
            Command::new("git")
                .args(["clone", "-q"])
                .arg(&repo)
                .arg(&dir),
        );
        if let Some(o) = origin {
            git(&dir, &["remote", "set-url", "origin", o]);
        }
        dir
    };
    let digest = |dir: &Path, extra: &[&str]| {
        let layout = t.path().join(format!(
            "layout-{}",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let v = build_json(dir, &layout, extra);
        let d = v["artifacts"][0]["digest"].as_str().unwrap().to_owned();
        (d, v["source"].clone(), layout)
    };
    let (unlinked, none, _) = digest(&repo, &[]);
    assert_eq!(none["url"], serde_json::Value::Null);
    let local = clone("local", None);
    let (d, info, layout) = digest(&local, &[]);
    assert_eq!(d, unlinked, "a clone whose origin is a local path");
    assert_eq!(info["url"], serde_json::Value::Null);
    assert_eq!(info["remote"], repo.display().to_string(), "the raw remote");
    let st = provenance_statement(&layout, "hello");
    let ext = &st["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(ext["remote"], repo.display().to_string());
    assert_eq!(ext["source"], serde_json::Value::Null);
    let file_url = format!("file://{}", repo.display());
    let (d, _, _) = digest(&clone("file", Some(&file_url)), &[]);
    assert_eq!(d, unlinked, "a clone whose origin is a file:// URL");

    let ssh = clone("ssh", Some("git@github.com:acme/hello.git"));
    let (linked, info, layout) = digest(&ssh, &[]);
    assert_eq!(info["url"], "https://github.com/acme/hello");
    let ext = provenance_statement(&layout, "hello")["predicate"]["buildDefinition"]
        ["externalParameters"]
        .clone();
    assert_eq!(ext["remote"], "git@github.com:acme/hello.git");
    assert_eq!(ext["source"], "https://github.com/acme/hello");
    let https = clone(
        "https",
        Some("https://x-access-token:ghs_not_recorded@github.com/acme/hello.git"),
    );
    let (d, info, layout) = digest(&https, &[]);
    assert_eq!(d, linked, "the https form, with a token in it");
    assert_eq!(info["remote"], "https://github.com/acme/hello.git");
    let blobs = std::fs::read_dir(layout.join("blobs/sha256")).unwrap();
    for b in blobs {
        let bytes = std::fs::read(b.unwrap().path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("ghs_not_recorded"),
            "the token reached the layout"
        );
    }
    let (d, _, _) = digest(&local, &["--source-url", "https://github.com/acme/hello"]);
    assert_eq!(d, linked, "a local clone with its link given");
    let out = kiln()
        .arg("build")
        .arg(&local)
        .args(["--source-url", "/srv/git/hello", "--output"])
        .arg(t.path().join("refused"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--source-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
