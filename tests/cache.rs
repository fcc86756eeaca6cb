//! Build caches and networked steps, on a real engine: what a build leaves in a cache reaches
//! the next build of the same repository, recipe and builder only; a busy cache gives the
//! second build a scratch one; a damaged one (cancelled, killed) is discarded; the budget
//! evicts the least recently used; a step marked `network = true` (and only it) reaches the
//! network; provenance records it all.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::attest::provenance_statement;
use common::*;

/// A step that tells whether the cache held a stamp, then leaves one; the artifact never
/// depends on the cache.
const STAMP: &str = "if [ -f /cache/stamp ]; then echo \"cache: found $(cat /cache/stamp)\"; else echo 'cache: empty'; fi; date > /cache/stamp; mkdir -p /out; echo app > /out/app";

fn recipe(image: &str, steps: &[&str]) -> String {
    let steps: Vec<String> = steps.iter().map(|s| format!("  '''{s}''',")).collect();
    format!(
        "[build]\nimage = \"{image}\"\ncache = [\"/cache\"]\nsteps = [\n{}\n]\n\n[[artifact]]\nname = \"app\"\nkind = \"files\"\nfiles = [{{ from = \"app\", to = \"/app\" }}]\n",
        steps.join("\n")
    )
}

/// `kiln build DIR -o LAYOUT --cache-dir CACHE [args]`, with `--cache` unless `cold`.
fn build_cmd(dir: &Path, layout: &Path, cache: &Path, cold: bool) -> Command {
    let mut c = kiln();
    c.arg("build").arg(dir).arg("--output").arg(layout);
    if !cold {
        c.arg("--cache").arg("--cache-dir").arg(cache);
    }
    c
}

