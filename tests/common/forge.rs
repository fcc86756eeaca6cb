//! The stand-in forge: GitHub's REST shapes as kiln's `forge::github` speaks them (branch
//! heads and tags with ETags and 304s per token, rate-limit headers, 403 rate limits, the
//! repository's clone and web URLs, posted commit statuses) and its webhook deliveries
//! (signed as GitHub signs them), backed by real git repositories that `git daemon` serves.
//! GitHub itself is out of reach here; this is the one test double in the daemon tests, and
//! it is a real HTTP server over real repositories.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::Digest as _;

use super::net::free_port;
use super::{git, require};

/// A request the fake answered.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub authorized: bool,
    pub at: Instant,
}

/// A commit status kiln posted, with where it went.
#[derive(Clone, Debug)]
pub struct PostedStatus {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
}

#[derive(Default)]
struct Inner {
    token: Option<String>,
    requests: Vec<ApiRequest>,
    statuses: Vec<PostedStatus>,
    remaining: i64,
    /// Answer every request with a 403 rate limit until this Unix time.
    limited_until: Option<u64>,
}

struct Ctx {
    root: PathBuf,
    git_url: String,
    inner: Mutex<Inner>,
}

type Shared = Arc<Ctx>;

/// The fake GitHub and the `git daemon` serving its repositories.
pub struct FakeGitHub {
    pub api_url: String,
    /// `git://127.0.0.1:PORT`: repositories are at `<git_url>/<owner>/<name>`.
    pub git_url: String,
    root: tempfile::TempDir,
    shared: Shared,
    git_daemon: Child,
    _server: std::thread::JoinHandle<()>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl FakeGitHub {
    /// Start the API (expecting `token` as a bearer token, when given) and `git daemon`.
    pub fn start(token: Option<&str>) -> FakeGitHub {
        require("git");
        let root = tempfile::tempdir().unwrap();
        let gport = free_port();
        let shared: Shared = Arc::new(Ctx {
            root: root.path().to_owned(),
            git_url: format!("git://127.0.0.1:{gport}"),
            inner: Mutex::new(Inner {
                token: token.map(str::to_owned),
                remaining: 5000,
                ..Default::default()
            }),
        });
        let git_daemon = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={gport}"),
                &format!("--base-path={}", root.path().display()),
            ])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", gport)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        let s = shared.clone();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new()
                    .route("/repos/{owner}/{name}", get(repo))
                    .route("/repos/{owner}/{name}/commits/{*branch}", get(head))
                    .route("/repos/{owner}/{name}/tags", get(tags))
                    .route("/repos/{owner}/{name}/branches", get(branches))
                    .route("/repos/{owner}/{name}/statuses/{sha}", post(status))
                    .with_state(s);
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            })
        });
        FakeGitHub {
            api_url,
            git_url: format!("git://127.0.0.1:{gport}"),
            root,
            shared,
            git_daemon,
            _server: server,
        }
    }

    /// The work tree of `full` (`owner/name`), which `git daemon` serves.
    pub fn dir(&self, full: &str) -> PathBuf {
        self.root.path().join(full)
    }

    /// Create `full` with one commit of `files` on `main`; returns its SHA.
    pub fn create(&self, full: &str, files: &[(&str, &[u8])]) -> String {
        let dir = self.dir(full);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        // GitHub serves any reachable commit by SHA; so must this server.
        git(&dir, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
        self.commit(full, files, "initial commit")
    }

    /// Commit `files` (added or changed) on the checked-out branch; returns the SHA.
    pub fn commit(&self, full: &str, files: &[(&str, &[u8])], message: &str) -> String {
        let dir = self.dir(full);
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            if path.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&dir, &["rev-parse", "HEAD"])
    }

    /// Create branch `name` from `main` with one more commit of `files`; returns its SHA.
    /// `main` stays checked out.
    pub fn branch(&self, full: &str, name: &str, files: &[(&str, &[u8])], message: &str) -> String {
        let dir = self.dir(full);
        git(&dir, &["checkout", "-q", "-b", name, "main"]);
        let sha = self.commit(full, files, message);
        git(&dir, &["checkout", "-q", "main"]);
        sha
    }

    /// Tag `sha` (annotated, as releases usually are).
    pub fn tag(&self, full: &str, name: &str, sha: &str) {
        git(&self.dir(full), &["tag", "-a", "-m", name, name, sha]);
    }

    pub fn statuses(&self) -> Vec<PostedStatus> {
        self.shared.inner.lock().unwrap().statuses.clone()
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// From now on answer every request with a 403 rate limit, until `secs` from now.
    pub fn rate_limit_for(&self, secs: u64) {
        self.shared.inner.lock().unwrap().limited_until = Some(unix_now() + secs);
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        let _ = self.git_daemon.kill();
        let _ = self.git_daemon.wait();
    }
}

