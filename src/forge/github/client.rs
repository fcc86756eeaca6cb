//! A GitHub REST client for polling and commit statuses, gentle with rate limits.
//!
//! - Every GET is conditional: the last ETag (kept in the state, per token, since ETags are
//!   token-specific) goes in `If-None-Match`; a 304 costs no primary rate limit when the
//!   request is authorized, and the cached body answers it.
//! - `x-ratelimit-remaining`/`-reset`, 403/429 and `retry-after` close a gate that every
//!   request waits at: the daemon waits, it never spins.
//! - Mutating calls (statuses) are spaced at least a second apart, and a secondary rate limit
//!   is waited out and retried.
//! - The token is a [`Secret`]: it never reaches a log, an error or a URL.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, ETAG, HeaderMap, IF_NONE_MATCH};
use serde::Deserialize;
use sha2::Digest as _;

use super::Metrics;
use crate::forge::ForgeError;
use crate::secret::Secret;
use crate::state::{JobStore, NewStatus};
use crate::text::truncate;

/// How this forge names itself in errors.
const FORGE: &str = "GitHub";
/// Accept header for the cheapest head check: the bare SHA.
pub const ACCEPT_SHA: &str = "application/vnd.github.sha";
const ACCEPT_JSON: &str = "application/vnd.github+json";
/// Mutating calls are spaced at least this far apart.
const MUTATION_SPACING: Duration = Duration::from_secs(1);
/// GitHub keeps this many characters of a status's description.
const DESCRIPTION_MAX: usize = 140;
/// A secondary rate limit without `retry-after`: GitHub asks for at least a minute.
const SECONDARY_WAIT: Duration = Duration::from_secs(60);

/// The refs in a `GET /repos/{o}/{r}/tags` or `/branches` answer (both are `[{name, commit:
/// {sha}}]`), as (name, commit); entries whose commit is not a SHA are dropped.
pub fn parse_tags(body: &str) -> Result<Vec<(String, String)>, String> {
    let tags: Vec<TagEntry> = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(tags
        .into_iter()
        .filter(|t| crate::source::mirror::is_object_name(&t.commit.sha))
        .map(|t| (t.name, t.commit.sha.to_ascii_lowercase()))
        .collect())
}

/// A cached answer: the body and its `Link: rel="next"`.
#[derive(serde::Serialize, Deserialize)]
struct CachedPage {
    body: String,
    next: Option<String>,
}

/// The path (under `api_url`) of the `rel="next"` link, if it is on the same API.
pub fn next_link(link: &str, api_url: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })?
            .strip_prefix(api_url)
            .map(str::to_owned)
    })
}

/// What `GET /repos/{o}/{r}` says about a repository.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RepoInfo {
    pub clone_url: String,
    pub html_url: String,
}

#[derive(Deserialize)]
struct TagEntry {
    name: String,
    commit: TagCommit,
}

#[derive(Deserialize)]
struct TagCommit {
    sha: String,
}

/// A GitHub (or GitHub Enterprise) API client.
pub struct GitHubClient {
    http: reqwest::Client,
    /// `https://api.github.com` or `https://HOST/api/v3`.
    api_url: String,
    token: Option<Secret>,
    /// Keys the ETag cache: ETags belong to the token that got them.
    token_key: String,
    store: Arc<dyn JobStore>,
    metrics: Arc<Metrics>,
    /// No request before this instant (rate limited).
    gate: tokio::sync::Mutex<Option<Instant>>,
    /// When the last mutating call went out.
    last_mutation: tokio::sync::Mutex<Option<Instant>>,
}

fn sha_of(s: &str) -> String {
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8])
}

