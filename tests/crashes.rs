//! Crash consistency: the daemon is killed with SIGKILL at random points of its builds, 20
//! times, against the real registry, the real Docker engine and a stand-in GitHub. Afterwards
//! every commit is published exactly once with exactly one terminal status, no container is
//! left and the SQLite state passes `PRAGMA integrity_check`.
//!
//! The schedule is random but seeded: the seed is printed, and `KILN_CRASH_SEED=<n>` replays
//! it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::forge::{FakeGitHub, terminal_statuses};
use common::net::Registry;
use common::recipe::*;
use common::*;

const ROUNDS: usize = 20;
/// The daemon gives a job up after 6 claims (each ended by the daemon dying): a job that
/// keeps killing its daemon is poison. This test is about consistency, not that rule, so it
/// does not kill a build whose job was claimed this many times; it lets it finish.
const SPARE_AFTER_ATTEMPTS: u64 = 4;

/// xorshift64*: a small seeded generator, so a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn running(builds: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    builds.iter().filter(|b| b["state"] == "running").collect()
}

#[test]
fn killed_twenty_times_mid_build_every_commit_is_published_once() {
    builder_image("busybox");
    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b69_6c6e_u64);
    eprintln!("crash schedule: seed {seed} (KILN_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed.max(1));

    // Four commits to start with (main and three branches); each round adds one more on its
    // own branch while the daemon is up, so there is always work to interrupt.
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let repo = "acme/crash";
    let mut shas = vec![gh.create(repo, &refs(&hello("crash main", "sleep 1")))];
    let mut branches = vec!["main".to_owned()];
    for i in 1..4 {
        let name = format!("b{i}");
        let marker = format!("crash {name}");
        shas.push(gh.branch(repo, &name, &[("marker.txt", marker.as_bytes())], &name));
        branches.push(name);
    }
    branches.extend((0..ROUNDS).map(|r| format!("r{r}")));
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let host = format!("crash-{}", std::process::id());
    let body = format!(
        "{}\n[registry]\nurl = \"{}/acme\"\n\n[[repo]]\ngithub = \"{repo}\"\nbranches = {:?}\n",
        github_config(
            &gh,
            t.path(),
            "1s",
            &format!("host_id = \"{host}\"\nconcurrency = 2")
        ),
        reg.addr,
        branches
    );
    let (config, url) = write_config(t.path(), &body);

    let started = Instant::now();
    let mut hits = 0;
    let mut containers_at_kill = 0;
    for round in 0..ROUNDS {
        let d = Daemon::start_with(t.path(), config.clone(), url.clone(), "trace", &[]);
        let name = format!("r{round}");
        let marker = format!("crash {name}");
        shas.push(gh.branch(repo, &name, &[("marker.txt", marker.as_bytes())], &name));
        let mut builds = d.wait_builds("a build to run", Duration::from_secs(60), |b| {
            !running(b).is_empty()
        });
        // A job that was claimed often is let through (see SPARE_AFTER_ATTEMPTS).
        loop {
            let spare: Vec<String> = running(&builds)
                .iter()
                .filter(|b| b["attempts"].as_u64().unwrap_or(0) >= SPARE_AFTER_ATTEMPTS)
                .map(|b| b["id"].as_str().unwrap().to_owned())
                .collect();
            if spare.is_empty() {
                break;
            }
            builds = d.wait_builds("a spared build to end", Duration::from_secs(120), |b| {
                b.iter().all(|x| {
                    !spare.iter().any(|id| x["id"] == id.as_str()) || x["state"] != "running"
                })
            });
        }
        std::thread::sleep(Duration::from_millis(rng.below(2500)));
        let at_kill = running(&d.builds()).len();
        containers_at_kill += containers_labelled("dev.kiln.host", &host).len();
        hits += usize::from(at_kill > 0);
        let mut d = d;
        d.kill9();
    }
    let killing = started.elapsed();
    eprintln!(
        "{ROUNDS} kills in {killing:?}: {hits} hit a running build; {containers_at_kill} build containers were running at the kills"
    );
    assert!(
        hits >= ROUNDS / 2,
        "only {hits} of {ROUNDS} kills hit a running build: the test did not test"
    );

    // The last run goes to the end.
    let mut d = Daemon::start_with(t.path(), config, url, "trace", &[]);
    let builds = d.wait_builds("every commit to succeed", Duration::from_secs(600), |b| {
        shas.iter().all(|sha| has(b, sha, "success"))
    });
    let mut per_commit: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for b in &builds {
        per_commit
            .entry(b["commit"].as_str().unwrap())
            .or_default()
            .push(b);
    }
    assert_eq!(per_commit.len(), shas.len(), "{builds:#?}");
    let mut attempts = Vec::new();
    for sha in &shas {
        let records = &per_commit[sha.as_str()];
        assert_eq!(records.len(), 1, "one build record for {sha}: {records:#?}");
        let b = records[0];
        assert_eq!(b["state"], "success", "{b:#}");
        attempts.push(b["attempts"].as_u64().unwrap());
        // Published once: the SHA tag holds the digest of the one successful build.
        let digest = b["artifacts"][0]["digest"].as_str().unwrap();
        assert_eq!(
            manifest_digest(&format!("docker://{}/acme/hello:{sha}", reg.addr)).as_deref(),
            Some(digest),
            "{sha}"
        );
    }
    eprintln!("attempts per commit: {attempts:?}");

    // One terminal status per commit, a success; none arrives later.
    wait_until("every success status", Duration::from_secs(120), || {
        let all = gh.statuses();
        shas.iter()
            .all(|sha| terminal_statuses(&all, sha).contains_key("kiln/hello"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let all = gh.statuses();
    for sha in &shas {
        let terminal = terminal_statuses(&all, sha);
        assert_eq!(terminal.len(), 1, "{sha}: {terminal:?}");
        let ss = &terminal["kiln/hello"];
        assert_eq!(ss.len(), 1, "exactly one terminal status for {sha}: {ss:?}");
        assert_eq!(ss[0].state, "success");
    }

    assert!(
        containers_labelled("dev.kiln.host", &host).is_empty(),
        "a container was left: {:?}",
        containers_labelled("dev.kiln.host", &host)
    );
    let (st, _) = d.signal(libc::SIGTERM);
    assert!(st.success(), "{st}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let check = rt.block_on(async {
        use kiln::state::prelude::*;
        let store = kiln::state::SqliteStore::open(&t.path().join("state/state.db"))
            .await
            .unwrap();
        store.integrity_check().await.unwrap()
    });
    assert_eq!(check, "ok");
}
