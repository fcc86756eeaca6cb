//! The daemon at rest and its reaction times: `cargo bench --bench daemon_idle`.
//!
//! 1. An idle daemon watching 100 GitHub repositories (the in-test GitHub over real
//!    repositories, polled every 60 s) whose heads it already knows, measured over 60 s: peak
//!    RSS (target <= 30 MB), CPU (target < 1 %) and the API requests that cost rate limit
//!    (target 0: every poll a 304).
//! 2. From a webhook delivery to the build's start (target < 100 ms), and from the end of the
//!    build's steps to the SHA tag being visible in the registry; median of 5.
//!
//! Warm-up: a first daemon sees the 100 repositories (their commits have no recipe, so each
//! fails at once) and reports them; it is stopped once the outbox is empty. The measured
//! daemon is a fresh process on the same state: heads and ETags known.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, get, has, http};
use common::forge::FakeGitHub;
use common::net::Registry;

const REPOS: usize = 100;
const TOKEN: &str = "ghp_benchToken";
const HOOK_SECRET: &str = "bench-hook-secret";
const HELLO_SH: &[u8] = include_bytes!("../examples/hello/hello.sh");
const HELLO_TOML: &[u8] = include_bytes!("../examples/hello/kiln.toml");

/// (utime + stime) in clock ticks, and VmHWM in KiB, of a process.
fn proc_stats(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (ticks, hwm)
}

fn ms(v: &serde_json::Value) -> Option<i64> {
    let s = v.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sign(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn config(gh: &FakeGitHub, dir: &Path, reg: &str, with_hook_repo: bool) -> String {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, HOOK_SECRET).unwrap();
    let mut s = format!(
        "concurrency = 2\n[github]\napi_url = \"{}\"\ntoken_file = \"{}\"\npoll_interval = \"60s\"\nwebhook_secret_file = \"{}\"\n[registry]\nurl = \"{reg}/bench\"\n",
        gh.api_url,
        token.display(),
        secret.display()
    );
    for i in 0..REPOS {
        s.push_str(&format!("[[repo]]\ngithub = \"acme/r{i:03}\"\n"));
    }
    if with_hook_repo {
        s.push_str("[[repo]]\ngithub = \"acme/hook\"\n");
    }
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("daemon_idle: bench");
        return;
    }
    common::builder_image("busybox");
    let gh = FakeGitHub::start(Some(TOKEN));
    for i in 0..REPOS {
        gh.create(
            &format!("acme/r{i:03}"),
            &[("README", format!("repo {i}").as_bytes())],
        );
    }
    let hook_sha = gh.create(
        "acme/hook",
        &[("hello.sh", HELLO_SH), ("kiln.toml", HELLO_TOML)],
    );
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();

    eprintln!("warm-up: a first daemon sees {REPOS} repositories and reports them");
    let warm = Daemon::start(
        t.path(),
        &config(&gh, t.path(), &reg.addr, true),
        "warn",
        &[],
    );
    warm.wait_builds("the warm-up", Duration::from_secs(600), |b| {
        b.len() > REPOS
            && b.iter()
                .all(|x| x["state"] != "queued" && x["state"] != "running")
            && has(b, &hook_sha, "success")
    });
    let want_statuses = REPOS + 2;
    let deadline = Instant::now() + Duration::from_secs(600);
    while gh.statuses().len() < want_statuses {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(warm);

    eprintln!("measuring: an idle daemon, {REPOS} repositories polled every 60s, for 60s");
    let (cfg, url) = (t.path().join("kiln.toml"), {
        let text = std::fs::read_to_string(t.path().join("kiln.toml")).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        format!("http://{listen}")
    });
    let d = Daemon::start_with(t.path(), cfg, url, "warn", &[]);
    let pid = d.pid();
    let before = gh.requests().len();
    let (ticks0, _) = proc_stats(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let (ticks1, hwm) = proc_stats(pid);
    let wall = t0.elapsed().as_secs_f64();
    let window: Vec<_> = gh.requests()[before..].to_vec();
    let costly = window.iter().filter(|r| r.status != 304).count();
    let hz = 100.0; // USER_HZ
    let cpu = (ticks1 - ticks0) as f64 / hz / wall * 100.0;
    println!("idle, {REPOS} repos, {wall:.0}s:");
    println!(
        "  peak RSS        {:.1} MB (target <= 30 MB)",
        hwm as f64 / 1024.0
    );
    println!("  CPU             {cpu:.2} % of one core (target < 1 %)");
    println!(
        "  GitHub requests {} ({} answered 304; {costly} cost rate limit, target 0)",
        window.len(),
        window.len() - costly
    );

    eprintln!("measuring: webhook delivery to build start, and steps' end to the tag, 5 times");
    let mut to_start = Vec::new();
    let mut to_tag = Vec::new();
    for i in 0..5 {
        let sha = gh.commit(
            "acme/hook",
            &[("marker", format!("{i}").as_bytes())],
            "bench",
        );
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/hook"}}"#;
        let sent = now_ms();
        let (status, _) = http(
            "POST",
            &format!("{}/hooks/github", d.url),
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &format!("bench-{i}")),
                ("X-Hub-Signature-256", &sign(body)),
            ],
            body,
        );
        assert_eq!(status, 200);
        // Watch for the SHA tag in the registry while the build runs.
        let tag_url = format!("http://{}/v2/bench/hello/manifests/{sha}", reg.addr);
        let visible = loop {
            let (s, _) = http(
                "HEAD",
                &tag_url,
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                b"",
            );
            if s == 200 {
                break now_ms();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let builds = d.wait_builds("the hooked build", Duration::from_secs(60), |b| {
            has(b, &sha, "success")
        });
        let id = builds[0]["id"].as_str().unwrap();
        let detail = d.build(id);
        let started = ms(&detail["started_at"]).unwrap();
        let run_end = detail["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "run")
            .and_then(|s| ms(&s["finished_at"]))
            .unwrap();
        to_start.push((started - sent) as f64);
        to_tag.push((visible - run_end) as f64);
    }
    println!(
        "webhook delivery -> build start: median {:.0} ms of {to_start:?} (target < 100 ms)",
        median(to_start.clone())
    );
    println!(
        "steps' end -> SHA tag visible: median {:.0} ms of {to_tag:?}",
        median(to_tag.clone())
    );
    let (_, metrics) = get(&format!("{}/metrics", d.url));
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kiln_github_rate_limit_remaining"))
        .unwrap_or("");
    println!("{line}");
}
