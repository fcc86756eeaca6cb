//! Code hosts: where repositories live, how kiln hears of their new commits, where it fetches
//! them from, and where it reports. Each forge is one folder behind the [`Forge`] trait: a
//! hosted forge's REST API (polled, with webhooks and commit statuses), and `local/`, the
//! repositories on this host's disk. Another forge (GitLab, with project ids, `X-Gitlab-Token`
//! and its statuses API; Gitea or Forgejo, under `/api/v1`) is one more folder: an
//! implementation of [`Forge`] and [`Kind`], an entry in [`KINDS`], its settings section in
//! the daemon's config, and a webhook route.

pub mod github;
pub mod local;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::source::{FetchAuth, Origin};

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::state::{NewStatus, StateError};

/// Every kind of forge kiln knows.
pub const KINDS: &[&dyn Kind] = &[&github::KIND, &local::KIND];

/// What a kind of forge knows without a client or settings.
pub trait Kind: Sync {
    /// Its name: what `[[repo]]` entries and messages call it.
    fn name(&self) -> &'static str;

    /// Whether a repository named `repo` (as the state names it) belongs to a forge of this
    /// kind, by its shape: for records whose config entry is gone.
    fn claims(&self, repo: &str) -> bool;

    /// `url` in this forge's canonical form (`https://HOST/OWNER/REPO`), if it names a
    /// repository on one of its well-known hosts in any of the forms git accepts.
    fn canonical_url(&self, _url: &str) -> Option<String> {
        None
    }

    /// Credentials for fetching `url` with `token`, only when `url` is on this forge's
    /// well-known host, over https, with nothing in it that could send the token elsewhere.
    fn public_auth(&self, _url: &str, _token: &Secret) -> Option<FetchAuth> {
        None
    }

    /// The environment variable one-shot commands (`kiln verify`) read its token from.
    fn token_env(&self) -> Option<&'static str> {
        None
    }

    /// Register its own metrics (once per daemon; before the first request, so the metrics
    /// exposition keeps its shape whatever the config).
    fn register_metrics(&self, _metrics: &Metrics) {}
}

/// The kind of forge a repository named `repo` belongs to by its shape, if any.
pub fn kind_claiming(repo: &str) -> Option<&'static dyn Kind> {
    KINDS.iter().find(|k| k.claims(repo)).copied()
}

/// Tokens for the forges' well-known hosts, by forge name (one-shot commands).
#[derive(Clone, Debug, Default)]
pub struct Tokens(BTreeMap<&'static str, Secret>);

impl Tokens {
    /// The tokens the environment gives (each kind's `token_env`).
    pub fn from_env() -> Tokens {
        let mut t = Tokens::default();
        for k in KINDS {
            if let Some(v) = k.token_env().and_then(env_token) {
                t.0.insert(k.name(), v);
            }
        }
        t
    }
}

/// A token from the environment variable `var`, trimmed; none when unset or blank.
pub fn env_token(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| Secret::new(v.trim()))
}

/// A remote URL's scheme (none for git's scp-like `host:path`), host (and port, without any
/// credentials) and path; `None` when it is neither form.
fn remote_parts(url: &str) -> Option<(Option<&str>, &str, &str)> {
    let (scheme, authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (a, p) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(scheme), a, p)
        }
        None => match url.split_once(':') {
            Some((a, p)) if !a.contains('/') => (None, a, p),
            _ => return None,
        },
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some((scheme, host_port, path))
}

