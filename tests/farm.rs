//! The farm: several `kiln daemon` processes (hosts) on one real PostgreSQL, one real registry
//! and one stand-in GitHub. Hosts are killed, paused past their lease and cut off from the
//! database; every commit is still built and reported exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::farm::{Farm, Host};
use common::forge::{FakeGitHub, hook, sign, terminal_statuses};
use common::net::Registry;
use common::recipe::*;
use common::*;

fn build_of<'a>(builds: &'a [serde_json::Value], sha: &str) -> Option<&'a serde_json::Value> {
    builds.iter().find(|b| b["commit"] == sha)
}

/// Every commit has exactly one terminal status, a success, and keeps it for 3 s more.
fn one_success_each(gh: &FakeGitHub, shas: &[String]) {
    wait_until("every success status", Duration::from_secs(60), || {
        let all = gh.statuses();
        shas.iter()
            .all(|s| terminal_statuses(&all, s).contains_key("kiln/hello"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let all = gh.statuses();
    for sha in shas {
        let t = terminal_statuses(&all, sha);
        assert_eq!(t.len(), 1, "{sha}: {t:?}");
        assert_eq!(t["kiln/hello"].len(), 1, "{sha}: {t:?}");
        assert_eq!(t["kiln/hello"][0].state, "success", "{sha}: {t:?}");
    }
}

/// Tag writes (`PUT .../manifests/<tag>`) the registry logged for `tag`.
fn tag_puts(reg: &Registry, tag: &str) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /v2/acme/hello/manifests/{tag} ")))
        .count()
}

/// Two hosts (`ids`) watching `repo`, whose one commit runs `sleep 6`: waits until one of
/// them runs it. Returns the hosts, the commit and the index of the host running it.
fn pair_running(farm: &Farm, ids: [&str; 2], repo: &str) -> (Vec<Host>, String, usize) {
    let sha = farm
        .gh
        .create(repo, &refs(&files(&format!("farm {}", ids[0]), "sleep 6")));
    let hosts: Vec<Host> = ids
        .iter()
        .map(|id| farm.host(id, &[repo], &["main"]))
        .collect();
    let builds = hosts[0]
        .d()
        .wait_builds("the build to run", Duration::from_secs(60), |b| {
            has(b, &sha, "running")
        });
    let runner = build_of(&builds, &sha).unwrap()["host"].clone();
    let i = hosts.iter().position(|h| runner == h.id.as_str()).unwrap();
    (hosts, sha, i)
}

fn files(marker: &str, sleep: &str) -> Vec<(&'static str, Vec<u8>)> {
    hello(marker, sleep)
}

#[test]
fn three_hosts_build_each_commit_once_and_one_of_them_polls() {
    let farm = Farm::new();
    let branches = ["main", "f1", "f2"];
    let mut shas = Vec::new();
    for repo in ["acme/one", "acme/two"] {
        shas.push(
            farm.gh
                .create(repo, &refs(&files(&format!("farm {repo}"), "sleep 2"))),
        );
        for b in &branches[1..] {
            let m = format!("farm {repo} {b}");
            shas.push(farm.gh.branch(repo, b, &[("marker.txt", m.as_bytes())], b));
        }
    }
    let hosts: Vec<Host> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| farm.host(id, &["acme/one", "acme/two"], &branches))
        .collect();
    let builds = hosts[0]
        .d()
        .wait_builds("six builds", Duration::from_secs(300), |b| {
            shas.iter().all(|s| has(b, s, "success"))
        });
    assert_eq!(
        builds.len(),
        shas.len(),
        "one build record per commit: {builds:#?}"
    );
    let by_host: BTreeMap<String, usize> = builds.iter().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b["host"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    eprintln!("builds per host: {by_host:?}");
    assert!(by_host.len() >= 2, "the work was not shared: {by_host:?}");
    for b in &builds {
        assert_eq!(b["attempts"], 1, "{b:#}");
    }
    // Any host shows the whole farm.
    for h in &hosts[1..] {
        let mut theirs: Vec<String> = h.d().builds().iter().map(|b| b["id"].to_string()).collect();
        let mut ours: Vec<String> = builds.iter().map(|b| b["id"].to_string()).collect();
        theirs.sort();
        ours.sort();
        assert_eq!(theirs, ours, "{} shows another list", h.id);
    }
    let (st, body) = get(&format!("{}/api/hosts", hosts[2].url));
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let up: BTreeSet<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["state"] == "up")
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(up, BTreeSet::from(["h1", "h2", "h3"]), "{body}");
    one_success_each(&farm.gh, &shas);
    for sha in &shas {
        assert_eq!(tag_puts(&farm.reg, sha), 1, "{sha} tagged more than once");
    }
    // A webhook delivery reaching two hosts (say, retried through a load balancer) is
    // handled once.
    let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/one"}}"#;
    let answers: Vec<String> = hosts[..2]
        .iter()
        .map(|h| {
            let (st, a) = hook(h.d(), "push", "farm-delivery-1", body, &sign(body));
            assert_eq!(st, 200, "{a}");
            a
        })
        .collect();
    assert_eq!(
        answers.iter().filter(|a| a.contains("duplicate")).count(),
        1,
        "{answers:?}"
    );

    // Idle: the GitHub GETs are one poller's (2 repos x 3 branches a second), not three.
    let before = farm.gh.requests().len();
    let window = Duration::from_secs(6);
    std::thread::sleep(window);
    let gets = farm.gh.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    let one_poller = 6 * window.as_secs() as usize;
    eprintln!("idle GitHub GETs in {window:?}: {gets} (one poller: about {one_poller})");
    assert!(
        gets <= one_poller * 13 / 10 + 2,
        "{gets} GETs in {window:?}: more than one host polls"
    );
    assert!(gets >= one_poller / 2, "nobody polls: {gets} GETs");
}

#[test]
fn a_killed_host_s_build_is_finished_by_another_and_its_container_removed_on_return() {
    let farm = Farm::new();
    let (mut hosts, sha, dead) = pair_running(&farm, ["k1", "k2"], "acme/slow");
    let alive = 1 - dead;
    let runner = hosts[dead].id.clone();
    wait_until("the build container", Duration::from_secs(30), || {
        !containers_labelled("dev.kiln.host", &runner).is_empty()
    });
    let killed_at = Instant::now();
    hosts[dead].kill9();
    let builds = hosts[alive]
        .d()
        .wait_builds("the takeover", Duration::from_secs(120), |b| {
            has(b, &sha, "success")
        });
    let b = build_of(&builds, &sha).unwrap();
    eprintln!(
        "taken over and finished {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(b["host"], hosts[alive].id.as_str());
    assert_eq!(b["attempts"], 2, "{b:#}");
    assert_eq!(builds.len(), 1);
    one_success_each(&farm.gh, std::slice::from_ref(&sha));
    assert_eq!(tag_puts(&farm.reg, &sha), 1);

    // The killed host comes back and removes its own leftover, and nothing else.
    assert_eq!(containers_labelled("dev.kiln.host", &runner).len(), 1);
    hosts[dead].restart();
    wait_until("the leftover's removal", Duration::from_secs(30), || {
        containers_labelled("dev.kiln.host", &runner).is_empty()
    });
    // The removal is logged once the engine has answered: a moment after the container is gone.
    wait_until("the removal's log line", Duration::from_secs(10), || {
        hosts[dead]
            .d()
            .log()
            .contains("removed containers left by an earlier run")
    });
}

#[test]
fn a_host_paused_past_its_lease_publishes_nothing_when_it_wakes() {
    let farm = Farm::new();
    let (hosts, sha, paused) = pair_running(&farm, ["p1", "p2"], "acme/slow");
    let other = 1 - paused;
    // The other host's dashboard shows the running build's log from the state.
    let id = hosts[other].d().builds()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the first attempt's log on the other host's page",
        Duration::from_secs(10),
        || {
            get(&format!("{}/builds/{id}", hosts[other].url))
                .1
                .contains(&format!("attempt 1 on {}", hosts[paused].id))
        },
    );
    hosts[paused].signal(libc::SIGSTOP);
    let builds = hosts[other]
        .d()
        .wait_builds("the takeover", Duration::from_secs(120), |b| {
            has(b, &sha, "success")
        });
    assert_eq!(
        build_of(&builds, &sha).unwrap()["host"],
        hosts[other].id.as_str()
    );
    let statuses_before = farm.gh.statuses().len();
    let puts_before = tag_puts(&farm.reg, &sha);
    assert_eq!(puts_before, 1);

    // Wake the paused host: it finds its lease gone and records, pushes and sends nothing.
    hosts[paused].signal(libc::SIGCONT);
    wait_until(
        "the woken host to see its lease lost",
        Duration::from_secs(30),
        || hosts[paused].d().log().contains("lease lost"),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(tag_puts(&farm.reg, &sha), 1, "the woken host moved a tag");
    // The outbox may still be sending what was recorded under a held lease (the paused host
    // may have held the claim on the oldest status, which keeps the later ones waiting for
    // it): what was sent is at most one pending per attempt and, below, one success.
    let sent = farm.gh.statuses();
    let pending = sent
        .iter()
        .filter(|s| s.sha == sha && s.state == "pending")
        .count();
    assert!(
        pending <= 2,
        "more than a pending per attempt (statuses before the wake: {statuses_before}): {sent:?}"
    );
    one_success_each(&farm.gh, std::slice::from_ref(&sha));
    let b = hosts[paused].d().builds();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["state"], "success");
    assert_eq!(b[0]["host"], hosts[other].id.as_str());

    // The log in the state, as any host's dashboard streams it: both attempts, numbered
    // without a gap, and nothing from the host that lost its lease after it lost it.
    assert_eq!(b[0]["id"], id.as_str());
    let (st, _, sse) = http_full(
        "GET",
        &format!("{}/builds/{id}/events", hosts[paused].url),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    let ids: Vec<u64> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    for want in [
        format!("attempt 1 on {}", hosts[paused].id),
        format!("attempt 2 on {}", hosts[other].id),
        "kiln: build success".to_owned(),
    ] {
        assert!(
            sse.contains(&want),
            "{want:?} not in the stored log:\n{sse}"
        );
    }
    assert!(!sse.contains("lease lost"), "{sse}");
    assert!(sse.ends_with("event: end\ndata: success\n\n"), "{sse}");
}

#[test]
fn when_the_poller_dies_another_host_finds_new_commits() {
    let farm = Farm::new();
    let first = farm.gh.create("acme/lead", &refs(&files("farm lead", "")));
    let mut hosts: Vec<Host> = ["l1", "l2"]
        .iter()
        .map(|id| farm.host(id, &["acme/lead"], &["main"]))
        .collect();
    hosts[0]
        .d()
        .wait_builds("the first build", Duration::from_secs(120), |b| {
            has(b, &first, "success")
        });
    let leader = hosts
        .iter()
        .position(|h| {
            h.d()
                .log()
                .contains("this host polls the forges for the farm now")
        })
        .expect("a poller");
    let survivor = 1 - leader;
    assert!(
        !hosts[survivor]
            .d()
            .log()
            .contains("this host polls the forges for the farm now"),
        "two pollers"
    );
    hosts[leader].kill9();
    let pushed = Instant::now();
    let second = farm
        .gh
        .commit("acme/lead", &[("marker.txt", b"farm lead 2")], "second");
    hosts[survivor]
        .d()
        .wait_builds("the new commit", Duration::from_secs(60), |b| {
            b.iter().any(|x| x["commit"] == second)
        });
    let found = pushed.elapsed();
    eprintln!("a new commit was found {found:?} after the poller died (lease 3 s, poll 1 s)");
    assert!(found < Duration::from_secs(8), "found only after {found:?}");
    hosts[survivor]
        .d()
        .wait_builds("its build", Duration::from_secs(120), |b| {
            has(b, &second, "success")
        });
}

#[test]
fn a_database_restart_loses_and_duplicates_nothing() {
    let farm = Farm::new();
    let branches = ["main", "f1", "f2", "f3"];
    let mut shas = vec![
        farm.gh
            .create("acme/db", &refs(&files("farm db", "sleep 3"))),
    ];
    for b in &branches[1..] {
        let m = format!("farm db {b}");
        shas.push(
            farm.gh
                .branch("acme/db", b, &[("marker.txt", m.as_bytes())], b),
        );
    }
    let hosts: Vec<Host> = ["d1", "d2"]
        .iter()
        .map(|id| farm.host(id, &["acme/db"], &branches))
        .collect();
    hosts[0]
        .d()
        .wait_builds("builds to run", Duration::from_secs(60), |b| {
            b.iter().any(|x| x["state"] == "running")
        });
    farm.pg.stop();
    std::thread::sleep(Duration::from_secs(8));
    for h in &hosts {
        assert!(h.daemon.is_some());
        assert_eq!(
            get(&format!("{}/healthz", h.url)).0,
            503,
            "healthz during the outage"
        );
    }
    farm.pg.restart();
    let builds = hosts[1].d().wait_builds(
        "every build after the restart",
        Duration::from_secs(300),
        |b| shas.iter().all(|s| has(b, s, "success")),
    );
    assert_eq!(builds.len(), shas.len(), "{builds:#?}");
    let attempts: Vec<_> = builds.iter().map(|b| b["attempts"].clone()).collect();
    eprintln!("attempts per build across the outage: {attempts:?}");
    one_success_each(&farm.gh, &shas);
    for sha in &shas {
        assert_eq!(tag_puts(&farm.reg, sha), 1, "{sha}");
    }
    for h in &hosts {
        // The same processes all along: no crash, no restart loop.
        assert_eq!(
            unsafe { libc::kill(h.d().pid() as libc::pid_t, 0) },
            0,
            "{} died",
            h.id
        );
        let log = h.d().log();
        assert!(!log.contains("panicked"), "{}", h.id);
        assert_eq!(
            log.matches("kiln daemon ready").count(),
            1,
            "{} restarted",
            h.id
        );
    }
    let lost = hosts
        .iter()
        .filter(|h| {
            let log = h.d().log();
            log.contains("lease lost") || log.contains("cannot renew the lease")
        })
        .count();
    eprintln!("hosts whose running build met the outage: {lost}");

    // A host that starts while the database is down waits for it instead of exiting (and
    // being restarted in a loop by systemd).
    farm.pg.stop();
    let late = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Longer than one connection attempt (5 s), so the host has to wait.
            std::thread::sleep(Duration::from_secs(8));
            farm.pg.restart();
        });
        farm.host("d3", &["acme/db"], &branches)
    });
    assert!(
        late.d()
            .log()
            .contains("the database does not answer; waiting for it"),
        "{}",
        late.d().log()
    );
    assert_eq!(late.d().builds().len(), shas.len());
}

