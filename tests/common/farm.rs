//! A farm for tests and benchmarks: `kiln daemon` hosts on one real PostgreSQL (a fresh
//! database), one real registry and one stand-in GitHub.

use std::path::PathBuf;

use super::daemon::*;
use super::forge::FakeGitHub;
use super::net::Registry;
use super::postgres::{DB_PASSWORD, Postgres};
use super::{GITHUB_TOKEN, builder_image};

/// A short lease, so takeovers happen within a test's patience.
pub const LEASE: &str = "3s";

pub struct Farm {
    pub pg: Postgres,
    pub gh: FakeGitHub,
    pub reg: Registry,
    pub db_url: String,
    /// `RUST_LOG` of the hosts (`trace` unless a benchmark says otherwise).
    pub log_level: &'static str,
    /// The hosts' `lease` ([`LEASE`] unless a test says otherwise).
    pub lease: &'static str,
    /// The hosts' GitHub `poll_interval` (`1s` unless a test says otherwise).
    pub poll: &'static str,
    /// More top-level config keys for the hosts (say, `cache_affinity = "5s"`).
    pub extra: String,
    root: tempfile::TempDir,
}

pub struct Host {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub url: String,
    pub daemon: Option<Daemon>,
    log_level: &'static str,
}

impl Farm {
    pub fn new() -> Farm {
        builder_image("busybox");
        let pg = Postgres::start();
        let db_url = pg.database();
        Farm {
            pg,
            gh: FakeGitHub::start(Some(GITHUB_TOKEN)),
            reg: Registry::start(),
            db_url,
            log_level: "trace",
            lease: LEASE,
            poll: "1s",
            extra: String::new(),
            root: tempfile::tempdir().unwrap(),
        }
    }

    /// A host watching `repos` (each with `branches`); started.
    pub fn host(&self, id: &str, repos: &[&str], branches: &[&str]) -> Host {
        let dir = self.root.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let password = secret_file(&dir, "db-password", DB_PASSWORD);
        let mut body = format!(
            "{}\n[registry]\nurl = \"{}/acme\"\n",
            github_config(
                &self.gh,
                &dir,
                self.poll,
                &format!(
                    "host_id = \"{id}\"\nlease = \"{}\"\nshutdown_grace = \"1s\"\ndatabase = \"{}\"\ndatabase_password_file = \"{password}\"\n{}",
                    self.lease, self.db_url, self.extra
                )
            ),
            self.reg.addr
        );
        for r in repos {
            body.push_str(&format!(
                "\n[[repo]]\ngithub = \"{r}\"\nbranches = {branches:?}\n"
            ));
        }
        let (config, url) = write_config(&dir, &body);
        let daemon = Daemon::start_with(&dir, config.clone(), url.clone(), self.log_level, &[]);
        Host {
            id: id.to_owned(),
            log_level: self.log_level,
            dir,
            config,
            url,
            daemon: Some(daemon),
        }
    }
}

impl Host {
    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    pub fn restart(&mut self) {
        self.daemon = Some(Daemon::start_with(
            &self.dir,
            self.config.clone(),
            self.url.clone(),
            self.log_level,
            &[],
        ));
    }

    pub fn kill9(&mut self) {
        let mut d = self.daemon.take().expect("running");
        d.kill9();
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.d().pid() as libc::pid_t, sig);
        }
    }
}

/// Cache affinity on a farm of two hosts (`concurrency = 1`) building two repositories whose
/// recipes keep a build cache: `rounds` times, one commit to each repository at once, each
/// round once the last has finished. Returns, per round, how many of its two builds found a
/// warm cache (from their logs).
pub fn warm_rounds(affinity: &str, rounds: usize) -> Vec<usize> {
    use super::recipe::{Recipe, refs};
    let mut farm = Farm::new();
    farm.log_level = "info";
    farm.extra = format!("cache_affinity = \"{affinity}\"");
    let repos = ["acme/cache-a", "acme/cache-b"];
    let files = |marker: String| {
        let recipe = Recipe::steps(&[
            "sleep 1; date > /cache/stamp",
            "mkdir -p /out/bin && cp /bin/busybox /out/bin/busybox",
        ])
        .build("cache = [\"/cache\"]")
        .then("[[artifact]]\nname = \"hello\"\nkind = \"image\"\nentrypoint = [\"/bin/busybox\"]\n")
        .bytes();
        vec![("kiln.toml", recipe), ("marker.txt", marker.into_bytes())]
    };
    let mut shas: Vec<String> = repos
        .iter()
        .map(|r| {
            farm.gh
                .create(r, &refs(&files(format!("{r} 0 {affinity}"))))
        })
        .collect();
    let hosts = [
        farm.host("warm-1", &repos, &["main"]),
        farm.host("warm-2", &repos, &["main"]),
    ];
    let d = hosts[0].d();
    let mut warm = Vec::new();
    for round in 0..=rounds {
        if round > 0 {
            shas = repos
                .iter()
                .map(|r| {
                    farm.gh
                        .commit(r, &refs(&files(format!("{r} {round} {affinity}"))), "next")
                })
                .collect();
        }
        let builds = d.wait_builds(
            "the round's builds",
            std::time::Duration::from_secs(120),
            |b| shas.iter().all(|s| has(b, s, "success")),
        );
        if round == 0 {
            continue;
        }
        let n = shas
            .iter()
            .filter(|s| {
                let b = builds.iter().find(|b| b["commit"] == s.as_str()).unwrap();
                let log = get(&format!(
                    "{}/builds/{}/log",
                    d.url,
                    b["id"].as_str().unwrap()
                ))
                .1;
                log.contains("kiln: cache /cache: warm")
            })
            .count();
        warm.push(n);
    }
    let configs: Vec<PathBuf> = hosts.iter().map(|h| h.config.clone()).collect();
    drop(hosts);
    for c in configs {
        super::run_ok(
            super::kiln()
                .args(["cache", "prune", "--all", "--config"])
                .arg(c),
        );
    }
    warm
}
