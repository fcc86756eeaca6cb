//! `kiln daemon` end to end: a stand-in GitHub over real repositories served by `git daemon`,
//! the real registry, the real Docker engine, and the daemon as a process that is restarted,
//! stopped and killed.

mod common;

use std::time::{Duration, Instant};

use common::daemon::*;
use common::forge::{FakeGitHub, hook, sign, terminal_statuses};
use common::net::Registry;
use common::recipe::*;
use common::*;

#[test]
fn github_commits_are_built_pushed_tagged_and_reported_once() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("github-e2e", "");
    let sha1 = gh.create("acme/hello", &refs(&files));
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[registry]\nurl = \"{}/acme\"\n\n[[repo]]\ngithub = \"acme/hello\"\nbranches = [\"main\"]\ntags = \"v*\"\n",
        github_config(&gh, t.path(), "1s", ""),
        reg.addr
    );
    // Debug logging: the token must not show up even there.
    let d = Daemon::start(t.path(), &body, "trace", &[]);
    let builds = d.wait_builds("the first commit's build", Duration::from_secs(120), |b| {
        has(b, &sha1, "success")
    });
    let first = &builds[0];
    assert_eq!(first["repo"], "acme/hello");
    assert_eq!(first["ref"], "refs/heads/main");
    let digest1 = first["artifacts"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        first["artifacts"][0]["pushed_to"],
        format!("{}/acme/hello@{digest1}", reg.addr)
    );

    // The branch's badge; a branch with a slash works too (no build there yet).
    let (st, head, svg) = get_full(&format!("{}/badges/acme/hello/main.svg", d.url));
    assert_eq!(st, 200);
    assert!(
        head.to_ascii_lowercase().contains("image/svg+xml"),
        "{head}"
    );
    assert!(svg.contains(">passing<"), "{svg}");
    let (_, _, svg) = get_full(&format!("{}/badges/acme/hello/release/1.x.svg", d.url));
    assert!(svg.contains(">unknown<"), "{svg}");

    // In the registry: tagged by the full SHA and the branch, with source-linked annotations.
    let by_sha = format!("docker://{}/acme/hello:{sha1}", reg.addr);
    let m = skopeo_manifest(&by_sha).expect("tagged by the commit SHA");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        sha1.as_str()
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        "https://github.com/acme/hello"
    );
    assert_eq!(manifest_digest(&by_sha).as_deref(), Some(digest1.as_str()));
    let by_branch = format!("docker://{}/acme/hello:main", reg.addr);
    assert_eq!(
        manifest_digest(&by_branch).as_deref(),
        Some(digest1.as_str())
    );

    // Statuses: pending, then exactly one success carrying the digest and the build's page.
    wait_until("the success status", Duration::from_secs(30), || {
        terminal_statuses(&gh.statuses(), &sha1).contains_key("kiln/hello")
    });
    let all: Vec<_> = gh
        .statuses()
        .into_iter()
        .filter(|s| s.sha == sha1 && s.context == "kiln/hello")
        .collect();
    assert_eq!(
        all.first().map(|s| s.state.as_str()),
        Some("pending"),
        "{all:?}"
    );
    assert_eq!(
        all.last().map(|s| s.state.as_str()),
        Some("success"),
        "{all:?}"
    );
    let terminal = terminal_statuses(&gh.statuses(), &sha1);
    assert_eq!(terminal["kiln/hello"].len(), 1, "{terminal:?}");
    assert_eq!(terminal["kiln/hello"][0].description, digest1);
    assert_eq!(
        terminal["kiln/hello"][0].target_url.as_deref(),
        Some(
            format!(
                "https://kiln.example.com/builds/{}",
                first["id"].as_str().unwrap()
            )
            .as_str()
        )
    );

    // A new commit moves the branch tag; a release tag on it is published without a rebuild.
    let sha2 = gh.commit("acme/hello", &[("marker.txt", b"github-e2e 2")], "second");
    let builds = d.wait_builds("the second commit's build", Duration::from_secs(120), |b| {
        has(b, &sha2, "success")
    });
    let digest2 = builds[0]["artifacts"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(digest1, digest2);
    wait_until("main to move", Duration::from_secs(10), || {
        manifest_digest(&by_branch).as_deref() == Some(digest2.as_str())
    });
    gh.tag("acme/hello", "v1.2.3", &sha2);
    let release = format!("docker://{}/acme/hello:1.2.3", reg.addr);
    wait_until("the release tags", Duration::from_secs(30), || {
        manifest_digest(&release).as_deref() == Some(digest2.as_str())
    });
    assert_eq!(
        manifest_digest(&format!("docker://{}/acme/hello:v1.2.3", reg.addr)).as_deref(),
        Some(digest2.as_str())
    );
    assert_eq!(
        d.builds().len(),
        2,
        "a tag on a built commit builds nothing"
    );

    // Polling is conditional: unchanged heads are 304s, every request authorized.
    std::thread::sleep(Duration::from_secs(3));
    let reqs = gh.requests();
    let heads: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == "/repos/acme/hello/commits/main")
        .collect();
    let fresh = heads.iter().filter(|r| r.status == 200).count();
    let not_modified = heads.iter().filter(|r| r.status == 304).count();
    assert!(
        fresh <= 3,
        "{fresh} full answers for 2 head changes: {heads:?}"
    );
    assert!(not_modified >= 3, "{heads:?}");
    assert!(reqs.iter().all(|r| r.authorized), "an unauthorized request");
    let m = d.metrics();
    assert_eq!(
        metric(&m, "kiln_builds_total{result=\"success\"}"),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric(&m, "kiln_github_requests_total{status=\"304\"}").unwrap_or(0.0) >= 3.0,
        "{m}"
    );
    assert!(
        metric(&m, "kiln_pushed_bytes_total").unwrap_or(0.0) > 0.0,
        "{m}"
    );

    // The build log is served; no secret reached any log.
    let (status, log) = get(&format!(
        "{}/builds/{}/log",
        d.url,
        first["id"].as_str().unwrap()
    ));
    assert_eq!(status, 200);
    assert!(log.contains("$ mkdir -p /out/bin"), "{log}");
    let daemon_log = d.log();
    assert!(
        daemon_log.contains("GitHub request"),
        "debug logging was on"
    );
    assert!(
        !daemon_log.contains(GITHUB_TOKEN) && !log.contains(GITHUB_TOKEN),
        "the token leaked"
    );
    assert!(containers_labelled("dev.kiln.revision", &sha1).is_empty());
}