#[test]
fn a_drained_host_gives_its_build_back_at_once() {
    let mut farm = Farm::new();
    // A takeover by lease expiry would take 30 s.
    farm.lease = "30s";
    let (mut hosts, sha, drained) = pair_running(&farm, ["s1", "s2"], "acme/drain");
    let other = 1 - drained;
    let mut d = hosts[drained].daemon.take().unwrap();
    let stopping = Instant::now();
    let (st, _) = d.signal(libc::SIGTERM);
    assert!(st.success(), "{st}");
    let builds =
        hosts[other]
            .d()
            .wait_builds("the other host to take it", Duration::from_secs(20), |b| {
                b.iter()
                    .any(|x| x["commit"] == sha.as_str() && x["host"] == hosts[other].id.as_str())
            });
    let took = stopping.elapsed();
    eprintln!("a drained host's build was running elsewhere {took:?} after SIGTERM (lease 30 s)");
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: waited for the lease"
    );
    assert_eq!(
        build_of(&builds, &sha).unwrap()["attempts"],
        1,
        "a drain is not a failed attempt"
    );
    hosts[other]
        .d()
        .wait_builds("its end", Duration::from_secs(120), |b| {
            has(b, &sha, "success")
        });
    one_success_each(&farm.gh, std::slice::from_ref(&sha));
    let (_, body) = get(&format!("{}/api/hosts", hosts[other].url));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let me = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == hosts[drained].id.as_str())
        .unwrap();
    assert_eq!(me["state"], "stopped", "{body}");
    drop(d);
    let _ = &mut hosts;
}