/// Check the token and the rate limit; record the request. `Err` is the answer to give.
fn admit(
    s: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    costly: bool,
) -> Result<(String, HeaderMap), Box<Response>> {
    let mut inner = s.inner.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authorized = inner
        .token
        .as_ref()
        .is_some_and(|t| auth == format!("Bearer {t}"));
    let token_key = if authorized {
        auth.to_owned()
    } else {
        String::new()
    };
    let mut out = HeaderMap::new();
    let reset = inner.limited_until.unwrap_or(unix_now() + 3600);
    out.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
    let record = |status: u16, inner: &mut Inner| {
        inner.requests.push(ApiRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            authorized,
            at: Instant::now(),
        })
    };
    if inner.token.is_some() && !authorized {
        record(401, &mut inner);
        return Err(Box::new(
            (StatusCode::UNAUTHORIZED, r#"{"message":"Bad credentials"}"#).into_response(),
        ));
    }
    if let Some(until) = inner.limited_until {
        if unix_now() < until {
            record(403, &mut inner);
            out.insert("x-ratelimit-remaining", "0".parse().unwrap());
            return Err(Box::new(
                (
                    StatusCode::FORBIDDEN,
                    out,
                    r#"{"message":"API rate limit exceeded"}"#,
                )
                    .into_response(),
            ));
        }
        inner.limited_until = None;
    }
    if costly {
        inner.remaining -= 1;
    }
    out.insert(
        "x-ratelimit-remaining",
        inner.remaining.to_string().parse().unwrap(),
    );
    record(0, &mut inner);
    Ok((token_key, out))
}

/// Mark the last request's status (admit records it before the answer is known).
fn answered(s: &Shared, status: u16) {
    let mut inner = s.inner.lock().unwrap();
    if let Some(r) = inner.requests.last_mut()
        && r.status == 0
    {
        r.status = status;
    }
}

/// A conditional answer: 304 when `If-None-Match` names the current ETag (free), else 200.
fn conditional(
    s: &Shared,
    token_key: &str,
    mut out: HeaderMap,
    headers: &HeaderMap,
    body: String,
) -> Response {
    let etag = format!(
        "\"{}\"",
        hex::encode(&sha2::Sha256::digest(format!("{token_key}\n{body}").as_bytes())[..12])
    );
    out.insert("etag", etag.parse().unwrap());
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        // A 304 costs no rate limit: give the unit back.
        let mut inner = s.inner.lock().unwrap();
        inner.remaining += 1;
        out.insert(
            "x-ratelimit-remaining",
            inner.remaining.to_string().parse().unwrap(),
        );
        drop(inner);
        answered(s, 304);
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    answered(s, 200);
    (StatusCode::OK, out, body).into_response()
}

