//! The daemon config (`/etc/kiln/kiln.toml`): its types here, its checker in `check.rs`
//! (every problem reported with its line and key, unknown keys included, before anything
//! starts, the way recipes are checked).

mod check;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check::CheckError;
use crate::forge::{self, Forges};
use crate::secret::Secret;

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/kiln/kiln.toml";

/// A checked daemon config.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state database, git mirrors, logs and the local layouts.
    pub state_dir: PathBuf,
    /// HTTP: health, metrics, API, webhook.
    pub listen: SocketAddr,
    /// Builds at once on this host.
    pub concurrency: usize,
    /// This host's name in the farm: recorded on every build, labels its containers.
    pub host_id: String,
    /// The dashboard's public address, for `target_url` in commit statuses.
    pub public_url: Option<String>,
    /// How long a running build may finish after SIGTERM before it is cancelled.
    pub shutdown_grace: Duration,
    /// How long a claimed job is held without renewal (renewed every third of it).
    pub lease: Duration,
    /// Reproducibility checks, unless a `[[repo]]` says otherwise.
    pub verify: Verify,
    /// `cache_affinity`: how long a job waits for a host holding a warm cache for its
    /// repository before any host takes it (`0s`: no affinity).
    pub cache_affinity: Duration,
    /// `[limits]`: what a build may use (network per repo: `allow_network`).
    pub limits: crate::runner::Limits,
    /// `[limits] cache`: the bytes all build caches of this host may hold.
    pub cache_budget: u64,
    /// Where the state lives: SQLite in `state_dir`, or the farm's PostgreSQL.
    pub database: Database,
    /// `admin_token_file`: the bearer token the dashboard's actions (rebuild, cancel)
    /// require; without it they are off and the dashboard is read-only.
    pub admin_token: Option<Secret>,
    /// `[github]`.
    pub github: Option<forge::github::Settings>,
    pub registry: Option<Registry>,
    /// `[signing] key_file`: the key that signs this host's provenance and verdicts, loaded
    /// once; no build container ever sees it.
    pub signer: Option<std::sync::Arc<crate::attest::sign::Signer>>,
    pub repos: Vec<Repo>,
}

/// The state's engine.
#[derive(Clone, Debug)]
pub enum Database {
    /// `state_dir/state.db`: one host.
    Sqlite,
    /// A PostgreSQL shared by the hosts of a farm. The password comes from
    /// `database_password_file`, else `$PGPASSWORD`, else the URL.
    Postgres {
        url: String,
        password: Option<Secret>,
    },
}

/// Where the database password comes from when `database_password_file` is not set.
pub const DB_PASSWORD_ENV: &str = "PGPASSWORD";

/// When the daemon builds a commit twice to check that it is reproducible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verify {
    Never,
    Always,
    /// This fraction of builds, chosen at random.
    Sample(f64),
}

impl Verify {
    /// Whether this build is checked.
    pub fn pick(self) -> bool {
        match self {
            Verify::Never => false,
            Verify::Always => true,
            Verify::Sample(f) => crate::retry::fraction() < f,
        }
    }
}

/// `[registry]`: where artifacts go (`<url>/<artifact name>`).
#[derive(Clone, Debug)]
pub struct Registry {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

/// Where a watched repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// `owner/name` on GitHub.
    GitHub { owner: String, name: String },
    /// A local repository (bare or not), watched on disk.
    Path(PathBuf),
}

/// `[[repo]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Repo {
    pub source: RepoSource,
    pub branches: Vec<String>,
    /// Also build new tags matching this glob.
    pub tags: Option<String>,
    /// The directory to build, relative to the repository root (`""` for the root).
    pub dir: String,
    /// A recipe kept outside the repository.
    pub recipe_file: Option<PathBuf>,
    /// This repository's reproducibility checks (else the global `verify`).
    pub verify: Option<Verify>,
    /// Honour its recipe's `network = true` (else such a build fails at once).
    pub allow_network: bool,
    /// `cache_tags`: tag builds use the build caches too (else they run cold).
    pub cache_tags: bool,
}