#[test]
fn a_password_in_the_database_url_never_shows() {
    let t = tempfile::tempdir().unwrap();
    let secret = "url-password-Kq93";
    for (url, expect) in [
        // Not a PostgreSQL URL: the config check says so without the password.
        (
            format!("mysql://kiln:{secret}@127.0.0.1:1/kiln"),
            "not a PostgreSQL URL",
        ),
        // Nobody listens: the daemon waits for the database, and names it without it.
        (
            format!("postgres://kiln:{secret}@127.0.0.1:1/kiln"),
            "postgres://kiln:***@127.0.0.1:1/kiln",
        ),
    ] {
        let (config, _) = write_config(
            t.path(),
            &format!("database = \"{url}\"\n[[repo]]\npath = \"/srv/none\"\n"),
        );
        let child = kiln()
            .args(["daemon", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // One connection attempt lasts up to 5 s before the daemon says it waits.
        std::thread::sleep(Duration::from_secs(7));
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{text}");
        assert!(!text.contains(secret), "the password showed: {text}");
    }
}

#[test]
fn a_second_machine_with_the_same_host_id_is_refused() {
    let farm = Farm::new();
    let first = farm.host("twin", &["acme/none"], &["main"]);
    // The same config on another machine (another state directory, another port).
    let text = std::fs::read_to_string(&first.config).unwrap();
    let other = first.dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let text = text
        .replace(
            &format!("state_dir = \"{}\"", first.dir.join("state").display()),
            &format!("state_dir = \"{}\"", other.join("state").display()),
        )
        .replace(
            first.url.trim_start_matches("http://"),
            &format!("127.0.0.1:{}", common::net::free_port()),
        );
    let config = other.join("kiln.toml");
    std::fs::write(&config, text).unwrap();
    let out = kiln()
        .args(["daemon", "--config"])
        .arg(&config)
        .checked_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("host_id \"twin\" is in use"), "{err}");
    // The first host kept its work and its role.
    assert_eq!(get(&format!("{}/healthz", first.url)).0, 200);
}

/// With cache affinity, a repository's builds go to the host holding its warm cache: after
/// the first round (which warms each host up), every build of both repositories is warm.
/// (`cargo bench --bench farm` compares this with affinity off.)
#[test]
fn builds_go_to_the_host_holding_their_warm_cache() {
    let warm = common::farm::warm_rounds("30s", 3);
    // Round 1 may still find the host warm for a repository busy: it goes elsewhere cold.
    assert_eq!(&warm[1..], [2, 2], "warm builds per round: {warm:?}");
}