async fn repo(
    State(s): State<Shared>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{name}");
    let (key, out) = match admit(&s, "GET", &path, &headers, true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !s.root.join(&owner).join(&name).is_dir() {
        answered(&s, 404);
        return (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response();
    }
    let body = serde_json::json!({
        "full_name": format!("{owner}/{name}"),
        "html_url": format!("https://github.com/{owner}/{name}"),
        "clone_url": format!("{}/{owner}/{name}", s.git_url),
        "default_branch": "main",
    })
    .to_string();
    conditional(&s, &key, out, &headers, body)
}

async fn head(
    State(s): State<Shared>,
    UrlPath((owner, name, branch)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/repos/{owner}/{name}/commits/{branch}");
    let (key, out) = match admit(&s, "GET", &path, &headers, true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Some(sha) = branch.strip_suffix("/statuses") {
        // GET /repos/{o}/{r}/commits/{sha}/statuses: newest first, as GitHub lists them.
        let repo = format!("{owner}/{name}");
        let list: Vec<serde_json::Value> = s
            .inner
            .lock()
            .unwrap()
            .statuses
            .iter()
            .rev()
            .filter(|st| st.repo == repo && st.sha == sha)
            .map(|st| {
                serde_json::json!({
                    "context": st.context,
                    "state": st.state,
                    "description": st.description,
                    "target_url": st.target_url,
                })
            })
            .collect();
        return conditional(
            &s,
            &key,
            out,
            &headers,
            serde_json::Value::from(list).to_string(),
        );
    }
    let dir = s.root.join(&owner).join(&name);
    let sha = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(sha) = sha else {
        answered(&s, 422);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"message":"No commit found for SHA"}"#,
        )
            .into_response();
    };
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if accept.contains("application/vnd.github.sha") {
        sha
    } else {
        serde_json::json!({ "sha": sha }).to_string()
    };
    conditional(&s, &key, out, &headers, body)
}

async fn tags(
    State(s): State<Shared>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    listing(&s, &owner, &name, "tags", &headers)
}

async fn branches(
    State(s): State<Shared>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    listing(&s, &owner, &name, "heads", &headers)
}

/// `GET /repos/{o}/{r}/tags` or `/branches` (`refs/<kind>`): `[{name, commit: {sha}}]`, tags
/// peeled to their commits.
fn listing(s: &Shared, owner: &str, name: &str, kind: &str, headers: &HeaderMap) -> Response {
    let what = if kind == "heads" { "branches" } else { kind };
    let path = format!("/repos/{owner}/{name}/{what}");
    let (key, out) = match admit(s, "GET", &path, headers, true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let dir = s.root.join(owner).join(name);
    let listing = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args([
            "for-each-ref",
            "--format=%(refname:lstrip=2) %(objectname) %(*objectname)",
            &format!("refs/{kind}"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let refs: Vec<serde_json::Value> = listing
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            let (n, obj, peeled) = (p.next()?, p.next()?, p.next().unwrap_or(""));
            let sha = if peeled.is_empty() { obj } else { peeled };
            Some(serde_json::json!({"name": n, "commit": {"sha": sha}}))
        })
        .collect();
    conditional(
        s,
        &key,
        out,
        headers,
        serde_json::Value::from(refs).to_string(),
    )
}

async fn status(
    State(s): State<Shared>,
    UrlPath((owner, name, sha)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{name}/statuses/{sha}");
    let (_, out) = match admit(&s, "POST", &path, &headers, true) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let st = PostedStatus {
        repo: format!("{owner}/{name}"),
        sha,
        state: v["state"].as_str().unwrap_or("").to_owned(),
        context: v["context"].as_str().unwrap_or("").to_owned(),
        description: v["description"].as_str().unwrap_or("").to_owned(),
        target_url: v["target_url"].as_str().map(str::to_owned),
    };
    let ok = ["pending", "success", "failure", "error"].contains(&st.state.as_str())
        && !st.context.is_empty()
        && st.description.chars().count() <= 140;
    if !ok {
        answered(&s, 422);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            out,
            r#"{"message":"Validation Failed"}"#,
        )
            .into_response();
    }
    s.inner.lock().unwrap().statuses.push(st);
    answered(&s, 201);
    (StatusCode::CREATED, out, "{}").into_response()
}

/// Terminal statuses (success, failure, error) of `sha` by context.
pub fn terminal_statuses(all: &[PostedStatus], sha: &str) -> BTreeMap<String, Vec<PostedStatus>> {
    let mut out: BTreeMap<String, Vec<PostedStatus>> = BTreeMap::new();
    for s in all.iter().filter(|s| s.sha == sha && s.state != "pending") {
        out.entry(s.context.clone()).or_default().push(s.clone());
    }
    out
}

/// The `X-Hub-Signature-256` of `body` under [`HOOK_SECRET`](super::daemon::HOOK_SECRET).
pub fn sign(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(super::daemon::HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Deliver a webhook to the daemon `d`, as GitHub does.
pub fn hook(
    d: &super::daemon::Daemon,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: &str,
) -> (u16, String) {
    super::daemon::http(
        "POST",
        &format!("{}/hooks/github", d.url),
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", signature),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}