#[test]
fn local_repositories_build_without_registry_and_restarts_rebuild_nothing() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    let files = hello("local-e2e", "");
    let sha1 = git_repo(&repo, &refs(&files), None);
    let body = format!("[[repo]]\npath = \"{}\"\n", repo.display());
    let dir = t.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::start(&dir, &body, "trace", &[]);
    let builds = d.wait_builds("the first build", Duration::from_secs(120), |b| {
        has(b, &sha1, "success")
    });
    let digest1 = builds[0]["artifacts"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let layout = d.state_dir.join("layout").join("hello");
    validate(&layout);
    let oci = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let m = skopeo_manifest(&oci(&sha1)).expect("tagged by SHA in the local layout");
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        sha1.as_str()
    );
    // A local repository's path names this host's disk: no source link in the manifest.
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        serde_json::Value::Null
    );
    assert_eq!(
        manifest_digest(&oci("main")).as_deref(),
        Some(digest1.as_str())
    );

    // A commit is seen on disk at once (notify), not at the next poll.
    let t0 = Instant::now();
    let sha2 = commit(&repo, "marker.txt", "local-e2e 2");
    d.wait_builds("the second build to start", Duration::from_secs(10), |b| {
        b.iter().any(|x| x["commit"] == sha2.as_str())
    });
    let seen = t0.elapsed();
    assert!(
        seen < Duration::from_secs(5),
        "a new commit took {seen:?} to be seen"
    );
    d.wait_builds("the second build", Duration::from_secs(120), |b| {
        has(b, &sha2, "success")
    });

    // Badges: the branch's last finished build, as text in an SVG, briefly cached.
    let badge = |branch: &str| {
        let (st, head, body) = get_full(&format!(
            "{}/badges/local.svg?path={}&branch={branch}",
            d.url,
            repo.display()
        ));
        assert_eq!(st, 200, "{body}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: image/svg+xml"), "{head}");
        assert!(head.contains("cache-control: max-age=30"), "{head}");
        assert!(
            body.starts_with("<svg") && body.contains(">kiln<"),
            "{body}"
        );
        body
    };
    assert!(badge("main").contains(">passing<"));
    assert!(badge("no-such-branch").contains(">unknown<"));
    let (st, _, _) = get_full(&format!("{}/badges/acme/hello/main.png", d.url));
    assert_eq!(st, 404);
    std::fs::write(
        repo.join("kiln.toml"),
        String::from_utf8(hello_recipe("exit 3")).unwrap(),
    )
    .unwrap();
    let sha3 = commit(&repo, "marker.txt", "local-e2e 3");
    d.wait_builds("the failing build", Duration::from_secs(120), |b| {
        has(b, &sha3, "failure")
    });
    assert!(badge("main").contains(">failing<"));

    // SIGTERM: a quick, clean exit.
    let (st, took) = d.signal(libc::SIGTERM);
    assert!(st.success(), "exit status {st}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");

    // A restart rebuilds nothing.
    let d2 = Daemon::start_with(&dir, d.config.clone(), d.url.clone(), "trace", &[]);
    std::thread::sleep(Duration::from_secs(3));
    let builds = d2.builds();
    assert_eq!(
        states(&builds),
        vec!["failure", "success", "success"],
        "{builds:?}"
    );
    assert_eq!(d2.log().matches("build started").count(), 3, "{}", d2.log());

    // A second daemon on the same state directory refuses to start.
    let out = kiln()
        .arg("daemon")
        .arg("--config")
        .arg(&d2.config)
        .checked_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another kiln daemon") && err.contains(&format!("pid {}", d2.pid())),
        "{err}"
    );
}

