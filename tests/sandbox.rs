//! The host decides, not the commit: limits a recipe cannot raise, no network unless the host
//! allows it, a reduced capability set, and a committed tree that cannot write outside its
//! directory. Each limit is checked from inside a real build container.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::recipe::*;
use common::*;

/// A repository holding `recipe`, built with `args`; the output and the layout.
fn build(name: &str, recipe: &[u8], args: &[&str]) -> (Output, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let repo = recipe_repo(t.path(), name, recipe);
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .args(args)
        .checked_output()
        .unwrap();
    (out, t)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file of the artifact `out` in `layout` (or in `layout/out`, the daemon's layout).
fn file(layout: &Path, name: &str) -> String {
    let l = if layout.join("out/oci-layout").exists() {
        layout.join("out")
    } else {
        layout.to_owned()
    };
    let tag = if l == layout { "out" } else { "main" };
    String::from_utf8_lossy(&layer_files(&l, tag)[name])
        .trim()
        .to_owned()
}

#[test]
fn limits_are_visible_inside_the_build_and_a_recipe_cannot_raise_them() {
    // cgroup v1 here; v2 elsewhere.
    let r = Recipe::steps(&[
            "mkdir -p /out",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null > /out/memory || cat /sys/fs/cgroup/memory.max > /out/memory",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null > /out/pids || cat /sys/fs/cgroup/pids.max > /out/pids",
            "grep CapEff /proc/self/status | tr -d ' \\t' > /out/capeff",
        ]).build(// The recipe asks for more than the host allows.
        "memory = \"2g\"\ncpus = 64").files("out").bytes();
    let (out, t) = build(
        "limits",
        &r,
        &[
            "--limit-memory",
            "256m",
            "--limit-pids",
            "100",
            "--limit-cpus",
            "1",
        ],
    );
    ok(&out);
    let l = t.path().join("l");
    assert_eq!(file(&l, "memory"), (256u64 << 20).to_string());
    assert_eq!(file(&l, "pids"), "100");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID: bits 0,1,3,4,5,6,7. Docker's
    // default set (with NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP, SYS_CHROOT, ...) is a80425fb.
    assert_eq!(file(&l, "capeff"), "CapEff:00000000000000fb");

    // Without flags, the defaults still apply: never unlimited.
    let (out, t) = build("defaults", &r, &[]);
    ok(&out);
    let l = t.path().join("l");
    assert_eq!(file(&l, "pids"), "4096");
    let mem: u64 = file(&l, "memory").parse().unwrap();
    assert!(
        mem <= 2 << 30,
        "the recipe's 2g is honoured when it asks for less"
    );
}

#[test]
fn the_network_is_the_hosts_decision() {
    let r = Recipe::steps(&[
        "mkdir -p /out",
        "ls /sys/class/net > /out/interfaces",
        "cat /etc/hosts > /out/hosts",
    ])
    .build("network = true")
    .files("out")
    .bytes();
    let (out, _t) = build("network", &r, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("which this host does not allow"), "{err}");
    assert!(err.contains("--allow-network"), "{err}");
    let (out, t) = build("network-allowed", &r, &["--allow-network"]);
    ok(&out);
    let l = t.path().join("l");
    assert!(file(&l, "interfaces").contains("eth0"));
    // With a network too, /etc/hosts names localhost only (not the container's address).
    for line in file(&l, "hosts").lines().filter(|l| !l.trim().is_empty()) {
        let name = line.split_whitespace().nth(1).unwrap_or("");
        assert!(name == "localhost", "/etc/hosts: {line}");
    }
}

#[test]
fn a_build_is_contained() {
    let r = Recipe::steps(&[
            "mkdir -p /out",
            // No raw sockets, no device nodes, no Docker socket, no network.
            "mknod /out/dev-null c 1 3 2>/dev/null && echo made > /out/mknod || echo refused > /out/mknod",
            "ls /var/run/docker.sock /run/docker.sock 2>/dev/null > /out/socket; true",
            "ls /sys/class/net > /out/interfaces",
            "wget -q -T 2 -O /dev/null http://1.1.1.1/ 2>/dev/null && echo reached > /out/net || echo unreachable > /out/net",
            // A fork bomb stops at the pids limit instead of taking the host down.
            "sh -c 'i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done' 2>/out/forks; killall sleep 2>/dev/null; true",
        ]).files("out").bytes();
    let (out, t) = build("contained", &r, &["--limit-pids", "50"]);
    ok(&out);
    let l = t.path().join("l");
    assert_eq!(file(&l, "mknod"), "refused");
    assert_eq!(file(&l, "socket"), "");
    assert_eq!(file(&l, "interfaces"), "lo");
    assert_eq!(file(&l, "net"), "unreachable");
    let forks = file(&l, "forks");
    assert!(
        forks.contains("can't fork") || forks.contains("Resource temporarily unavailable"),
        "the pids limit did not bite: {forks}"
    );
}

#[test]
fn the_log_stops_at_its_limit_and_the_output_fails_at_its_limit() {
    // 8 MiB printed; the log keeps 1 MiB and says so once; the build goes on.
    let r = Recipe::steps(&[
        "mkdir -p /out && echo done > /out/f",
        "dd if=/dev/zero bs=1024 count=8192 2>/dev/null | tr '\\\\0' 'x'",
        "echo after-the-flood",
    ])
    .files("out")
    .bytes();
    let (out, t) = build("log", &r, &["--limit-log", "1m"]);
    ok(&out);
    let logs: Vec<_> = std::fs::read_dir(t.path().join("l/.kiln/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log.len() < (1 << 20) + 4096, "log of {} bytes", log.len());
    assert_eq!(
        log.matches("reached its limit").count(),
        1,
        "one marker line"
    );
    // Step command lines are still logged; their output past the limit is not.
    assert!(log.contains("$ echo after-the-flood"));
    assert!(
        !log.lines().any(|l| l == "after-the-flood"),
        "output past the limit was logged"
    );

    // 3 MiB of output against a 1 MiB limit: a clear failure, nothing packed.
    let r =
        Recipe::steps(&["mkdir -p /out && dd if=/dev/zero of=/out/big bs=1M count=3 2>/dev/null"])
            .files("out")
            .bytes();
    let (out, t) = build("output", &r, &["--limit-output", "1m"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("exceeds the host's limit of 1048576 bytes"),
        "{err}"
    );
    let index = std::fs::read_to_string(t.path().join("l/index.json")).unwrap();
    assert!(!index.contains("\"out\""), "{index}");
}

#[test]
fn a_committed_tree_cannot_write_outside_or_swap_its_recipe() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    // A kiln.toml that is a symlink is refused.
    let repo = t.path().join("symlinked");
    git_repo(
        &repo,
        &[(
            "real.toml",
            &Recipe::steps(&["mkdir -p /out"]).files("out").bytes(),
        )],
        None,
    );
    std::os::unix::fs::symlink("real.toml", repo.join("kiln.toml")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "symlinked recipe"]);
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l"))
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("kiln.toml is a symlink"),
        "{}",
        stderr(&out)
    );

    // A crafted tree: a symlink "a" to a file outside, then a file "a" (git mktree accepts
    // both). Extracting it must not write through the symlink.
    let outside = t.path().join("outside-target");
    std::fs::write(&outside, "untouched").unwrap();
    let repo = t.path().join("crafted");
    git_repo(
        &repo,
        &[(
            "kiln.toml",
            &Recipe::steps(&["mkdir -p /out"]).files("out").bytes(),
        )],
        None,
    );
    let hash = |data: &str| {
        let mut c = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), data.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    let link = hash(outside.to_str().unwrap());
    let payload = hash("overwritten by the tree");
    let recipe_blob = git(&repo, &["rev-parse", "HEAD:kiln.toml"]);
    let listing = format!(
        "120000 blob {link}\ta\n100644 blob {payload}\ta\n100644 blob {recipe_blob}\tkiln.toml\n"
    );
    let mut mk = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .arg("mktree")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut mk.stdin.take().unwrap(), listing.as_bytes()).unwrap();
    let tree = String::from_utf8(mk.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let commit = git(&repo, &["commit-tree", &tree, "-m", "crafted"]);
    git(&repo, &["reset", "-q", "--hard", &commit]);
    let out = kiln()
        .arg("build")
        .arg(&repo)
        .arg("--output")
        .arg(t.path().join("l2"))
        .checked_output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched");
}

#[test]
fn the_daemon_applies_its_limits_and_allows_the_network_per_repo() {
    use common::daemon::{Daemon, has};
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let r = Recipe::steps(&[
            "mkdir -p /out",
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null > /out/pids || cat /sys/fs/cgroup/pids.max > /out/pids",
        ]).build("network = true").files("out").bytes();
    let closed = t.path().join("closed");
    let sha_closed = git_repo(&closed, &[("kiln.toml", &r), ("marker", b"closed")], None);
    let open = t.path().join("open");
    let sha_open = git_repo(&open, &[("kiln.toml", &r), ("marker", b"open")], None);
    let body = format!(
        "[limits]\npids = 77\nmemory = \"300m\"\n\n[[repo]]\npath = \"{}\"\n\n[[repo]]\npath = \"{}\"\nallow_network = true\n",
        closed.display(),
        open.display()
    );
    let dir = t.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let d = Daemon::start(&dir, &body, "trace", &[]);
    let builds = d.wait_builds("both builds", std::time::Duration::from_secs(120), |b| {
        has(b, &sha_closed, "failure") && has(b, &sha_open, "success")
    });
    let failed = builds
        .iter()
        .find(|b| b["commit"] == sha_closed.as_str())
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("which this host does not allow"),
        "{failed}"
    );
    assert_eq!(file(&d.state_dir.join("layout"), "pids"), "77");
}
