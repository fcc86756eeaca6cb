//! Running the real `kiln daemon` in tests: a config in a temp dir, the process, its log, and
//! its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::forge::FakeGitHub;
use super::net::free_port;
use super::{Checked, GITHUB_TOKEN, git, kiln, require};

/// A plain HTTP/1.1 request; returns the status and body.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_full(method, url, headers, body);
    (status, body)
}

/// `GET`, with the response's head (status line and headers) too.
pub fn get_full(url: &str) -> (u16, String, String) {
    http_full("GET", url, &[], b"")
}

/// A plain HTTP/1.1 request; returns the status, the head and the body.
pub fn http_full(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(url: &str) -> (u16, String) {
    http("GET", url, &[], b"")
}

/// A running `kiln daemon`.
pub struct Daemon {
    child: Option<Child>,
    pub url: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    log: PathBuf,
}

/// A directory for one daemon: its config goes to `dir/kiln.toml`, its state to
/// `dir/state`, its log to `dir/daemon.log`. `body` is the config without `state_dir` and
/// `listen`, which this fills in.
pub fn write_config(dir: &Path, body: &str) -> (PathBuf, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let text = format!(
        "state_dir = \"{}\"\nlisten = \"{listen}\"\n{body}",
        dir.join("state").display()
    );
    let path = dir.join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    (path, format!("http://{listen}"))
}

impl Daemon {
    /// Write the config and start the daemon with `RUST_LOG=rust_log` (tests use `trace`
    /// unless they measure the default level) and extra environment; wait until it answers
    /// `/healthz`. When dropped, the harness checks its logs for secrets.
    pub fn start(dir: &Path, body: &str, rust_log: &str, env: &[(&str, &str)]) -> Daemon {
        let (config, url) = write_config(dir, body);
        Daemon::start_with(dir, config, url, rust_log, env)
    }

    /// Start a daemon on an existing config (say, after a restart).
    pub fn start_with(
        dir: &Path,
        config: PathBuf,
        url: String,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = dir.join("daemon.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = kiln();
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start kiln daemon");
        let mut d = Daemon {
            child: Some(child),
            url,
            config,
            state_dir: dir.join("state"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = d
                .url
                .strip_prefix("http://")
                .and_then(|h| TcpStream::connect(h).ok())
                .is_some();
            if up && get(&format!("{}/healthz", d.url)).0 == 200 {
                break;
            }
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the daemon exited ({st}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not come up:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the daemon logged (this run and earlier ones in the same directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/builds` (newest first).
    pub fn builds(&self) -> Vec<serde_json::Value> {
        let (status, body) = get(&format!("{}/api/builds?limit=1000", self.url));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["builds"].as_array().cloned().unwrap_or_default()
    }

    pub fn build(&self, id: &str) -> serde_json::Value {
        let (status, body) = get(&format!("{}/api/builds/{id}", self.url));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Wait until `pred` holds for the builds; returns them. Panics with the log on timeout.
    pub fn wait_builds(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.builds();
            if pred(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; builds: {}\nlog:\n{}",
                serde_json::to_string_pretty(&b).unwrap(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send a signal and wait for the exit; returns the status and how long it took.
    pub fn signal(&mut self, sig: i32) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let t = Instant::now();
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        get(&format!("{}/metrics", self.url)).1
    }
}

impl Drop for Daemon {
    /// Stops the daemon; then, unless the test is already failing, checks that neither its
    /// log nor any build log holds a secret.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            return;
        }
        super::assert_no_secret("the daemon's log", self.log().as_bytes());
        for e in std::fs::read_dir(self.state_dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read(e.path()).unwrap_or_default();
            super::assert_no_secret(&format!("build log {}", e.path().display()), &text);
        }
    }
}

/// The builds' states, newest first.
pub fn states(builds: &[serde_json::Value]) -> Vec<String> {
    builds
        .iter()
        .map(|b| b["state"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Whether every build finished and `n` of them succeeded.
pub fn succeeded(builds: &[serde_json::Value], n: usize) -> bool {
    builds.iter().filter(|b| b["state"] == "success").count() >= n
}

/// Whether some build of `commit` is in `state`.
pub fn has(builds: &[serde_json::Value], commit: &str, state: &str) -> bool {
    builds
        .iter()
        .any(|b| b["commit"] == commit && b["state"] == state)
}

/// A metric's value from Prometheus text (`name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// The hello project, as the daemon tests commit it, and the config around it.

pub const HOOK_SECRET: &str = "hook-secret-for-tests";

/// Commit a change to `file` in a local work tree; returns the SHA.
pub fn commit(dir: &Path, file: &str, content: &str) -> String {
    std::fs::write(dir.join(file), content).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", &format!("change {file}")]);
    git(dir, &["rev-parse", "HEAD"])
}

/// The raw manifest `skopeo` reads for `reference` (`docker://...` or `oci:...`), if any.
pub fn skopeo_manifest(reference: &str) -> Option<serde_json::Value> {
    require("skopeo");
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", reference])
        .checked_output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("skopeo printed JSON"))
}

pub fn manifest_digest(reference: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", reference])
        .checked_output()
        .unwrap();
    out.status.success().then(|| {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
    })
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p.display().to_string()
}

pub fn github_config(gh: &FakeGitHub, dir: &Path, poll: &str, extra: &str) -> String {
    format!(
        "public_url = \"https://kiln.example.com\"\n{extra}\n[github]\napi_url = \"{}\"\ntoken_file = \"{}\"\npoll_interval = \"{poll}\"\nwebhook_secret_file = \"{}\"\n",
        gh.api_url,
        secret_file(dir, "token", GITHUB_TOKEN),
        secret_file(dir, "hook-secret", HOOK_SECRET),
    )
}