#[test]
fn a_build_killed_with_its_daemon_runs_again_and_is_reported_once() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("kill9", "sleep 4");
    let sha = gh.create("acme/slow", &refs(&files));
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let host = format!("kill9-{}", std::process::id());
    let body = format!(
        "{}\n[registry]\nurl = \"{}/acme\"\n\n[[repo]]\ngithub = \"acme/slow\"\n",
        github_config(&gh, t.path(), "1s", &format!("host_id = \"{host}\"")),
        reg.addr
    );
    let mut d = Daemon::start(t.path(), &body, "trace", &[]);
    d.wait_builds("the build to run", Duration::from_secs(60), |b| {
        has(b, &sha, "running")
    });
    wait_until("the build container", Duration::from_secs(30), || {
        !containers_labelled("dev.kiln.host", &host).is_empty()
    });
    d.kill9();
    assert_eq!(
        containers_labelled("dev.kiln.host", &host).len(),
        1,
        "the killed run's container stays"
    );

    let d2 = Daemon::start_with(t.path(), d.config.clone(), d.url.clone(), "trace", &[]);
    let builds = d2.wait_builds(
        "the build after the restart",
        Duration::from_secs(120),
        |b| has(b, &sha, "success"),
    );
    assert_eq!(builds.len(), 1, "one build record: {builds:?}");
    assert_eq!(builds[0]["attempts"], 2, "{builds:?}");
    assert!(
        d2.log()
            .contains("removed containers left by an earlier run"),
        "{}",
        d2.log()
    );
    assert!(
        containers_labelled("dev.kiln.host", &host).is_empty(),
        "no container is left"
    );
    wait_until("the success status", Duration::from_secs(30), || {
        terminal_statuses(&gh.statuses(), &sha).contains_key("kiln/hello")
    });
    std::thread::sleep(Duration::from_secs(2));
    let terminal = terminal_statuses(&gh.statuses(), &sha);
    assert_eq!(terminal.len(), 1, "{terminal:?}");
    let (_, ss) = terminal.iter().next().unwrap();
    assert_eq!(ss.len(), 1, "exactly one terminal status: {ss:?}");
    assert_eq!(ss[0].state, "success");
    assert!(skopeo_manifest(&format!("docker://{}/acme/hello:{sha}", reg.addr)).is_some());
}

#[test]
fn sigterm_mid_build_stops_quickly_and_the_job_waits_for_the_next_start() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    let files = hello("sigterm", "sleep 5");
    let sha = git_repo(&repo, &refs(&files), None);
    let host = format!("sigterm-{}", std::process::id());
    let body = format!(
        "host_id = \"{host}\"\nshutdown_grace = \"1s\"\n[[repo]]\npath = \"{}\"\n",
        repo.display()
    );
    let dir = t.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::start(&dir, &body, "trace", &[]);
    d.wait_builds("the build to run", Duration::from_secs(60), |b| {
        has(b, &sha, "running")
    });
    wait_until("the build container", Duration::from_secs(30), || {
        !containers_labelled("dev.kiln.host", &host).is_empty()
    });
    let (st, took) = d.signal(libc::SIGTERM);
    assert!(st.success(), "exit status {st}\n{}", d.log());
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?}");
    assert!(
        containers_labelled("dev.kiln.host", &host).is_empty(),
        "the container was removed"
    );
    assert!(d.log().contains("grace period over"), "{}", d.log());

    let d2 = Daemon::start_with(&dir, d.config.clone(), d.url.clone(), "trace", &[]);
    let builds = d2.wait_builds(
        "the build after the restart",
        Duration::from_secs(120),
        |b| has(b, &sha, "success"),
    );
    assert_eq!(builds.len(), 1);
    // A graceful stop does not count as a failed attempt.
    assert_eq!(builds[0]["attempts"], 1, "{builds:?}");
}