fn build(dir: &Path, layout: &Path, cache: &Path, cold: bool) -> Output {
    build_cmd(dir, layout, cache, cold)
        .checked_output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one build log in `layout`.
fn log_of(layout: &Path) -> String {
    let logs: Vec<PathBuf> = std::fs::read_dir(layout.join(".kiln/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    std::fs::read_to_string(&logs[0]).unwrap()
}

fn list(cache: &Path) -> Vec<serde_json::Value> {
    let out = run_ok(
        kiln()
            .args(["cache", "list", "--json", "--cache-dir"])
            .arg(cache),
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// A builder like busybox whose content digest differs (one more variable in its config).
fn other_builder() -> String {
    let base = builder_image("busybox");
    let tag = "kiln-builder/busybox-other:latest";
    let mut c = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("FROM {base}\nENV KILN_TEST_OTHER=1\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "docker build of {tag}");
    tag.to_owned()
}

#[test]
fn a_cache_reaches_the_next_build_of_its_repository_recipe_and_builder_only() {
    let image = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let a = t.path().join("a");
    git_repo(
        &a,
        &[("kiln.toml", recipe(&image, &[STAMP]).as_bytes())],
        None,
    );
    let layout = |n: &str| t.path().join(format!("out-{n}"));

    // First build: a new, empty cache; the second finds what the first left.
    ok(&build(&a, &layout("1"), &cache, false));
    let log1 = log_of(&layout("1"));
    assert!(log1.contains("kiln: cache /cache: cold (new)"), "{log1}");
    assert!(log1.contains("cache: empty"), "{log1}");
    ok(&build(&a, &layout("2"), &cache, false));
    let log2 = log_of(&layout("2"));
    assert!(log2.contains("kiln: cache /cache: warm"), "{log2}");
    assert!(log2.contains("cache: found"), "{log2}");

    // Provenance says which cache, and whether it was warm; never what it held.
    let p1 = provenance_statement(&layout("1"), "app");
    let p2 = provenance_statement(&layout("2"), "app");
    let caches = |p: &serde_json::Value| {
        p["predicate"]["buildDefinition"]["internalParameters"]["caches"].clone()
    };
    assert_eq!(caches(&p1)[0]["warm"], false, "{p1}");
    assert_eq!(caches(&p2)[0]["warm"], true, "{p2}");
    assert_eq!(caches(&p2)[0]["path"], "/cache");
    let id = caches(&p2)[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sha256:") && caches(&p1)[0]["id"] == id.as_str());

    // The cache is never in the artifact: same digest, only the output's file.
    let digest = |l: &Path| common::layer_files(l, "app");
    assert_eq!(digest(&layout("1")), digest(&layout("2")));
    assert_eq!(
        digest(&layout("2")).keys().cloned().collect::<Vec<_>>(),
        ["app"]
    );

    // Without --cache the build is cold, and provenance has no caches.
    ok(&build(&a, &layout("3"), &cache, true));
    assert!(log_of(&layout("3")).contains("cache: empty"));
    assert!(caches(&provenance_statement(&layout("3"), "app")).is_null());

    // Another repository with the same recipe, and the same repository on another builder,
    // start empty.
    let b = t.path().join("b");
    git_repo(
        &b,
        &[("kiln.toml", recipe(&image, &[STAMP]).as_bytes())],
        None,
    );
    ok(&build(&b, &layout("4"), &cache, false));
    assert!(log_of(&layout("4")).contains("cache: empty"));
    let other = other_builder();
    std::fs::write(a.join("kiln.toml"), recipe(&other, &[STAMP])).unwrap();
    git(&a, &["commit", "-qam", "another builder"]);
    ok(&build(&a, &layout("5"), &cache, false));
    let log5 = log_of(&layout("5"));
    assert!(
        log5.contains("cold (new)") && log5.contains("cache: empty"),
        "{log5}"
    );

    // Three caches: a on busybox, b, a on the other builder. Prune one repository's, then all.
    let listed = list(&cache);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|c| c["state"] == "saved" && c["busy"] == false)
    );
    let volumes: Vec<String> = listed
        .iter()
        .map(|c| c["volume"].as_str().unwrap().to_owned())
        .collect();
    assert!(volumes.iter().all(|v| volume_exists(v)));
    let repo_a = listed.iter().find(|c| c["id"] == id.as_str()).unwrap()["repo"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_ok(
        kiln()
            .args(["cache", "prune", "--repo", &repo_a, "--cache-dir"])
            .arg(&cache),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 caches removed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = list(&cache);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["repo"], repo_a.as_str());
    run_ok(
        kiln()
            .args(["cache", "prune", "--all", "--cache-dir"])
            .arg(&cache),
    );
    assert!(list(&cache).is_empty());
    assert!(volumes.iter().all(|v| !volume_exists(v)), "{volumes:?}");
}

#[test]
fn a_busy_cache_gives_a_scratch_one_and_a_damaged_one_is_discarded() {
    let image = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let repo = t.path().join("r");
    let slow = "sleep 3; if [ -f /cache/partial ]; then echo 'cache: partial'; else echo 'cache: clean'; fi; date > /cache/stamp; mkdir -p /out; echo app > /out/app";
    git_repo(
        &repo,
        &[("kiln.toml", recipe(&image, &[slow]).as_bytes())],
        None,
    );
    let layout = |n: &str| t.path().join(format!("out-{n}"));

    // Two builds of one cache at once: both succeed; one held the cache, the other ran on a
    // scratch cache and said so.
    let mut one = build_cmd(&repo, &layout("c1"), &cache, false)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut two = build_cmd(&repo, &layout("c2"), &cache, false)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(one.wait().unwrap().success() && two.wait().unwrap().success());
    let logs = [log_of(&layout("c1")), log_of(&layout("c2"))];
    let scratch = logs
        .iter()
        .filter(|l| {
            l.contains("is in use by build")
                && l.contains("empty scratch cache and does not save it")
        })
        .count();
    let held = logs
        .iter()
        .filter(|l| l.contains("kiln: cache /cache: cold (new)"))
        .count();
    assert_eq!((scratch, held), (1, 1), "{logs:?}");
    let listed = list(&cache);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "saved");

    // A build that writes into the cache and is cancelled: the cache is discarded.
    let partial = "echo partial > /cache/partial; echo wrote-partial; sleep 60";
    std::fs::write(repo.join("kiln.toml"), recipe(&image, &[partial])).unwrap();
    git(&repo, &["commit", "-qam", "a long step"]);
    let volume = listed[0]["volume"].as_str().unwrap().to_owned();
    let stopped = |sig: &str, n: &str| {
        let mut child = build_cmd(&repo, &layout(n), &cache, false)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_dir(layout(n).join(".kiln/logs"))
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .unwrap_or_default();
            if log.contains("wrote-partial") {
                break;
            }
            assert!(Instant::now() < deadline, "the long step did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        run_ok(Command::new("kill").args([sig, &child.id().to_string()]));
        let st = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (st, err)
    };
    let (st, err) = stopped("-INT", "cancel");
    assert!(!st.success(), "{err}");
    assert!(
        list(&cache).is_empty(),
        "the cancelled build's cache is discarded"
    );
    assert!(!volume_exists(&volume));

    // The next build is cold, clean and succeeds.
    std::fs::write(repo.join("kiln.toml"), recipe(&image, &[slow])).unwrap();
    git(&repo, &["commit", "-qam", "back"]);
    ok(&build(&repo, &layout("after-cancel"), &cache, false));
    let log = log_of(&layout("after-cancel"));
    assert!(
        log.contains("cold (new)") && log.contains("cache: clean"),
        "{log}"
    );

    // Killed outright: the record stays in use with its lock free; the next build discards
    // it (and the dead build's container) before use, and is cold and clean.
    std::fs::write(repo.join("kiln.toml"), recipe(&image, &[partial])).unwrap();
    git(&repo, &["commit", "-qam", "a long step again"]);
    let (st, _) = stopped("-KILL", "kill");
    assert!(!st.success());
    let listed = list(&cache);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["state"].as_str(), listed[0]["busy"].as_bool()),
        (Some("in-use"), Some(false))
    );
    std::fs::write(repo.join("kiln.toml"), recipe(&image, &[slow])).unwrap();
    git(&repo, &["commit", "-qam", "back again"]);
    ok(&build(&repo, &layout("after-kill"), &cache, false));
    let log = log_of(&layout("after-kill"));
    assert!(
        log.contains("cold (new)") && log.contains("cache: clean"),
        "{log}"
    );
    let volume = list(&cache)[0]["volume"].as_str().unwrap().to_owned();
    let users = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("volume={volume}")])
        .output()
        .unwrap();
    assert!(
        users.stdout.is_empty(),
        "no container holds the cache any more"
    );
    run_ok(
        kiln()
            .args(["cache", "prune", "--all", "--cache-dir"])
            .arg(&cache),
    );
}

#[test]
fn the_budget_evicts_the_least_recently_used_idle_cache() {
    use kiln::runner::cache::{CacheKey, CacheMetrics, Caches, Taken};
    require_docker();
    let t = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runner = kiln::runner::connect().await.unwrap();
        let metrics = std::sync::Arc::new(CacheMetrics::default());
        let caches = Caches::open(&t.path().join("cache"), 250, metrics.clone()).unwrap();
        let key = |repo: &str| CacheKey {
            repo: repo.into(),
            recipe: "kiln.toml".into(),
            builder: "sha256:b".into(),
            path: "/cache".into(),
        };
        let take = |repo: &'static str| {
            let (caches, runner) = (caches.clone(), runner.clone());
            async move {
                match caches
                    .take(runner.as_ref(), key(repo), "build")
                    .await
                    .unwrap()
                {
                    Taken::Held(h) => h,
                    Taken::Busy { .. } => panic!("{repo} is busy"),
                }
            }
        };
        // Oldest first: a, b, c, each 100 bytes; then a is used again.
        for repo in ["a", "b", "c"] {
            let h = take(repo).await;
            caches.save(h, Some(100), None).unwrap();
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let a = take("a").await;
        assert!(a.warm);
        caches.save(a, None, None).unwrap();
        // A held cache is never evicted, however old: hold c.
        let held_c = take("c").await;
        let evicted = caches.enforce_budget(runner.as_ref()).await.unwrap();
        let names: Vec<&str> = evicted.iter().map(|r| r.key.repo.as_str()).collect();
        assert_eq!(names, ["b"], "the least recently used idle cache goes");
        assert_eq!(metrics.evictions.get(), 1);
        assert_eq!(metrics.bytes.get(), 200);
        assert!(!runner.has_volume(&evicted[0].volume).await.unwrap());
        let left: Vec<String> = caches
            .list()
            .unwrap()
            .iter()
            .map(|l| l.record.key.repo.clone())
            .collect();
        assert_eq!(left, ["c", "a"], "most recently used first");
        caches.save(held_c, Some(100), None).unwrap();
        let all = caches.prune(runner.as_ref(), |_| true).await.unwrap();
        assert_eq!(all.len(), 2);
    });
}