/// The link to a source that an artifact's manifest carries (`org.opencontainers.image.source`),
/// so it must be the same from every checkout of one repository: a known forge's canonical
/// https form (from its ssh, scp-like, `git://` or https remotes); any other remote without
/// credentials, a trailing `/` or `.git` (an scp-like `user@host:path` as `ssh://host/path`).
/// Never a local path or a `file://` URL: `None`, since those name one host's disk.
pub fn source_link(url: &str) -> Option<String> {
    let url = url.trim();
    if let Some(c) = KINDS.iter().find_map(|k| k.canonical_url(url)) {
        return Some(c);
    }
    let (scheme, host_port, path) = remote_parts(url)?;
    let scheme = scheme.unwrap_or("ssh");
    if scheme.eq_ignore_ascii_case("file") || host_port.is_empty() {
        return None;
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let path = path.trim_end_matches('/');
    let scheme = scheme.to_ascii_lowercase();
    let host_port = host_port.to_ascii_lowercase();
    // A scheme's default port says nothing: `https://h:443/` is `https://h/`.
    let default = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        "ssh" => ":22",
        "git" => ":9418",
        _ => "",
    };
    let host = match host_port.strip_suffix(default) {
        Some(h) if !default.is_empty() => h,
        _ => host_port.as_str(),
    };
    Some(format!("{scheme}://{host}/{path}"))
}

/// A remote as git has it, without any password or token in its authority: what the
/// provenance records as the raw remote. (An ssh user name stays; an https one goes, as
/// tokens travel there.)
pub fn without_credentials(url: &str) -> String {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest
                .split_once('/')
                .map_or((rest, None), |(a, p)| (a, Some(p)));
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) if scheme.eq_ignore_ascii_case("ssh") && !user.contains(':') => {
                    format!("{user}@{host}")
                }
                Some((_, host)) => host.to_owned(),
                None => authority.to_owned(),
            };
            match path {
                Some(p) => format!("{scheme}://{authority}/{p}"),
                None => format!("{scheme}://{authority}"),
            }
        }
        None => url.to_owned(),
    }
}

/// Where a recorded source is fetched from by a verifier: the URL as recorded, with a token
/// only for the well-known host of the forge it belongs to. (A provenance is data anyone who
/// can push could have written: it must not be able to name a host that collects a token.)
pub fn public_origin(url: &str, tokens: &Tokens) -> Origin {
    let auth = KINDS.iter().find_map(|k| {
        let token = tokens.0.get(k.name())?;
        k.public_auth(url, token)
    });
    Origin {
        fetch_url: url.to_owned(),
        auth,
        web_url: url.to_owned(),
    }
}

/// Register every kind's own metrics.
pub fn register_metrics(metrics: &Metrics) {
    for k in KINDS {
        k.register_metrics(metrics);
    }
}

/// Why a forge request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{forge} rate limit: waiting until {} s from now", until.saturating_duration_since(Instant::now()).as_secs())]
    RateLimited { forge: &'static str, until: Instant },
    #[error("{forge} {what}: HTTP {status}: {message}")]
    Http {
        forge: &'static str,
        what: String,
        status: u16,
        message: String,
    },
    #[error("{forge} {what}: {message}")]
    Network {
        forge: &'static str,
        what: String,
        message: String,
    },
    #[error("{forge} {what}: unexpected answer: {message}")]
    Malformed {
        forge: &'static str,
        what: String,
        message: String,
    },
    /// A repository on disk that cannot be read (not there, not git).
    #[error("{what}: {message}")]
    Unreadable { what: String, message: String },
    #[error("{forge} does not {what}")]
    Unsupported {
        forge: &'static str,
        what: &'static str,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl ForgeError {
    /// Whether trying again later could help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForgeError::RateLimited { .. } | ForgeError::Network { .. } => true,
            ForgeError::Http { status, .. } => *status >= 500 || *status == 408,
            ForgeError::Unreadable { .. } => true,
            ForgeError::Malformed { .. } | ForgeError::Unsupported { .. } => false,
            ForgeError::State(e) => e.is_retryable(),
        }
    }
}

/// How kiln learns of new commits in a forge's repositories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Asked every `every` (spread by jitter), by the one host of a farm that holds the poller
    /// role, and at once by any host a webhook reaches.
    Poll { every: Duration },
    /// Watched on this host through [`Forge::changes`], and read again every `fallback`.
    Notify { fallback: Duration },
}