#[test]
fn webhooks_are_verified_deduplicated_and_start_a_check() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("webhook", "");
    let sha1 = gh.create("acme/hooked", &refs(&files));
    let t = tempfile::tempdir().unwrap();
    // Polls an hour apart: only webhooks bring news within this test.
    let body = format!(
        "{}\n[[repo]]\ngithub = \"acme/hooked\"\n",
        github_config(&gh, t.path(), "1h", "")
    );
    let d = Daemon::start(t.path(), &body, "trace", &[]);
    let push = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/hooked"}}"#;

    assert_eq!(hook(&d, "push", "d-bad", push, "sha256=00").0, 401);
    assert_eq!(hook(&d, "push", "d-none", push, "").0, 401);
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let (status, answer) = hook(&d, "ping", "d-ping", ping, &sign(ping));
    assert_eq!(status, 200, "{answer}");

    let (status, answer) = hook(&d, "push", "d-1", push, &sign(push));
    assert_eq!(status, 200, "{answer}");
    d.wait_builds("the hooked build", Duration::from_secs(120), |b| {
        has(b, &sha1, "success")
    });

    // A replayed delivery is dropped: it does not even check the repository.
    let sha2 = gh.commit("acme/hooked", &[("marker.txt", b"webhook 2")], "second");
    let checks = || {
        gh.requests()
            .iter()
            .filter(|r| r.path == "/repos/acme/hooked/commits/main")
            .count()
    };
    let before = checks();
    let (status, answer) = hook(&d, "push", "d-1", push, &sign(push));
    assert_eq!(status, 200);
    assert!(answer.contains("duplicate"), "{answer}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(checks(), before, "a replay triggered a check");
    assert!(!d.builds().iter().any(|b| b["commit"] == sha2.as_str()));

    // A new delivery starts the build at once.
    let t0 = Instant::now();
    let (status, _) = hook(&d, "push", "d-2", push, &sign(push));
    assert_eq!(status, 200);
    d.wait_builds(
        "the second hooked build to start",
        Duration::from_secs(10),
        |b| {
            b.iter()
                .any(|x| x["commit"] == sha2.as_str() && x["state"] != "queued")
        },
    );
    let started = t0.elapsed();
    assert!(
        started < Duration::from_secs(3),
        "webhook to build start took {started:?}"
    );
    eprintln!("webhook delivery to build start: {started:?}");
    d.wait_builds("the second hooked build", Duration::from_secs(120), |b| {
        has(b, &sha2, "success")
    });
    let m = d.metrics();
    assert_eq!(
        metric(&m, "kiln_webhook_deliveries_total{status=\"rejected\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "kiln_webhook_deliveries_total{status=\"replayed\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn a_rate_limited_daemon_waits_instead_of_spinning() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("ratelimit", "");
    let sha = gh.create("acme/limited", &refs(&files));
    gh.rate_limit_for(6);
    let t = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[repo]]\ngithub = \"acme/limited\"\n",
        github_config(&gh, t.path(), "1s", "")
    );
    let d = Daemon::start(t.path(), &body, "trace", &[]);
    std::thread::sleep(Duration::from_secs(4));
    let limited: Vec<_> = gh
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert!(!limited.is_empty(), "the daemon never asked");
    assert!(
        limited.len() <= 2,
        "{} requests while rate limited (a poll every second would make 4): {limited:?}",
        limited.len()
    );
    assert_eq!(
        metric(&d.metrics(), "kiln_github_rate_limit_remaining"),
        Some(0.0)
    );
    assert!(d.log().contains("rate limit"), "{}", d.log());
    // Once the limit resets, polling resumes and the commit is built.
    d.wait_builds("the build after the reset", Duration::from_secs(120), |b| {
        has(b, &sha, "success")
    });
}

#[test]
fn configs_are_checked_and_reloaded_without_a_restart() {
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();

    // --check: every problem with its line; exit 2.
    let bad = t.path().join("bad.toml");
    std::fs::write(
        &bad,
        "state_dir = \"/tmp/x\"\nconcurency = 2\nconcurrency = \"two\"\n[[repo]]\npath = \"relative\"\n",
    )
    .unwrap();
    let out = kiln()
        .arg("daemon")
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .checked_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "bad.toml:2: concurency: unknown key",
        "bad.toml:3: concurrency: expected a whole number",
        "bad.toml:5: repo[0].path: \"relative\" must be an absolute path",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(!err.contains("panicked"));

    let a = t.path().join("a");
    let sha_a = git_repo(&a, &refs(&hello("reload-a", "")), None);
    let b = t.path().join("b");
    let sha_b = git_repo(&b, &refs(&hello("reload-b", "")), None);
    let dir = t.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let one = format!("[[repo]]\npath = \"{}\"\n", a.display());
    let mut d = Daemon::start(&dir, &one, "trace", &[]);
    let out = kiln()
        .arg("daemon")
        .arg("--config")
        .arg(&d.config)
        .arg("--check")
        .checked_output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(": ok"));
    d.wait_builds("repo a", Duration::from_secs(120), |x| {
        has(x, &sha_a, "success")
    });

    // Adding a repository to the file is picked up without a restart.
    let text = std::fs::read_to_string(&d.config).unwrap();
    let two = format!("{text}[[repo]]\npath = \"{}\"\n", b.display());
    std::fs::write(&d.config, &two).unwrap();
    d.wait_builds("repo b after the reload", Duration::from_secs(120), |x| {
        has(x, &sha_b, "success")
    });

    // An invalid config is logged and the running one kept.
    std::fs::write(&d.config, format!("{two}bogus = 1\n")).unwrap();
    wait_until(
        "the invalid config to be reported",
        Duration::from_secs(10),
        || d.log().contains("the new config is invalid"),
    );
    assert!(d.log().contains("bogus: unknown key"), "{}", d.log());
    assert_eq!(get(&format!("{}/healthz", d.url)).0, 200);

    // SIGHUP reloads too (with the file unchanged, so only the signal can be the cause).
    let before = d.log().matches("config reloaded").count();
    std::fs::write(&d.config, &two).unwrap();
    wait_until("the file watcher's reload", Duration::from_secs(10), || {
        d.log().matches("config reloaded").count() > before
    });
    std::thread::sleep(Duration::from_millis(300));
    let reloads = d.log().matches("config reloaded").count();
    unsafe {
        libc::kill(d.pid() as libc::pid_t, libc::SIGHUP);
    }
    wait_until("SIGHUP to reload", Duration::from_secs(10), || {
        d.log().matches("config reloaded").count() > reloads
    });
    assert!(
        d.log().contains("SIGHUP: reloading the config"),
        "{}",
        d.log()
    );
    let (st, _) = d.signal(libc::SIGTERM);
    assert!(st.success());
}

