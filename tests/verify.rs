//! `kiln verify`, `kiln build --verify` and the daemon's `verify`: rebuilding from the
//! provenance alone through a real registry, with the source served by `git daemon`, and the
//! determinism holes that closes.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::daemon::{Daemon, has, metric};
use common::forge::{FakeGitHub, terminal_statuses};
use common::net::Registry;
use common::recipe::*;
use common::*;

/// A repository served by `git daemon` (its `origin`, so provenance records that URL).
fn served_repo(
    gh: &FakeGitHub,
    full: &str,
    files: &[(&str, &[u8])],
) -> (std::path::PathBuf, String) {
    let sha = gh.create(full, files);
    let dir = gh.dir(full);
    git(
        &dir,
        &["remote", "add", "origin", &format!("{}/{full}", gh.git_url)],
    );
    (dir, sha)
}

/// `kiln build DIR --push REG/acme --json [extra]`: the artifact digests by name.
fn build_push(dir: &Path, layout: &Path, reg: &str, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(dir)
            .arg("--output")
            .arg(layout)
            .arg("--push")
            .arg(format!("{reg}/acme"))
            .arg("--json")
            .args(extra),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify(reference: &str, extra: &[&str]) -> Output {
    kiln()
        .arg("verify")
        .arg(reference)
        .args(extra)
        .checked_output()
        .unwrap()
}

/// The output of a command that may exit non-zero (`kiln trust` refusing), secrets checked.
fn run_ok_or(cmd: &mut Command) -> Output {
    cmd.checked_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_reproducible_build_verifies_from_its_provenance_alone() {
    builder_image("busybox");
    let gh = FakeGitHub::start(None);
    let (dir, sha) = served_repo(
        &gh,
        "acme/hello",
        &[("hello.sh", HELLO_SH), ("kiln.toml", HELLO_TOML)],
    );
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let built = build_push(&dir, &t.path().join("l"), &reg.addr, &[]);
    assert_eq!(
        built["source"]["url"],
        format!("{}/acme/hello", gh.git_url),
        "provenance records the served URL"
    );
    // The work tree is gone: verify has only the registry and the URL it recorded.
    std::fs::remove_dir_all(t.path().join("l")).unwrap();
    let out = verify(&format!("{}/acme/hello:{sha}", reg.addr), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["identical"], true);
    assert_eq!(
        report["comparison"]["expected"],
        built["artifacts"][0]["digest"]
    );
    assert_eq!(
        report["comparison"]["rebuilt"],
        built["artifacts"][0]["digest"]
    );
    assert_eq!(report["recorded"]["revision"], sha.as_str());
    // The SBOM is rebuilt and compared too.
    assert_eq!(
        report["sbom"]["expected"],
        built["artifacts"][0]["sbom"]["digest"]
    );
    assert_eq!(report["sbom"]["identical"], true);
    let out = verify(&format!("{}/acme/hello:{sha}", reg.addr), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("IDENTICAL"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_sbom_that_differs_under_identical_layers_is_reported_as_a_kiln_bug() {
    builder_image("busybox");
    let gh = FakeGitHub::start(None);
    let (dir, _) = served_repo(
        &gh,
        "acme/hello",
        &[("hello.sh", HELLO_SH), ("kiln.toml", HELLO_TOML)],
    );
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    build_push(&dir, &l, &reg.addr, &[]);
    // A newer provenance of the same build that records another SBOM: the rebuild's layers
    // match, its SBOM cannot.
    let layout = kiln::store::OciLayout::open(&l).unwrap();
    let desc = kiln::store::ContentStore::resolve(&layout, "hello")
        .unwrap()
        .unwrap();
    let subject: kiln::Digest = desc.digest().as_ref().parse().unwrap();
    let mut st = statement_of(&layout, &subject);
    let other = kiln::Digest::of(b"another SBOM");
    for b in st["predicate"]["runDetails"]["byproducts"]
        .as_array_mut()
        .unwrap()
    {
        if b["name"] == "sbom" {
            b["digest"]["sha256"] = other.hex().into();
        }
    }
    st["predicate"]["runDetails"]["metadata"]["finishedOn"] = "2099-01-01T00:00:00Z".into();
    kiln::attest::attach(&layout, &desc, &st, 4_070_908_800, None).unwrap();
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:hello", l.display()))
            .arg(format!("{}/acme/sbombug:t", reg.addr)),
    );
    let out = verify(&format!("{}/acme/sbombug:t", reg.addr), &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["comparison"]["identical"], true, "the layers match");
    assert_eq!(report["identical"], false);
    assert_eq!(report["sbom"]["expected"], other.to_string());
    assert_eq!(report["sbom"]["kiln_bug"], true);
    let out = verify(&format!("{}/acme/sbombug:t", reg.addr), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("DIFFERENT SBOM") && text(&out).contains("This is a kiln bug"),
        "{}",
        text(&out)
    );

    // The same record from another kiln version: its SBOM is shown, not compared (that kiln
    // may detect other packages, and names itself in the document); the layers still are.
    st["predicate"]["runDetails"]["builder"]["version"]["kiln"] = "0.0.9".into();
    st["predicate"]["runDetails"]["metadata"]["finishedOn"] = "2099-01-02T00:00:00Z".into();
    kiln::attest::attach(&layout, &desc, &st, 4_070_995_200, None).unwrap();
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:hello", l.display()))
            .arg(format!("{}/acme/olderkiln:t", reg.addr)),
    );
    let out = verify(&format!("{}/acme/olderkiln:t", reg.addr), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["identical"], true);
    assert_eq!(report["sbom"]["comparable"], false);
    assert_eq!(report["sbom"]["kiln_bug"], false);
    let out = verify(&format!("{}/acme/olderkiln:t", reg.addr), &[]);
    assert!(
        text(&out).contains("made by another kiln version, not compared"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_random_file_fails_verify_and_is_the_only_path_named() {
    builder_image("busybox");
    let gh = FakeGitHub::start(None);
    let recipe = Recipe::steps(&[
        "mkdir -p /out/data",
        "cat /proc/sys/kernel/random/uuid > /out/data/random",
        "dd if=/dev/zero of=/out/data/big bs=1M count=24 2>/dev/null",
        "echo unchanged > /out/data/same",
    ])
    .files("rnd")
    .bytes();
    let (dir, sha) = served_repo(&gh, "acme/rnd", &[("kiln.toml", &recipe)]);
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    build_push(&dir, &t.path().join("l"), &reg.addr, &[]);
    let keep = t.path().join("keep");
    let out = verify(
        &format!("{}/acme/rnd:{sha}", reg.addr),
        &["--json", "--keep", keep.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["identical"], false);
    let paths: Vec<&serde_json::Value> = report["comparison"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["paths"].as_array().unwrap())
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(paths[0]["path"], "data/random");
    assert_eq!(paths[0]["kind"], "content");
    assert_eq!(paths[0]["expected"]["size"], 37);
    assert_ne!(
        paths[0]["expected"]["sha256"],
        paths[0]["rebuilt"]["sha256"]
    );
    // Both trees are kept; the large unchanged file is there, not listed.
    assert_ne!(
        std::fs::read(keep.join("expected/data/random")).unwrap(),
        std::fs::read(keep.join("rebuilt/data/random")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(keep.join("rebuilt/data/big"))
            .unwrap()
            .len(),
        24 << 20
    );
    // A rebuilder that attests: a signed FAILED verdict, with the number of differing paths.
    let key = common::attest::TestKey::generate(&t.path().join("rebuilder"), "ed25519");
    let reference = format!("{}/acme/rnd:{sha}", reg.addr);
    let out = verify(
        &reference,
        &[
            "--attest",
            "--verifier-id",
            "kiln://rebuilder",
            "--sign-key",
            key.private.to_str().unwrap(),
        ],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(shown.contains("pushed a signed verdict"), "{shown}");
    let trust = run_ok_or(
        kiln()
            .args(["trust", &reference, "--json", "--key"])
            .arg(&key.public)
            .arg("--rebuilt-by")
            .arg(&key.public),
    );
    let v: serde_json::Value = serde_json::from_slice(&trust.stdout).unwrap();
    let vsa = common::attest::attestation_of(&v, "vsa");
    assert_eq!(vsa["verdict"]["result"], "FAILED");
    assert_eq!(vsa["verdict"]["differing_paths"], 1);
    assert_eq!(vsa["verdict"]["verifier"], "kiln://rebuilder");
    assert_eq!(vsa["signature"]["keyids"][0], key.keyid.as_str());
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "failed-verdict"),
        "{v}"
    );
    assert!(
        shown.contains("DIFFERENT: 1 path differs: data/random"),
        "{shown}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("data/big"),
        "{shown}"
    );
}

#[test]
fn build_verify_fails_before_anything_is_pushed() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("r");
    let recipe = Recipe::steps(&[
        "mkdir -p /out",
        "cat /proc/sys/kernel/random/uuid > /out/random",
    ])
    .files("nopush")
    .bytes();
    git_repo(&repo, &[("kiln.toml", &recipe)], None);
    let reg = Registry::start();
    let layout = t.path().join("l");
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(&layout)
        .arg("--verify")
        .arg("--push")
        .arg(format!("{}/acme", reg.addr))
        .checked_output()
        .unwrap();
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("not reproducible: nopush: 1 path differs: random"),
        "{shown}"
    );
    assert!(shown.contains("content       random"), "{shown}");
    let log = reg.log();
    assert!(
        !log.contains("/v2/acme/nopush/blobs/uploads"),
        "something was uploaded: {log}"
    );
    // Nothing stored either: the output layout has no artifact, and the two scratch builds
    // are gone.
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(!index.contains("nopush"), "{index}");
    let scratch: Vec<_> = std::fs::read_dir(layout.join(".kiln/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(scratch.is_empty(), "left behind: {scratch:?}");
    let blobs = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs were stored before the comparison");

    // A reproducible recipe passes the same check, and is stored.
    let repo2 = t.path().join("r2");
    let stable = Recipe::steps(&["mkdir -p /out", "echo stable > /out/f"])
        .files("stable")
        .bytes();
    git_repo(&repo2, &[("kiln.toml", &stable)], None);
    let out = kiln()
        .arg("build")
        .arg(&repo2)
        .arg("--output")
        .arg(&layout)
        .arg("--verify")
        .checked_output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    validate(&layout);
    assert!(
        std::fs::read_to_string(layout.join("index.json"))
            .unwrap()
            .contains("stable")
    );
}

#[test]
fn a_mode_only_difference_is_classified_metadata_only() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("r");
    // The exec bit follows a random hex digit: two builds differ in it half of the time.
    let recipe = Recipe::steps(&[
        "mkdir -p /out && echo same > /out/tool",
        "case $(head -c1 /proc/sys/kernel/random/uuid) in [0-7]) chmod 755 /out/tool;; esac",
    ])
    .files("modes")
    .bytes();
    git_repo(&repo, &[("kiln.toml", &recipe)], None);
    for attempt in 0..16 {
        let out = kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(t.path().join(format!("l{attempt}")))
            .arg("--verify")
            .checked_output()
            .unwrap();
        if out.status.success() {
            continue; // the two coin flips agreed: try again
        }
        let shown = text(&out);
        assert!(shown.contains("metadata only tool: mode"), "{shown}");
        assert!(!shown.contains("content       tool"), "{shown}");
        return;
    }
    panic!("16 pairs of builds never differed in a random bit");
}

#[test]
fn what_cannot_be_verified_exits_2_with_the_reason() {
    builder_image("busybox");
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();

    // No provenance: pushed with kiln push from a kiln pack layout.
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    pack(&tree, &t.path().join("packed"), &["--tag", "t"]);
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:t", t.path().join("packed").display()))
            .arg(format!("{}/acme/noprov:t", reg.addr)),
    );
    let out = verify(&format!("{}/acme/noprov:t", reg.addr), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no kiln provenance"), "{}", text(&out));

    // The recorded source is unreachable.
    let repo = t.path().join("gone");
    let recipe = Recipe::steps(&["mkdir -p /out && echo x > /out/x"])
        .files("gone")
        .bytes();
    let sha = git_repo(
        &repo,
        &[("kiln.toml", &recipe)],
        Some("git://127.0.0.1:1/nowhere"),
    );
    build_push(&repo, &t.path().join("l1"), &reg.addr, &[]);
    let out = verify(&format!("{}/acme/gone:{sha}", reg.addr), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot be fetched"), "{}", text(&out));

    // The builder image is missing, then another image under its name.
    require("busybox");
    let gh = FakeGitHub::start(None);
    let builder = format!("kiln-test/verify-builder:{}", std::process::id());
    run_ok(Command::new("docker").args(["tag", "kiln-builder/busybox:latest", &builder]));
    let recipe = Recipe::steps(&["mkdir -p /out && echo b > /out/b"])
        .image(&builder)
        .files("builder")
        .bytes();
    let (dir, sha) = served_repo(&gh, "acme/builder", &[("kiln.toml", &recipe)]);
    build_push(&dir, &t.path().join("l2"), &reg.addr, &[]);
    let reference = format!("{}/acme/builder:{sha}", reg.addr);
    run_ok(Command::new("docker").args(["rmi", &builder]));
    let out = verify(&reference, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is not available here"),
        "{}",
        text(&out)
    );
    let other = t.path().join("other-rootfs");
    std::fs::create_dir_all(other.join("bin")).unwrap();
    std::fs::copy(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .checked_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap(),
        other.join("bin/sh"),
    )
    .unwrap();
    std::fs::write(other.join("another-file"), b"not the same image").unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&other)
        .args(["-cf", "-", "."])
        .checked_output()
        .unwrap();
    let mut import = Command::new("docker")
        .args(["import", "-", &builder])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());
    let out = verify(&reference, &[]);
    let _ = Command::new("docker")
        .args(["rmi", &builder])
        .checked_output();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("a rebuild on another builder proves nothing"),
        "{}",
        text(&out)
    );

    // A compressor this kiln does not have: the provenance says another zlib-rs.
    let layout = kiln::store::OciLayout::open(t.path().join("l1")).unwrap();
    let desc = kiln::store::ContentStore::resolve(&layout, "gone")
        .unwrap()
        .unwrap();
    let subject: kiln::Digest = desc.digest().as_ref().parse().unwrap();
    let mut st = statement_of(&layout, &subject);
    st["predicate"]["buildDefinition"]["internalParameters"]["compressor"] =
        "gzip level 6, 128 KiB parallel blocks, zlib-rs 0.0.1".into();
    kiln::attest::attach(&layout, &desc, &st, 1, None).unwrap();
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:gone", t.path().join("l1").display()))
            .arg(format!("{}/acme/tampered:t", reg.addr)),
    );
    let out = verify(&format!("{}/acme/tampered:t", reg.addr), &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("zlib-rs 0.0.1"), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
}

/// The provenance statement attached to `subject` in a layout (beside its SBOM).
fn statement_of(layout: &kiln::store::OciLayout, subject: &kiln::Digest) -> serde_json::Value {
    let r = layout.referrers(subject).unwrap();
    let prov = r
        .iter()
        .find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get("in-toto.io/predicate-type"))
                .is_some_and(|p| p == "https://slsa.dev/provenance/v1")
        })
        .expect("a provenance referrer");
    let m: serde_json::Value = serde_json::from_slice(
        &layout
            .read_blob(&prov.digest().as_ref().parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    serde_json::from_slice(&layout.read_blob(&layer).unwrap()).unwrap()
}

#[test]
fn the_build_sees_a_fixed_world_and_the_builder_is_named_by_content() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("world");
    let recipe = Recipe::steps(&[
        "mkdir -p /out",
        "hostname > /out/hostname",
        "umask > /out/umask",
        "date +%Z > /out/tz",
        "cat /etc/hosts > /out/hosts",
        "cat /etc/resolv.conf > /out/resolv",
        "touch /out/made && stat -c %a /out/made > /out/made-mode",
    ])
    .files("world")
    .bytes();
    git_repo(&repo, &[("kiln.toml", &recipe)], None);
    let layout = t.path().join("l");
    run_ok(kiln().arg("build").arg(&repo).arg("--output").arg(&layout));
    let files = layer_files(&layout, "world");
    let get = |f: &str| String::from_utf8_lossy(&files[f]).trim().to_owned();
    assert_eq!(get("hostname"), "kiln");
    assert_eq!(get("umask"), "0022");
    assert_eq!(get("tz"), "UTC");
    assert_eq!(get("made-mode"), "644");
    // Offline (network disabled), the host's resolver does not show either.
    assert_eq!(get("resolv"), "", "resolv.conf leaks the host's resolver");
    for l in get("hosts").lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.split_whitespace()
                .nth(1)
                .is_some_and(|h| h.starts_with("localhost") || h.starts_with("ip6-")),
            "/etc/hosts names more than localhost: {l}"
        );
    }

    // The builder digest is the image's content, not the engine's image ID.
    let l = kiln::store::OciLayout::open(&layout).unwrap();
    let desc = kiln::store::ContentStore::resolve(&l, "world")
        .unwrap()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &l.read_blob(&desc.digest().as_ref().parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let recorded = m["annotations"]["dev.kiln.builder.digest"]
        .as_str()
        .unwrap();
    let inspect =
        run_ok(Command::new("docker").args(["image", "inspect", "kiln-builder/busybox:latest"]));
    let i: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let i = &i[0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let expected = kiln::runner::content_digest(
        &strings(&i["RootFS"]["Layers"]),
        &strings(&i["Config"]["Env"]),
        i["Config"]["User"].as_str().unwrap_or(""),
        i["Config"]["WorkingDir"].as_str().unwrap_or(""),
        i["Os"].as_str().unwrap_or(""),
        i["Architecture"].as_str().unwrap_or(""),
        i["Variant"].as_str().unwrap_or(""),
    );
    assert_eq!(recorded, expected);
    assert_ne!(
        recorded,
        i["Id"].as_str().unwrap(),
        "the engine's ID is engine-specific"
    );
    let st = statement_of(&l, &desc.digest().as_ref().parse().unwrap());
    let builder = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "builder")
        .unwrap()
        .clone();
    assert_eq!(
        format!("sha256:{}", builder["digest"]["sha256"].as_str().unwrap()),
        expected
    );
}

#[test]
fn the_daemon_reports_a_build_that_is_not_reproducible() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let recipe = Recipe::steps(&[
        "mkdir -p /out",
        "cat /proc/sys/kernel/random/uuid > /out/random",
    ])
    .files("flaky")
    .bytes();
    let sha = gh.create("acme/flaky", &[("kiln.toml", &recipe)]);
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("token"), GITHUB_TOKEN).unwrap();
    let body = format!(
        "verify = \"always\"\n[github]\napi_url = \"{}\"\ntoken_file = \"{}\"\npoll_interval = \"1s\"\n[[repo]]\ngithub = \"acme/flaky\"\n",
        gh.api_url,
        t.path().join("token").display()
    );
    let d = Daemon::start(t.path(), &body, "trace", &[]);
    let builds = d.wait_builds("the checked build", Duration::from_secs(120), |b| {
        has(b, &sha, "failure")
    });
    assert!(
        builds[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("not reproducible: flaky: 1 path differs: random"),
        "{builds:?}"
    );
    assert!(
        builds[0]["artifacts"].as_array().unwrap().is_empty(),
        "nothing was published"
    );
    assert_eq!(
        metric(
            &d.metrics(),
            "kiln_builds_unreproducible_total{cause=\"build\"}"
        ),
        Some(1.0)
    );
    let log = common::daemon::get(&format!(
        "{}/builds/{}/log",
        d.url,
        builds[0]["id"].as_str().unwrap()
    ))
    .1;
    assert!(log.contains("content       random"), "{log}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = terminal_statuses(&gh.statuses(), &sha);
        if let Some(s) = t.get("kiln/flaky") {
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].state, "failure");
            assert!(
                s[0].description.starts_with("not reproducible: flaky"),
                "{s:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no terminal status");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!d.state_dir.join("layout/flaky").exists());
}