/// Percent-encode a ref for a URL path, keeping its slashes.
fn path_ref(r: &str) -> String {
    let mut out = String::new();
    for b in r.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GitHubClient {
    pub fn new(
        api_url: &str,
        token: Option<Secret>,
        store: Arc<dyn JobStore>,
        metrics: Arc<Metrics>,
    ) -> Result<GitHubClient, ForgeError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ForgeError::Network {
                forge: FORGE,
                what: "client".into(),
                message: e.to_string(),
            })?;
        let token_key = match &token {
            Some(t) => sha_of(t.expose()),
            None => "anonymous".to_owned(),
        };
        Ok(GitHubClient {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token,
            token_key,
            store,
            metrics,
            gate: tokio::sync::Mutex::new(None),
            last_mutation: tokio::sync::Mutex::new(None),
        })
    }

    /// The host that serves git for this API (`github.com` for `api.github.com`, the same
    /// host for GitHub Enterprise): the only host the token is sent to for fetches.
    pub fn git_host(&self) -> Option<String> {
        let rest = self.api_url.split_once("://")?.1;
        let host = rest.split('/').next()?;
        Some(match host.strip_prefix("api.") {
            Some(h) if host.eq_ignore_ascii_case("api.github.com") => h.to_owned(),
            _ => host.to_owned(),
        })
    }

    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Wait while the rate-limit gate is closed.
    pub async fn wait_gate(&self) {
        loop {
            let until = *self.gate.lock().await;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    /// When the gate opens again, if it is closed.
    pub async fn gate_closed_until(&self) -> Option<Instant> {
        (*self.gate.lock().await).filter(|t| *t > Instant::now())
    }

    async fn close_gate(&self, until: Instant) {
        let mut g = self.gate.lock().await;
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .header(ACCEPT, accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(t) = &self.token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        req
    }

    /// Read the rate-limit headers; close the gate when GitHub says to wait. Returns the wait
    /// if this answer was a rate limit.
    async fn observe(&self, status: StatusCode, h: &HeaderMap, body: &str) -> Option<Instant> {
        let remaining = h
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(r) = remaining {
            self.metrics.rate_limit_remaining.set(r);
        }
        if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let retry_after = crate::retry::retry_after(h);
        let reset = h
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|epoch| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
                at.duration_since(SystemTime::now()).unwrap_or_default()
            });
        let secondary = body.to_ascii_lowercase().contains("secondary rate limit");
        let wait = match (retry_after, remaining, reset) {
            (Some(ra), _, _) => ra,
            (None, Some(0), Some(reset)) => reset + Duration::from_secs(1),
            _ if secondary || status == StatusCode::TOO_MANY_REQUESTS => SECONDARY_WAIT,
            _ => return None, // a plain 403: not a rate limit
        };
        let until = Instant::now() + wait.max(Duration::from_secs(1));
        tracing::warn!(
            status = status.as_u16(),
            wait_s = wait.as_secs(),
            "GitHub rate limit reached; pausing GitHub requests"
        );
        self.close_gate(until).await;
        Some(until)
    }

    fn count(&self, status: &str) {
        self.metrics
            .requests
            .get_or_create(&crate::metrics::Metrics::status(status))
            .inc();
    }

    /// A conditional GET of `path`: the body, fresh or from the cache on a 304.
    async fn get(&self, what: &str, path: &str, accept: &str) -> Result<String, ForgeError> {
        Ok(self.get_page(what, path, accept).await?.0)
    }

    /// A conditional GET of `path` (relative to the API URL): the body and the next page's
    /// path from the `Link` header, fresh or from the cache on a 304.
    async fn get_page(
        &self,
        what: &str,
        path: &str,
        accept: &str,
    ) -> Result<(String, Option<String>), ForgeError> {
        if let Some(until) = self.gate_closed_until().await {
            return Err(ForgeError::RateLimited {
                forge: FORGE,
                until,
            });
        }
        let key = format!("{} {accept} {}{path}", self.token_key, self.api_url);
        let cached = self.store.etag(&key).await?;
        let mut req = self.request(reqwest::Method::GET, path, accept);
        if let Some((etag, _)) = &cached {
            req = req.header(IF_NONE_MATCH, etag.as_str());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.count("error");
                return Err(ForgeError::Network {
                    forge: FORGE,
                    what: what.to_owned(),
                    message: crate::errors::reqwest_chain(e),
                });
            }
        };
        let status = resp.status();
        self.count(status.as_str());
        let headers = resp.headers().clone();
        tracing::debug!(what, path, status = status.as_u16(), "GitHub request");
        if status == StatusCode::NOT_MODIFIED {
            self.observe(status, &headers, "").await;
            if let Some((_, envelope)) = cached
                && let Ok(page) = serde_json::from_str::<CachedPage>(&envelope)
            {
                return Ok((page.body, page.next));
            }
            return Err(ForgeError::Malformed {
                forge: FORGE,
                what: what.to_owned(),
                message: "304 Not Modified for a request kiln has no cached answer for".into(),
            });
        }
        let body = crate::body::read_capped_text(resp, 4 << 20)
            .await
            .map_err(|m| ForgeError::Network {
                forge: FORGE,
                what: what.to_owned(),
                message: m,
            })?;
        if let Some(until) = self.observe(status, &headers, &body).await {
            return Err(ForgeError::RateLimited {
                forge: FORGE,
                until,
            });
        }
        if !status.is_success() {
            return Err(ForgeError::Http {
                forge: FORGE,
                what: what.to_owned(),
                status: status.as_u16(),
                message: message_of(&body),
            });
        }
        let next = headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| next_link(l, &self.api_url));
        if let Some(etag) = headers.get(ETAG).and_then(|v| v.to_str().ok()) {
            let envelope = serde_json::to_string(&CachedPage {
                body: body.clone(),
                next: next.clone(),
            })
            .unwrap_or_default();
            self.store.set_etag(&key, etag, &envelope).await?;
        }
        Ok((body, next))
    }

    /// `GET /repos/{o}/{r}`: clone and web URLs.
    pub async fn repo(&self, owner: &str, name: &str) -> Result<RepoInfo, ForgeError> {
        let body = self
            .get("repository", &format!("/repos/{owner}/{name}"), ACCEPT_JSON)
            .await?;
        serde_json::from_str(&body).map_err(|e| ForgeError::Malformed {
            forge: FORGE,
            what: "repository".into(),
            message: e.to_string(),
        })
    }

    /// The head commit of `branch`: `GET /repos/{o}/{r}/commits/{branch}` answered with the
    /// bare SHA.
    pub async fn head(&self, owner: &str, name: &str, branch: &str) -> Result<String, ForgeError> {
        let what = format!("head of {owner}/{name} {branch}");
        let body = self
            .get(
                &what,
                &format!("/repos/{owner}/{name}/commits/{}", path_ref(branch)),
                ACCEPT_SHA,
            )
            .await?;
        let sha = body.trim().to_ascii_lowercase();
        if crate::source::mirror::is_object_name(&sha) {
            Ok(sha)
        } else {
            Err(ForgeError::Malformed {
                forge: FORGE,
                what,
                message: format!("not a commit SHA: {}", message_of(&body)),
            })
        }
    }

    /// Tags and their commits: `GET /repos/{o}/{r}/tags`, every page (up to 1000 tags).
    /// Entries whose commit is not a SHA are dropped.
    pub async fn tags(&self, owner: &str, name: &str) -> Result<Vec<(String, String)>, ForgeError> {
        self.named_commits(owner, name, "tags").await
    }

    /// Branches and their heads: `GET /repos/{o}/{r}/branches`, every page (up to 1000).
    pub async fn branches(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Vec<(String, String)>, ForgeError> {
        self.named_commits(owner, name, "branches").await
    }

    /// The `what` listing (`tags` or `branches`), conditional per page, as (name, commit).
    async fn named_commits(
        &self,
        owner: &str,
        name: &str,
        what: &'static str,
    ) -> Result<Vec<(String, String)>, ForgeError> {
        let mut out = Vec::new();
        let mut path = Some(format!("/repos/{owner}/{name}/{what}?per_page=100"));
        let mut pages = 0;
        while let Some(p) = path.take() {
            pages += 1;
            let (body, next) = self.get_page(what, &p, ACCEPT_JSON).await?;
            out.extend(parse_tags(&body).map_err(|message| ForgeError::Malformed {
                forge: FORGE,
                what: what.into(),
                message,
            })?);
            if pages < 10 {
                path = next;
            }
        }
        Ok(out)
    }

    /// Whether the commit shows `status` as [`create_status`](Self::create_status) sends it:
    /// `GET /repos/{o}/{r}/commits/{sha}/statuses`. Used before re-sending a status a dead
    /// sender may have sent.
    pub async fn has_status(
        &self,
        owner: &str,
        name: &str,
        sha: &str,
        status: &NewStatus,
    ) -> Result<bool, ForgeError> {
        #[derive(Deserialize)]
        struct S {
            context: String,
            state: String,
            description: Option<String>,
        }
        let body = self
            .get(
                "statuses",
                &format!("/repos/{owner}/{name}/commits/{sha}/statuses?per_page=100"),
                ACCEPT_JSON,
            )
            .await?;
        let list: Vec<S> = serde_json::from_str(&body).map_err(|e| ForgeError::Malformed {
            forge: FORGE,
            what: "statuses".into(),
            message: e.to_string(),
        })?;
        let description = truncate(&status.description, DESCRIPTION_MAX);
        Ok(list.into_iter().any(|s| {
            s.context == status.context
                && s.state == status.state
                && s.description.unwrap_or_default() == description
        }))
    }

    /// `POST /repos/{o}/{r}/statuses/{sha}`, spaced from the previous mutating call.
    pub async fn create_status(
        &self,
        owner: &str,
        name: &str,
        sha: &str,
        status: &NewStatus,
    ) -> Result<(), ForgeError> {
        self.wait_gate().await;
        {
            let mut last = self.last_mutation.lock().await;
            if let Some(t) = *last {
                let next = t + MUTATION_SPACING;
                if next > Instant::now() {
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            *last = Some(Instant::now());
        }
        let mut body = serde_json::json!({
            "state": status.state,
            "context": status.context,
            "description": truncate(&status.description, DESCRIPTION_MAX),
        });
        if let Some(u) = &status.target_url {
            body["target_url"] = serde_json::Value::String(u.clone());
        }
        let what = format!("status for {owner}/{name}@{}", crate::text::short(sha));
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/repos/{owner}/{name}/statuses/{sha}"),
                ACCEPT_JSON,
            )
            .json(&body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.count("error");
                return Err(ForgeError::Network {
                    forge: FORGE,
                    what,
                    message: crate::errors::reqwest_chain(e),
                });
            }
        };
        let status_code = resp.status();
        self.count(status_code.as_str());
        let headers = resp.headers().clone();
        let text = crate::body::read_capped_text(resp, 64 * 1024)
            .await
            .unwrap_or_default();
        if let Some(until) = self.observe(status_code, &headers, &text).await {
            return Err(ForgeError::RateLimited {
                forge: FORGE,
                until,
            });
        }
        if status_code.is_success() {
            Ok(())
        } else {
            Err(ForgeError::Http {
                forge: FORGE,
                what,
                status: status_code.as_u16(),
                message: message_of(&text),
            })
        }
    }
}