impl Repo {
    /// The kind of forge its repository lives on: a key of [`Forges`].
    pub fn forge(&self) -> &'static str {
        use forge::Kind;
        match &self.source {
            RepoSource::GitHub { .. } => forge::github::KIND.name(),
            RepoSource::Path(_) => forge::local::KIND.name(),
        }
    }

    /// The config key that names its source (`github` or `path`), for messages.
    pub fn source_key(&self) -> &'static str {
        match &self.source {
            RepoSource::GitHub { .. } => "github",
            RepoSource::Path(_) => "path",
        }
    }

    /// The repository's name in the state and the API: `owner/name` or the path.
    pub fn name(&self) -> String {
        match &self.source {
            RepoSource::GitHub { owner, name } => format!("{owner}/{name}"),
            RepoSource::Path(p) => p.display().to_string(),
        }
    }

    /// Whether the state names this repository `name` (as [`name`](Repo::name) does, without
    /// building the name).
    pub fn is_named(&self, name: &str) -> bool {
        match &self.source {
            RepoSource::GitHub { owner, name: n } => {
                name.split_once('/') == Some((owner.as_str(), n.as_str()))
            }
            RepoSource::Path(p) => p.as_os_str() == name,
        }
    }

    /// The recipe's key in the state: its path in the repository, or the outside file.
    pub fn recipe_key(&self) -> String {
        match &self.recipe_file {
            Some(f) => f.display().to_string(),
            None if self.dir.is_empty() => "kiln.toml".to_owned(),
            None => format!("{}/kiln.toml", self.dir),
        }
    }
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, CheckError> {
        crate::check::load(path, |c, doc| c.config(doc))
    }

    /// Check config bytes; `path` is only for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Config, CheckError> {
        crate::check::check(bytes, path, |c, doc| c.config(doc))
    }
}

impl Config {
    /// The forges this config's repositories live on, by kind: the local one always, GitHub
    /// with a `[github]` section. A forge of `running` (the forges before a reload) carries
    /// over what it can (its client, when its API and token did not change).
    pub fn forges(
        &self,
        store: &std::sync::Arc<dyn crate::state::JobStore>,
        metrics: &crate::metrics::Metrics,
        running: Option<&Forges>,
    ) -> Result<Forges, forge::ForgeError> {
        let mut out = Forges::default();
        out.insert(std::sync::Arc::new(forge::local::Local));
        if let Some(g) = &self.github {
            out.insert(std::sync::Arc::new(forge::github::GitHub::configured(
                g.clone(),
                store.clone(),
                metrics,
                running,
            )?));
        }
        Ok(out)
    }
}

/// This machine's hostname, the default `host_id`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether `tag` matches the repo's `tags` glob.
pub fn tag_matches(glob: &str, tag: &str) -> bool {
    globset::Glob::new(glob)
        .map(|g| g.compile_matcher().is_match(tag))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repo_is_named_as_its_name_says() {
        let repo = |source| Repo {
            source,
            branches: vec!["main".into()],
            tags: None,
            dir: String::new(),
            recipe_file: None,
            verify: None,
            allow_network: false,
            cache_tags: false,
        };
        let gh = repo(RepoSource::GitHub {
            owner: "acme".into(),
            name: "hello".into(),
        });
        let local = repo(RepoSource::Path("/srv/git/hello".into()));
        for r in [&gh, &local] {
            assert!(r.is_named(&r.name()), "{}", r.name());
        }
        for other in [
            "acme",
            "acme/hello/x",
            "acme/hell",
            "hello",
            "/srv/git",
            "/srv/git/hello/",
        ] {
            assert!(!gh.is_named(other) && !local.is_named(other), "{other}");
        }
    }
}