/// Word that a watched repository may have changed.
pub struct Changes {
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// What sends on `rx` (a file watcher), alive as long as this.
    _source: Box<dyn Send>,
}

impl Changes {
    pub fn new(
        rx: tokio::sync::mpsc::UnboundedReceiver<()>,
        source: impl Send + 'static,
    ) -> Changes {
        Changes {
            rx,
            _source: Box::new(source),
        }
    }

    /// The next change: one or more events, once they settled (a ref update is several file
    /// events). `None` when nothing can say any more.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        while self.rx.try_recv().is_ok() {}
        Some(())
    }
}

/// What one look at a repository found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Each branch asked for, with its head (`None`: no such branch, yet).
    pub heads: Vec<(String, Option<String>)>,
    /// Every tag and its commit, when tags were asked for.
    pub tags: Option<Vec<(String, String)>>,
}

/// A webhook delivery whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The forge's id for the delivery (redeliveries repeat it).
    pub id: Option<String>,
    pub event: HookEvent,
}

/// What a delivery says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookEvent {
    /// The forge checks the hook works.
    Ping,
    /// Commits or refs changed in `repo` (`event` names the forge's event).
    Push { repo: String, event: String },
    /// Anything else about `repo`.
    Other { repo: String, event: String },
    /// A body that cannot be read.
    Malformed(String),
}

/// Why a delivery is refused before it is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookError {
    /// Webhooks are off for this forge (no secret configured): the message says how to turn
    /// them on.
    Off(String),
    /// The signature is missing or wrong.
    Rejected(String),
}

/// A code host, as kiln needs it. Repositories are named as the state names them: `owner/name`
/// on a hosted forge, the path of a local repository.
#[async_trait::async_trait]
pub trait Forge: Any + Send + Sync {
    /// Its kind's name (as in [`Kind::name`]).
    fn kind(&self) -> &'static str;

    /// How kiln learns of new commits.
    fn watch(&self) -> Watch;

    /// For [`Watch::Notify`]: what says when `repo` may have changed. Stops early, with an
    /// error, when `stop` fires.
    async fn changes(
        &self,
        _repo: &str,
        _stop: &tokio_util::sync::CancellationToken,
    ) -> Result<Changes, ForgeError> {
        Err(ForgeError::Unsupported {
            forge: self.kind(),
            what: "watch repositories",
        })
    }

    /// Until when the forge asked to be left alone (a rate limit), if it did.
    async fn paused_until(&self) -> Option<Instant> {
        None
    }

    /// The head commit of `branch`, or `None` when there is no such branch (yet). Asked
    /// conditionally where the forge can, so an unchanged branch costs nothing.
    async fn head(&self, repo: &str, branch: &str) -> Result<Option<String>, ForgeError>;

    /// The heads of `branches` and, with `tags`, every tag: what one check of `repo` needs.
    /// By default a [`head`](Forge::head) per branch and a [`tags`](Forge::tags); a forge
    /// that reads all its refs at once answers from one read (and so from one moment).
    async fn snapshot(
        &self,
        repo: &str,
        branches: &[String],
        tags: bool,
    ) -> Result<Snapshot, ForgeError> {
        let mut heads = Vec::with_capacity(branches.len());
        for b in branches {
            heads.push((b.clone(), self.head(repo, b).await?));
        }
        let tags = match tags {
            true => Some(self.tags(repo).await?),
            false => None,
        };
        Ok(Snapshot { heads, tags })
    }