fn message_of(s: &str) -> String {
    let s = s.trim();
    let msg = serde_json::from_str::<serde_json::Value>(s)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| s.to_owned());
    truncate(&msg, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_stay_on_the_api() {
        let api = "https://api.github.com";
        let link = r#"<https://api.github.com/repositories/1/tags?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/tags?per_page=100&page=9>; rel="last""#;
        assert_eq!(
            next_link(link, api).as_deref(),
            Some("/repositories/1/tags?per_page=100&page=2")
        );
        assert_eq!(
            next_link(r#"<https://evil.example/x>; rel="next""#, api),
            None
        );
        assert_eq!(
            next_link(r#"<https://api.github.com/x>; rel="last""#, api),
            None
        );
    }

    #[test]
    fn refs_keep_slashes_and_lose_nothing() {
        assert_eq!(path_ref("release/1.x"), "release/1.x");
        assert_eq!(path_ref("a b#c"), "a%20b%23c");
    }

    #[tokio::test]
    async fn the_git_host_follows_the_api_url() {
        let store: Arc<dyn JobStore> = Arc::new(crate::state::SqliteStore::memory().await.unwrap());
        let m = crate::metrics::Metrics::new().part(Metrics::register);
        let c =
            GitHubClient::new("https://api.github.com", None, store.clone(), m.clone()).unwrap();
        assert_eq!(c.git_host().as_deref(), Some("github.com"));
        let c = GitHubClient::new("https://ghe.example.com/api/v3", None, store, m).unwrap();
        assert_eq!(c.git_host().as_deref(), Some("ghe.example.com"));
    }
}
