//! Reproducibility under variation, in the spirit of reproducible-builds.org's `reprotest`:
//! one commit built twice, the second time varying everything kiln claims does not matter,
//! must give the same digests. The recipe compiles C with gcc and writes what would leak the
//! host into its output (hostname, umask, time zone, a date).
//!
//! Varied for the second build: the wall clock (faketime), umask, locale and TZ, the checkout
//! path and the layout path, the order files were created on disk, the host's hostname (a UTS
//! namespace), RUST_LOG, and the CPUs kiln may use (taskset). Not varied: the user running
//! kiln (it must reach the Docker socket as root here) and the kernel.

mod common;

use std::process::Command;

use common::*;

const HELLO_C: &[u8] = br#"#include <stdio.h>
int main(void) {
    /* gcc takes __DATE__ and __TIME__ from SOURCE_DATE_EPOCH. */
    printf("hello from C, compiled %s %s\n", __DATE__, __TIME__);
    return 0;
}
"#;

const RECIPE: &[u8] = br#"[build]
image = "kiln-builder/debian-gcc:bookworm"
steps = [
  "mkdir -p /out/bin /out/info",
  "gcc -O2 -static -o /out/bin/hello hello.c",
  "hostname > /out/info/hostname",
  "umask > /out/info/umask",
  "date +%Z > /out/info/tz",
  # The recipe's own dates come from SOURCE_DATE_EPOCH, not the clock.
  "date -u -d @$SOURCE_DATE_EPOCH +%Y-%m-%dT%H:%M:%SZ > /out/info/built",
  "ls /src > /out/info/listing",
]
timeout = "10m"

[[artifact]]
name = "hello-c"
kind = "image"
entrypoint = ["/bin/hello"]

[[artifact]]
name = "hello-c-info"
kind = "files"
files = [{ from = "info", to = "/" }]
"#;

/// Each artifact's name, manifest digest and SBOM digest.
fn digests(out: &std::process::Output) -> Vec<(String, String, String)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["digest"].as_str().unwrap().to_owned(),
                // The SBOM too: the same content gives the same SBOM, byte for byte.
                a["sbom"]["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn one_commit_gives_the_same_digests_whatever_kiln_cannot_control_varies() {
    for tool in ["faketime", "unshare", "taskset", "git"] {
        require(tool);
    }
    builder_image("debian-gcc");
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a/checkout");
    let files: Vec<(String, Vec<u8>)> = [
        ("hello.c".to_owned(), HELLO_C.to_vec()),
        ("kiln.toml".to_owned(), RECIPE.to_vec()),
    ]
    .into_iter()
    .chain((0..12).map(|i| {
        (
            format!("data/file-{i:02}.txt"),
            format!("{i}\n").into_bytes(),
        )
    }))
    .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let origin = "https://github.com/acme/reprotest";
    let sha = git_repo(&a, &refs, Some(origin));

    // The same commit elsewhere, its files created on disk in the reverse order.
    let b = t.path().join("elsewhere/deeper/clone-b");
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--no-checkout"])
            .arg(&a)
            .arg(&b),
    );
    let mut paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    paths.reverse();
    for p in paths {
        git(&b, &["checkout", "HEAD", "--", p]);
    }
    assert_eq!(git(&b, &["rev-parse", "HEAD"]), sha);
    // The source link is part of the artifact (an annotation): the same repository, as a
    // host whose clone uses ssh names it.
    git(
        &b,
        &[
            "remote",
            "set-url",
            "origin",
            "git@github.com:acme/reprotest.git",
        ],
    );
    // A third checkout: a plain clone of the first, its origin a local path, which names
    // no repository: the link comes from --source-url.
    let c = t.path().join("third/clone-c");
    run_ok(Command::new("git").args(["clone", "-q"]).arg(&a).arg(&c));
    std::fs::write(b.join("untracked-noise.txt"), "not committed").unwrap();

    let first = kiln()
        .arg("build")
        .arg(&a)
        .arg("--output")
        .arg(t.path().join("layout-a"))
        .arg("--json")
        .checked_output()
        .unwrap();
    let first = digests(&first);

    let layout_b = t.path().join("other/place/layout-b");
    let script = format!(
        "hostname reprotest-host-b && umask 077 && exec taskset -c 0 faketime '2031-02-03 04:05:06' \
         env TZ=Pacific/Auckland LANG=fr_FR.UTF-8 LC_ALL=fr_FR.UTF-8 RUST_LOG=trace \
         {} build {} --output {} --json",
        env!("CARGO_BIN_EXE_kiln"),
        b.display(),
        layout_b.display()
    );
    let second = Command::new("unshare")
        .args(["--uts", "sh", "-c", &script])
        .env_remove("SOURCE_DATE_EPOCH")
        .checked_output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("TRACE")
            || String::from_utf8_lossy(&second.stderr).contains("DEBUG"),
        "RUST_LOG=trace took effect"
    );
    let second = digests(&second);
    assert_eq!(first, second, "the varied build differs");
    let third = kiln()
        .arg("build")
        .arg(&c)
        .args(["--source-url", origin, "--json", "--output"])
        .arg(t.path().join("layout-c"))
        .checked_output()
        .unwrap();
    assert_eq!(
        first,
        digests(&third),
        "a clone with a local-path remote, its link given"
    );

    // What the build saw of the host: kiln's fixed world, and the recipe's own date.
    let info = layer_files(&layout_b, "hello-c-info");
    let get = |f: &str| String::from_utf8_lossy(&info[f]).trim().to_owned();
    assert_eq!(get("hostname"), "kiln");
    assert_eq!(get("umask"), "0022");
    assert_eq!(get("tz"), "UTC");
    assert_eq!(get("built"), "2024-01-02T03:04:05Z");
    assert!(!get("listing").contains("untracked-noise"));
    validate(&layout_b);
}