    /// Every branch of `repo`, with its head commit.
    async fn branches(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError>;

    /// Every tag of `repo`, with the commit it points at.
    async fn tags(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError>;

    /// Where to fetch `repo` from, with credentials for that host only, and its web address.
    async fn origin(&self, repo: &str) -> Result<Origin, ForgeError>;

    /// Check a webhook delivery's signature and read it.
    fn webhook(
        &self,
        _headers: &reqwest::header::HeaderMap,
        _body: &[u8],
    ) -> Result<Delivery, WebhookError> {
        Err(WebhookError::Off(format!(
            "{} repositories have no webhooks",
            self.kind()
        )))
    }

    /// Whether it takes commit statuses.
    fn has_statuses(&self) -> bool {
        false
    }

    /// Post a commit status for a context.
    async fn post_status(
        &self,
        _repo: &str,
        _commit: &str,
        _status: &NewStatus,
    ) -> Result<(), ForgeError> {
        Err(ForgeError::Unsupported {
            forge: self.kind(),
            what: "take commit statuses",
        })
    }

    /// Whether `commit` shows `status` already, as this forge stores what it is sent (to look
    /// before sending one again after a crash).
    async fn has_status(
        &self,
        _repo: &str,
        _commit: &str,
        _status: &NewStatus,
    ) -> Result<bool, ForgeError> {
        Ok(false)
    }

    /// The web page of a commit.
    fn commit_url(&self, _repo: &str, _commit: &str) -> Option<String> {
        None
    }
}

/// The forges of a config, by kind.
#[derive(Clone, Default)]
pub struct Forges(BTreeMap<&'static str, Arc<dyn Forge>>);

impl Forges {
    pub fn insert(&mut self, forge: Arc<dyn Forge>) {
        self.0.insert(forge.kind(), forge);
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Forge>> {
        self.0.get(kind)
    }

    /// The forge of `kind` as what it is (to carry its state over a reload).
    pub fn typed<F: Forge>(&self, kind: &str) -> Option<Arc<F>> {
        let any: Arc<dyn Any + Send + Sync> = self.0.get(kind)?.clone();
        any.downcast().ok()
    }

    /// The forge a repository named `repo` belongs to by its shape.
    pub fn claiming(&self, repo: &str) -> Option<&Arc<dyn Forge>> {
        self.get(kind_claiming(repo)?.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_links_do_not_depend_on_the_checkout() {
        for (url, want) in [
            (
                "https://user:pw@gitlab.example.com/o/r.git",
                Some("https://gitlab.example.com/o/r"),
            ),
            (
                "https://gitlab.example.com/o/r/",
                Some("https://gitlab.example.com/o/r"),
            ),
            ("ssh://git@host:2222/o/r.git", Some("ssh://host:2222/o/r")),
            (
                "git@gitlab.example.com:o/r.git",
                Some("ssh://gitlab.example.com/o/r"),
            ),
            ("git://127.0.0.1:9418/o/r", Some("git://127.0.0.1/o/r")),
            ("git://127.0.0.1:9419/o/r", Some("git://127.0.0.1:9419/o/r")),
            (
                "https://H.example:443/o/r.git/",
                Some("https://h.example/o/r"),
            ),
            ("ssh://git@h.example:22/o/r", Some("ssh://h.example/o/r")),
            ("git@h.example:o/r", Some("ssh://h.example/o/r")),
            (" https://h.example/o/r ", Some("https://h.example/o/r")),
            ("file:///srv/git/r", None),
            ("FILE:///srv/git/r", None),
            ("/srv/git/r", None),
            ("../r", None),
            ("relative/path", None),
        ] {
            assert_eq!(source_link(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn raw_remotes_lose_their_credentials_only() {
        for (url, want) in [
            (
                "https://oauth2:glpat_secret@gitlab.example.com/o/r.git",
                "https://gitlab.example.com/o/r.git",
            ),
            ("https://token@h.example/o/r", "https://h.example/o/r"),
            ("ssh://git@host:2222/o/r.git", "ssh://git@host:2222/o/r.git"),
            ("ssh://git:pw@host/o/r", "ssh://host/o/r"),
            ("git@h.example:acme/x.git", "git@h.example:acme/x.git"),
            ("/srv/git/r", "/srv/git/r"),
        ] {
            assert_eq!(without_credentials(url), want, "{url}");
        }
    }
}