/// A one-request-at-a-time HTTP server on `addr`, counting requests.
fn serve(addr: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    (at, hits)
}

/// The engine's bridge gateway: the host's address as a build container sees it (the
/// network's gateway where the engine records one, else its bridge interface's address).
fn bridge_gateway() -> String {
    let inspect = |format: &str| {
        let out = run_ok(
            Command::new("docker").args(["network", "inspect", "bridge", "--format", format]),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let gw = inspect("{{range .IPAM.Config}}{{.Gateway}}{{end}}");
    if !gw.is_empty() {
        return gw;
    }
    let dev = inspect("{{index .Options \"com.docker.network.bridge.name\"}}");
    let out = run_ok(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &dev]));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {text}"))
        .to_owned()
}

#[test]
fn only_a_step_marked_network_reaches_the_network() {
    let image = builder_image("busybox");
    let (at, hits) = serve(&format!("{}:0", bridge_gateway()));
    let (host, port) = at.rsplit_once(':').unwrap();
    let probe = |n: u32| {
        format!(
            "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} | grep -q '^HTTP/1.0 200'; then echo step{n}: reached; else echo step{n}: unreachable; fi"
        )
    };
    let recipe = format!(
        "[build]\nimage = \"{image}\"\nsteps = [\n  '''{}''',\n  {{ run = '''{}''', network = true }},\n  '''{}; mkdir -p /out; echo app > /out/app''',\n]\n\n[[artifact]]\nname = \"app\"\nkind = \"files\"\nfiles = [{{ from = \"app\", to = \"/app\" }}]\n",
        probe(1),
        probe(2),
        probe(3)
    );
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("r");
    git_repo(&repo, &[("kiln.toml", recipe.as_bytes())], None);
    let cache = t.path().join("cache");

    // Refused at once without the host's permission.
    let out = build(&repo, &t.path().join("refused"), &cache, true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network = true on a step") && err.contains("does not allow"),
        "{err}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    let layout = t.path().join("allowed");
    let out = build_cmd(&repo, &layout, &cache, true)
        .arg("--allow-network")
        .checked_output()
        .unwrap();
    ok(&out);
    let log = log_of(&layout);
    for want in [
        "step1: unreachable",
        "$ (network) if printf",
        "step2: reached",
        "step3: unreachable",
    ] {
        assert!(log.contains(want), "{want} in {log}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let p = provenance_statement(&layout, "app");
    let internal = &p["predicate"]["buildDefinition"]["internalParameters"];
    assert_eq!(internal["networkSteps"], serde_json::json!([2]), "{p}");
    assert_eq!(internal["network"], false);
}

/// The daemon: branch builds use caches, tag builds run cold, and the sampled verify (cold)
/// catches a cache poisoned by an earlier commit: the build fails, nothing is published, the
/// cache is discarded, and the next build is cold and clean.
#[test]
fn a_poisoned_cache_is_caught_by_the_cold_verify_and_tag_builds_never_see_it() {
    use common::daemon::{Daemon, commit, has, metric};
    let image = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("app");
    // A commit holding `poison-me` leaves a file in the cache; any later build that finds it
    // copies it into its output.
    let poison = "mkdir -p /out; if [ -f /cache/poison ]; then cp /cache/poison /out/poison; echo copied-poison; fi; if [ -f poison-me ]; then echo evil > /cache/poison; fi; echo app > /out/app";
    let recipe = format!(
        "[build]\nimage = \"{image}\"\ncache = [\"/cache\"]\nsteps = [\n  {{ run = \"true\", network = true }},\n  '''{poison}''',\n]\n\n[[artifact]]\nname = \"app\"\nkind = \"files\"\nfiles = [{{ from = \".\", to = \"/\" }}]\n"
    );
    let sha1 = git_repo(
        &repo,
        &[("kiln.toml", recipe.as_bytes()), ("poison-me", b"1")],
        None,
    );
    let body = format!(
        "verify = \"always\"\n[[repo]]\npath = \"{}\"\nbranches = [\"main\"]\ntags = \"v*\"\nallow_network = true\n",
        repo.display()
    );
    let dir = t.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    let d = Daemon::start(&dir, &body, "debug", &[]);
    let wait = |what: &str, sha: &str, state: &str| {
        d.wait_builds(what, Duration::from_secs(120), |b| has(b, sha, state))
            .into_iter()
            .find(|b| b["commit"] == sha && b["state"] == state)
            .unwrap()
    };
    let first = wait("the first build", &sha1, "success");
    let layout = d.state_dir.join("layout").join("app");
    let internal = |sha: &str| {
        provenance_statement(&layout, sha)["predicate"]["buildDefinition"]["internalParameters"]
            .clone()
    };
    assert_eq!(internal(&sha1)["caches"][0]["warm"], false);
    assert_eq!(internal(&sha1)["networkSteps"], serde_json::json!([1]));
    // The networked step is marked in the API and on the dashboard.
    let detail = d.build(first["id"].as_str().unwrap());
    assert_eq!(detail["steps"][0]["network"], true, "{detail}");
    assert_eq!(detail["steps"][1]["network"], false, "{detail}");
    let page = common::daemon::get(&format!(
        "{}/builds/{}",
        d.url,
        first["id"].as_str().unwrap()
    ))
    .1;
    assert!(page.contains("class=\"network\""), "{page}");

    // A release of a later commit (no poison-me) is built cold: clean.
    git(&repo, &["checkout", "-q", "-b", "release"]);
    git(&repo, &["rm", "-q", "poison-me"]);
    git(&repo, &["commit", "-qm", "release"]);
    let sha2 = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["tag", "v2"]);
    wait("the tag build", &sha2, "success");
    assert!(internal(&sha2)["caches"].is_null(), "a tag build runs cold");
    assert!(!common::layer_files(&layout, &sha2).contains_key("poison"));

    // The next branch build is warm, copies the poison, and the cold verify catches it.
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["merge", "-q", "--ff-only", "release"]);
    let sha3 = commit(&repo, "marker", "3");
    let caught = wait("the poisoned build", &sha3, "failure");
    let error = caught["error"].as_str().unwrap();
    assert!(
        error.starts_with("not reproducible: the cache changed the output: 1 path differs: "),
        "{error}"
    );
    assert!(error.contains("poison"), "{error}");
    assert!(
        caught["artifacts"].as_array().unwrap().is_empty(),
        "nothing was published"
    );
    assert_eq!(
        metric(
            &d.metrics(),
            "kiln_builds_unreproducible_total{cause=\"cache\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&d.metrics(), "kiln_cache_hits_total"), Some(1.0));
    let log = common::daemon::get(&format!(
        "{}/builds/{}/log",
        d.url,
        caught["id"].as_str().unwrap()
    ))
    .1;
    assert!(
        log.contains("copied-poison") && log.contains("kiln: cache /cache: warm"),
        "{log}"
    );

    // The cache is gone: the next build is cold and clean.
    let sha4 = commit(&repo, "marker", "4");
    wait("the build after", &sha4, "success");
    assert_eq!(internal(&sha4)["caches"][0]["warm"], false);
    assert!(!common::layer_files(&layout, &sha4).contains_key("poison"));
    // The engine's volumes outlive the test's directory: remove them.
    let config = d.config.clone();
    drop(d);
    let out = run_ok(
        kiln()
            .args(["cache", "prune", "--all", "--config"])
            .arg(&config),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 cache removed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tools that decide by mtime see what changed: the source's files all carry the commit time,
/// older than what an earlier build left in its cache, so a warm build stamps the files
/// changed since the cache was saved with its own start instead. Without it, a make-like step
/// would call the changed file up to date and ship the old result.
#[test]
fn a_warm_build_sees_changed_sources_as_newer_than_its_cache() {
    let image = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let repo = t.path().join("r");
    // Rebuild /cache/result from data.txt only when data.txt is newer, as make would.
    let make = "mkdir -p /cache; if [ -f /cache/result ] && [ ! data.txt -nt /cache/result ]; then echo up-to-date; else cp data.txt /cache/result; echo rebuilt; fi; mkdir -p /out; cp /cache/result /out/app";
    git_repo(
        &repo,
        &[
            ("kiln.toml", recipe(&image, &[make]).as_bytes()),
            ("data.txt", b"one\n"),
        ],
        None,
    );
    let layout = |n: &str| t.path().join(format!("out-{n}"));
    let result = |n: &str| common::layer_files(&layout(n), "app")["app"].clone();
    let said = |n: &str, what: &str| log_of(&layout(n)).lines().any(|l| l == what);
    ok(&build(&repo, &layout("1"), &cache, false));
    assert!(said("1", "rebuilt"));

    // data.txt changes: the warm build must rebuild, and agree with a cold build.
    std::fs::write(repo.join("data.txt"), "two\n").unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    ok(&build(&repo, &layout("2"), &cache, false));
    let log2 = log_of(&layout("2"));
    assert!(
        log2.contains("kiln: cache /cache: warm")
            && log2.contains("1 source file changed since the cache was saved")
            && said("2", "rebuilt"),
        "{log2}"
    );
    assert_eq!(result("2"), b"two\n");
    ok(&build(&repo, &layout("2-cold"), &cache, true));
    let digest = |n: &str| {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout(n).join("index.json")).unwrap()).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "app")
            .unwrap()["digest"]
            .clone()
    };
    assert_eq!(
        digest("2"),
        digest("2-cold"),
        "the warm build is the cold build"
    );

    // Something else changes: data.txt is up to date, and the result is still right. (The
    // commit keeps the fixed commit time of the repository's first: a commit made this very
    // second would be newer than the cache, and everything would look changed.)
    std::fs::write(repo.join("other.txt"), "x\n").unwrap();
    git(&repo, &["add", "other.txt"]);
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["commit", "-qm", "other"])
            .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"))
            .env("GIT_AUTHOR_DATE", format!("@{COMMIT_TIME} +0000"))
            .env("GIT_AUTHOR_NAME", "kiln test")
            .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
            .env("GIT_COMMITTER_NAME", "kiln test")
            .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid"),
    );
    ok(&build(&repo, &layout("3"), &cache, false));
    assert!(said("3", "up-to-date"), "{}", log_of(&layout("3")));
    assert_eq!(result("3"), b"two\n");
    run_ok(
        kiln()
            .args(["cache", "prune", "--all", "--cache-dir"])
            .arg(&cache),
    );
}
