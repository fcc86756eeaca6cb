//! GitHub and GitHub Enterprise: REST polling with conditional requests, webhooks, commit
//! statuses, and fetches with the token sent to the GitHub host only.

mod client;
mod hook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use client::{GitHubClient, RepoInfo};
pub use client::{next_link, parse_tags};
pub use hook::signature_ok;

use super::{Delivery, FetchAuth, Forge, ForgeError, Kind, Origin, Watch, WebhookError};
use crate::metrics::StatusLabel;
use crate::secret::Secret;
use crate::state::{JobStore, NewStatus};
use crate::sync::lock;

/// Where the token comes from when the config names no file, and for `kiln verify`.
pub const TOKEN_ENV: &str = "KILN_GITHUB_TOKEN";
/// The public GitHub's API, and its web and git host.
pub const API_URL: &str = "https://api.github.com";
const WEB_HOST: &str = "github.com";

/// GitHub as a kind of forge.
pub struct GitHubKind;

/// The kind's entry in [`KINDS`](super::KINDS).
pub const KIND: GitHubKind = GitHubKind;

impl Kind for GitHubKind {
    fn name(&self) -> &'static str {
        "github"
    }

    fn claims(&self, repo: &str) -> bool {
        !repo.starts_with('/') && repo.contains('/')
    }

    /// GitHub remotes in any form git accepts (https, ssh, scp-like `git@github.com:`,
    /// `git://`) become `https://github.com/<owner>/<repo>`, without credentials or `.git`.
    fn canonical_url(&self, url: &str) -> Option<String> {
        let (_, host_port, path) = super::remote_parts(url)?;
        let host = host_port.split(':').next().unwrap_or(host_port);
        if !(host.eq_ignore_ascii_case(WEB_HOST) || host.eq_ignore_ascii_case("www.github.com")) {
            return None;
        }
        // GitHub's owner and repository names are case-insensitive: one form for all.
        let path = path.trim_matches('/').to_ascii_lowercase();
        let path = path
            .strip_suffix(".git")
            .unwrap_or(&path)
            .trim_end_matches('/');
        Some(format!("https://{WEB_HOST}/{path}"))
    }

    fn public_auth(&self, url: &str, token: &Secret) -> Option<FetchAuth> {
        let u = reqwest::Url::parse(url).ok()?;
        let ok = u.scheme() == "https"
            && u.username().is_empty()
            && u.password().is_none()
            && u.port().is_none()
            && u.host_str() == Some(WEB_HOST);
        ok.then(|| FetchAuth {
            base: format!("https://{WEB_HOST}/"),
            token: token.clone(),
        })
    }

    fn token_env(&self) -> Option<&'static str> {
        Some(TOKEN_ENV)
    }

    fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        metrics.part(Metrics::register);
    }
}

/// GitHub's own metrics.
pub struct Metrics {
    /// `kiln_github_requests_total{status}`: API answers by HTTP status (`error` when none
    /// came).
    pub requests: Family<StatusLabel, Counter>,
    /// `kiln_github_rate_limit_remaining`: as GitHub last reported it.
    pub rate_limit_remaining: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut crate::metrics::Registry) -> Metrics {
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "github_requests",
            "GitHub API requests, by HTTP status",
            requests.clone(),
        );
        let rate_limit_remaining = Gauge::default();
        rate_limit_remaining.set(-1);
        registry.register(
            "github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining as last seen (-1 until GitHub reported it)",
            rate_limit_remaining.clone(),
        );
        Metrics {
            requests,
            rate_limit_remaining,
        }
    }
}

/// `[github]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: String,
    pub token: Option<Secret>,
    /// Where the token came from, for messages (never the token itself).
    pub token_source: Option<String>,
    pub poll_interval: Duration,
    /// Enables `POST /hooks/github`.
    pub webhook_secret: Option<Secret>,
}

impl Settings {
    /// Whether a client made for `self` can serve `other` as it is (same API, same token).
    pub fn same_client(&self, other: &Settings) -> bool {
        self.api_url == other.api_url
            && self.token.as_ref().map(|t| t.expose()) == other.token.as_ref().map(|t| t.expose())
    }
}

/// A GitHub (or GitHub Enterprise) instance kiln watches and reports to.
pub struct GitHub {
    client: Arc<GitHubClient>,
    settings: Settings,
    /// `GET /repos/{o}/{r}` answers, once per repository until the config is reloaded.
    infos: Mutex<HashMap<String, RepoInfo>>,
}

/// `owner/name` as its two parts.
fn split(repo: &str) -> Result<(&str, &str), ForgeError> {
    repo.split_once('/').ok_or_else(|| ForgeError::Malformed {
        forge: "GitHub",
        what: "repository".into(),
        message: format!("{repo:?} is not owner/name"),
    })
}