#[test]
fn a_commit_already_pushed_is_tagged_not_rebuilt() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("prepushed", "");
    let sha = gh.create("acme/pre", &refs(&files));
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    // The CLI builds and pushes the commit first (as a release script might).
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(gh.dir("acme/pre"))
            .arg("--output")
            .arg(t.path().join("cli-layout"))
            .arg("--push")
            .arg(format!("{}/acme", reg.addr))
            .arg("--json"),
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = cli["artifacts"][0]["digest"].as_str().unwrap().to_owned();
    let uploads_before = reg
        .log()
        .matches("PUT /v2/acme/hello/blobs/uploads")
        .count();

    let body = format!(
        "{}\n[registry]\nurl = \"{}/acme\"\n\n[[repo]]\ngithub = \"acme/pre\"\n",
        github_config(&gh, t.path(), "1s", ""),
        reg.addr
    );
    let d = Daemon::start(t.path(), &body, "trace", &[]);
    let builds = d.wait_builds("the daemon's build", Duration::from_secs(120), |b| {
        has(b, &sha, "success")
    });
    assert_eq!(builds[0]["artifacts"][0]["digest"], digest.as_str());
    let detail = d.build(builds[0]["id"].as_str().unwrap());
    let skipped: Vec<_> = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "skipped")
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(skipped, ["run", "pack", "image", "publish"], "{detail}");
    assert_eq!(
        manifest_digest(&format!("docker://{}/acme/hello:main", reg.addr)).as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        reg.log()
            .matches("PUT /v2/acme/hello/blobs/uploads")
            .count(),
        uploads_before,
        "nothing was uploaded again"
    );
    assert!(containers_labelled("dev.kiln.revision", &sha).is_empty());
}