impl GitHub {
    /// A client for `settings`, keeping its ETags in `store` and counting in `metrics`.
    pub fn new(
        settings: Settings,
        store: Arc<dyn JobStore>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<GitHub, ForgeError> {
        if settings.token.is_none() {
            tracing::warn!(
                "no GitHub token (github.token_file or ${TOKEN_ENV}): polling is unauthenticated, and every poll costs rate limit"
            );
        }
        let client = GitHubClient::new(
            &settings.api_url,
            settings.token.clone(),
            store,
            metrics.part(Metrics::register),
        )?;
        Ok(GitHub {
            client: Arc::new(client),
            settings,
            infos: Mutex::new(HashMap::new()),
        })
    }

    /// The forge for `settings`, carrying over what it can of the one in `running` (the
    /// forges before a reload).
    pub fn configured(
        settings: Settings,
        store: Arc<dyn JobStore>,
        metrics: &crate::metrics::Metrics,
        running: Option<&super::Forges>,
    ) -> Result<GitHub, ForgeError> {
        match running.and_then(|f| f.typed::<GitHub>(KIND.name())) {
            Some(old) => old.reconfigured(settings, store, metrics),
            None => GitHub::new(settings, store, metrics),
        }
    }

    /// This forge with new `settings` (a reloaded config): the same client (its rate-limit
    /// gate, its ETags) when the API and the token are the same, else a new one. Cached
    /// repository answers are asked again either way.
    fn reconfigured(
        &self,
        settings: Settings,
        store: Arc<dyn JobStore>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<GitHub, ForgeError> {
        if !self.settings.same_client(&settings) {
            return GitHub::new(settings, store, metrics);
        }
        Ok(GitHub {
            client: self.client.clone(),
            settings,
            infos: Mutex::new(HashMap::new()),
        })
    }

    /// A repository's clone and web URLs: asked once, waiting out a rate limit rather than
    /// failing the build that needs them.
    async fn info(&self, repo: &str) -> Result<RepoInfo, ForgeError> {
        if let Some(i) = lock(&self.infos).get(repo) {
            return Ok(i.clone());
        }
        let (owner, name) = split(repo)?;
        loop {
            match self.client.repo(owner, name).await {
                Ok(info) => {
                    lock(&self.infos).insert(repo.to_owned(), info.clone());
                    return Ok(info);
                }
                Err(ForgeError::RateLimited { .. }) => self.client.wait_gate().await,
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait::async_trait]
impl Forge for GitHub {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn watch(&self) -> Watch {
        Watch::Poll {
            every: self.settings.poll_interval,
        }
    }

    async fn paused_until(&self) -> Option<Instant> {
        self.client.gate_closed_until().await
    }

    async fn head(&self, repo: &str, branch: &str) -> Result<Option<String>, ForgeError> {
        let (owner, name) = split(repo)?;
        match self.client.head(owner, name, branch).await {
            Ok(sha) => Ok(Some(sha)),
            Err(ForgeError::Http {
                status: 404 | 422, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn tags(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError> {
        let (owner, name) = split(repo)?;
        self.client.tags(owner, name).await
    }

    async fn branches(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError> {
        let (owner, name) = split(repo)?;
        self.client.branches(owner, name).await
    }

    async fn origin(&self, repo: &str) -> Result<Origin, ForgeError> {
        let info = self.info(repo).await?;
        // The token goes only to the GitHub host, over https.
        let auth = match (self.client.token(), self.client.git_host()) {
            (Some(t), Some(host)) => {
                let base = format!("https://{host}/");
                info.clone_url
                    .to_ascii_lowercase()
                    .starts_with(&base.to_ascii_lowercase())
                    .then(|| FetchAuth {
                        base,
                        token: t.clone(),
                    })
            }
            _ => None,
        };
        Ok(Origin {
            fetch_url: info.clone_url,
            auth,
            web_url: info.html_url,
        })
    }

    fn webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<Delivery, WebhookError> {
        hook::read(self.settings.webhook_secret.as_ref(), headers, body)
    }

    fn has_statuses(&self) -> bool {
        true
    }

    async fn post_status(
        &self,
        repo: &str,
        commit: &str,
        status: &NewStatus,
    ) -> Result<(), ForgeError> {
        let (owner, name) = split(repo)?;
        self.client.create_status(owner, name, commit, status).await
    }

    async fn has_status(
        &self,
        repo: &str,
        commit: &str,
        status: &NewStatus,
    ) -> Result<bool, ForgeError> {
        let (owner, name) = split(repo)?;
        self.client.has_status(owner, name, commit, status).await
    }

    /// `https://github.com/...` for `api.github.com`, the host's own for GitHub Enterprise
    /// (`https://HOST/api/v3`).
    fn commit_url(&self, repo: &str, commit: &str) -> Option<String> {
        let api = self.settings.api_url.trim_end_matches('/');
        let web = if api == API_URL {
            format!("https://{WEB_HOST}")
        } else {
            api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
        };
        Some(format!("{web}/{repo}/commit/{commit}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_in_every_form_become_one_url() {
        for u in [
            "git@github.com:o/r.git",
            "https://github.com/o/r.git",
            "https://github.com/o/r",
            "ssh://git@github.com/o/r.git",
            "https://x-access-token:ghs_secret@github.com/o/r.git",
            "git://github.com/o/r.git",
            "git@github.com:O/R.git",
            "https://github.com/o/r/",
        ] {
            assert_eq!(
                KIND.canonical_url(u).as_deref(),
                Some("https://github.com/o/r"),
                "{u}"
            );
            assert_eq!(
                crate::forge::source_link(u).as_deref(),
                Some("https://github.com/o/r")
            );
        }
        assert_eq!(KIND.canonical_url("https://gitlab.example.com/o/r"), None);
    }

    #[test]
    fn the_public_token_goes_to_github_com_only() {
        let t = Secret::new("t");
        assert_eq!(
            KIND.public_auth("https://github.com/o/r", &t).unwrap().base,
            "https://github.com/"
        );
        for hostile in [
            "git://h/r",
            "https://attacker.example/x",
            "https://github.com@evil.example/x",
            "https://user:pw@github.com/x",
            "https://github.com:8443/x",
            "http://github.com/o/r",
        ] {
            assert!(KIND.public_auth(hostile, &t).is_none(), "{hostile}");
        }
    }
}
