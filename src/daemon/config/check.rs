//! Checking a daemon config: every problem with its line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::{Config, DB_PASSWORD_ENV, Database, Registry, Repo, RepoSource, Verify, hostname};
use crate::check::{Checker, type_name};
use crate::forge::github;
use crate::recipe::{normalize_rel, parse_duration};
use crate::secret::Secret;

fn valid_host_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `owner/name` as GitHub allows them.
fn github_name(s: &str) -> Option<(String, String)> {
    let (o, n) = s.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    (ok(o) && ok(n)).then(|| (o.to_owned(), n.to_owned()))
}

/// A branch name git would accept (`git check-ref-format --branch`, in short).
fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && !b
            .bytes()
            .any(|c| c < 0x20 || c == 0x7f || b" ~^:?*[\\".contains(&c))
}

fn read_secret(path: &Path) -> Result<Secret, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(s))
}

impl Checker<'_> {
    pub(super) fn config(&mut self, doc: &DeTable) -> Option<Config> {
        self.unknown_keys(
            doc,
            "",
            &[
                "state_dir",
                "listen",
                "concurrency",
                "host_id",
                "public_url",
                "shutdown_grace",
                "lease",
                "verify",
                "cache_affinity",
                "limits",
                "database",
                "database_password_file",
                "admin_token_file",
                "github",
                "registry",
                "signing",
                "repo",
            ],
        );
        let state_dir = match self.string(doc, "", "state_dir") {
            None => PathBuf::from("/var/lib/kiln"),
            Some((s, at)) => {
                if !s.starts_with('/') {
                    self.problem(at, "state_dir", format!("{s:?} must be an absolute path"));
                }
                PathBuf::from(s)
            }
        };
        let listen = match self.string(doc, "", "listen") {
            None => SocketAddr::from(([127, 0, 0, 1], 7878)),
            Some((s, at)) => s.parse().unwrap_or_else(|_| {
                self.problem(
                    at,
                    "listen",
                    format!("{s:?} is not an address and port, like \"127.0.0.1:7878\""),
                );
                SocketAddr::from(([127, 0, 0, 1], 7878))
            }),
        };
        let concurrency = self.integer(doc, "", "concurrency", 1, 64).unwrap_or(1) as usize;
        let host_id = match self.string(doc, "", "host_id") {
            None => hostname(),
            Some((s, at)) => {
                if !valid_host_id(&s) {
                    self.problem(
                        at,
                        "host_id",
                        format!("{s:?}: use 1-64 characters of [A-Za-z0-9._-]"),
                    );
                }
                s
            }
        };
        let database = self.database(doc);
        let public_url = self.string(doc, "", "public_url").map(|(s, at)| {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                self.problem(at, "public_url", format!("{s:?} is not an http(s) URL"));
            }
            s.trim_end_matches('/').to_owned()
        });
        let shutdown_grace = self
            .duration(doc, "", "shutdown_grace")
            .unwrap_or(Duration::from_secs(30));
        let lease = self
            .duration(doc, "", "lease")
            .unwrap_or(Duration::from_secs(30));
        if lease < Duration::from_secs(3) {
            self.problem(0, "lease", "must be at least 3s");
        }
        let verify = self.verify(doc, "").unwrap_or(Verify::Never);
        // "0s" is allowed here: it turns affinity off.
        let cache_affinity = match self.string(doc, "", "cache_affinity") {
            None => Duration::from_secs(5),
            Some((s, _)) if s.trim() == "0s" || s.trim() == "0" => Duration::ZERO,
            Some(_) => self
                .duration(doc, "", "cache_affinity")
                .unwrap_or(Duration::from_secs(5)),
        };
        let mut cache_budget = crate::runner::cache::DEFAULT_BUDGET;
        let limits = match self.table(doc, "limits") {
            Some((t, _)) => self.limits(t, &mut cache_budget),
            None => crate::runner::Limits::host_defaults(),
        };
        let admin_token = self
            .abs_file(doc, "", "admin_token_file")
            .and_then(|(p, at)| match read_secret(&p) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem(at, "admin_token_file", e);
                    None
                }
            });
        let github = self.table(doc, "github").map(|(t, _)| self.github(t));
        let registry = self
            .table(doc, "registry")
            .and_then(|(t, at)| self.registry(t, at));
        let signer = self
            .table(doc, "signing")
            .and_then(|(t, at)| self.signing(t, at));
        let repos = self.repos(doc, github.is_some());
        Some(Config {
            state_dir,
            listen,
            concurrency,
            host_id,
            public_url,
            shutdown_grace,
            lease,
            verify,
            cache_affinity,
            limits,
            cache_budget,
            database,
            admin_token,
            github,
            registry,
            signer,
            repos,
        })
    }

    /// `[signing] key_file`: the host's private key, loaded once here (a group- or
    /// world-readable file is refused).
    fn signing(
        &mut self,
        t: &DeTable,
        at: usize,
    ) -> Option<std::sync::Arc<crate::attest::sign::Signer>> {
        self.unknown_keys(t, "signing", &["key_file", "sigstore_bundle"]);
        let bundle = self.bool(t, "signing", "sigstore_bundle").unwrap_or(false);
        let Some((path, at)) = self.abs_file(t, "signing", "key_file") else {
            self.problem(
                at,
                "signing.key_file",
                "missing: the private key to sign with",
            );
            return None;
        };
        match crate::attest::sign::Signer::load(&path) {
            Ok(s) => Some(std::sync::Arc::new(s.with_sigstore_bundle(bundle))),
            Err(e) => {
                self.problem(at, "signing.key_file", e.to_string());
                None
            }
        }
    }

    /// `[[repo]]`: every table checked, then across them: a GitHub repository needs the
    /// `[github]` section, and no repository is watched twice with one recipe.
    fn repos(&mut self, doc: &DeTable, github: bool) -> Vec<Repo> {
        let mut repos = Vec::new();
        match self.get(doc, "repo") {
            Some(v) => match v.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(r) = self.repo(t, i, item.span().start) {
                                    repos.push((r, item.span().start));
                                }
                            }
                            other => {
                                let t = type_name(other);
                                self.problem(
                                    item.span().start,
                                    &format!("repo[{i}]"),
                                    format!("expected a table, found {t}"),
                                );
                            }
                        }
                    }
                }
                _ => self.problem(v.span().start, "repo", "expected [[repo]] tables"),
            },
            None => self.problem(
                self.text.len(),
                "repo",
                "missing: watch at least one repository with [[repo]]",
            ),
        }
        for (i, (r, at)) in repos.iter().enumerate() {
            if matches!(r.source, RepoSource::GitHub { .. }) && !github {
                self.problem(
                    *at,
                    &format!("repo[{i}].github"),
                    "a GitHub repository needs a [github] section",
                );
            }
            if repos[..i]
                .iter()
                .any(|(o, _)| o.name() == r.name() && o.recipe_key() == r.recipe_key())
            {
                self.problem(
                    *at,
                    &format!("repo[{i}]"),
                    format!(
                        "{} with recipe {} is already watched by an earlier [[repo]]",
                        r.name(),
                        r.recipe_key()
                    ),
                );
            }
        }
        repos.into_iter().map(|(r, _)| r).collect()
    }

    fn table<'a, 'b>(
        &mut self,
        doc: &'b DeTable<'a>,
        key: &str,
    ) -> Option<(&'b DeTable<'a>, usize)> {
        let v = self.get(doc, key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some((t, v.span().start)),
            other => {
                let t = type_name(other);
                self.problem(
                    v.span().start,
                    key,
                    format!("expected a [{key}] table, found {t}"),
                );
                None
            }
        }
    }

    fn integer(&mut self, t: &DeTable, prefix: &str, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.get(t, key)?;
        let full = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        let n = match v.get_ref() {
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.problem(
                    v.span().start,
                    &full,
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &DeTable, prefix: &str, key: &str) -> Option<Duration> {
        let full = if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        };
        let (s, at) = self.string(t, prefix, key)?;
        match parse_duration(&s) {
            Some(d) => Some(d),
            None => {
                self.problem(
                    at,
                    &full,
                    format!("invalid duration {s:?}: use a positive number with s, m or h, like \"60s\" or \"5m\""),
                );
                None
            }
        }
    }

    /// `[limits]`: sizes as "4g", counts as numbers; unset keys keep the host's defaults.
    fn limits(&mut self, t: &DeTable, cache: &mut u64) -> crate::runner::Limits {
        self.unknown_keys(
            t,
            "limits",
            &["memory", "cpus", "pids", "output", "log", "cache"],
        );
        let mut l = crate::runner::Limits::host_defaults();
        let size = |c: &mut Self, key: &str, min: u64| -> Option<u64> {
            let (s, at) = c.string(t, "limits", key)?;
            match crate::recipe::parse_size(&s) {
                Some(n) if n >= min => Some(n),
                _ => {
                    c.problem(
                        at,
                        &format!("limits.{key}"),
                        format!(
                            "{s:?} is not a size of at least {min} bytes, like \"512m\" or \"4g\""
                        ),
                    );
                    None
                }
            }
        };
        if let Some(m) = size(self, "memory", 6 << 20) {
            l.memory = m;
        }
        if let Some(o) = size(self, "output", 1) {
            l.output = o;
        }
        if let Some(g) = size(self, "log", 1024) {
            l.log = g;
        }
        if let Some(c) = size(self, "cache", 0) {
            *cache = c;
        }
        if let Some(p) = self.integer(t, "limits", "pids", 1, 1 << 22) {
            l.pids = p;
        }
        if let Some(v) = self.get(t, "cpus") {
            let n = match v.get_ref() {
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n > 0.0 && n.is_finite() => l.cpus = n,
                _ => self.problem(
                    v.span().start,
                    "limits.cpus",
                    "expected a positive number of CPUs, like 2 or 1.5",
                ),
            }
        }
        l
    }

    /// `verify = "never" | "always" | 0.1`.
    fn verify(&mut self, t: &DeTable, prefix: &str) -> Option<Verify> {
        let v = self.get(t, "verify")?;
        let key = if prefix.is_empty() {
            "verify".to_owned()
        } else {
            format!("{prefix}.verify")
        };
        let parsed = match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "never" => Some(Verify::Never),
            DeValue::String(s) if s.as_ref() == "always" => Some(Verify::Always),
            DeValue::Float(f) => f.as_str().parse().ok().map(Verify::Sample),
            DeValue::Integer(i) => i.as_str().parse().ok().map(Verify::Sample),
            _ => None,
        };
        match parsed {
            Some(Verify::Sample(f)) if !(0.0..=1.0).contains(&f) => {
                self.problem(
                    v.span().start,
                    &key,
                    "a fraction must be from 0 to 1, like 0.1",
                );
                None
            }
            Some(Verify::Sample(0.0)) => Some(Verify::Never),
            Some(Verify::Sample(1.0)) => Some(Verify::Always),
            Some(x) => Some(x),
            None => {
                self.problem(
                    v.span().start,
                    &key,
                    "expected \"never\", \"always\" or a fraction of builds, like 0.1",
                );
                None
            }
        }
    }

    fn abs_file(&mut self, t: &DeTable, prefix: &str, key: &str) -> Option<(PathBuf, usize)> {
        let (s, at) = self.string(t, prefix, key)?;
        if !s.starts_with('/') {
            let name = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            self.problem(at, &name, format!("{s:?} must be an absolute path"));
            return None;
        }
        Some((PathBuf::from(s), at))
    }

    /// `database = "postgres://user@host:port/db"` and `database_password_file`. Errors
    /// never repeat a password given in the URL.
    fn database(&mut self, doc: &DeTable) -> Database {
        let password = match self.string(doc, "", "database_password_file") {
            Some((p, at)) if !p.starts_with('/') => {
                self.problem(
                    at,
                    "database_password_file",
                    format!("{p:?} must be an absolute path"),
                );
                None
            }
            Some((p, at)) => match read_secret(Path::new(&p)) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem(at, "database_password_file", e);
                    None
                }
            },
            None => std::env::var(DB_PASSWORD_ENV)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new),
        };
        let Some((url, at)) = self.string(doc, "", "database") else {
            return Database::Sqlite;
        };
        let shown = crate::state::redacted_url(&url);
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.host().is_some() => {
                Database::Postgres { url, password }
            }
            _ => {
                self.problem(
                    at,
                    "database",
                    format!(
                        "{shown:?} is not a PostgreSQL URL, like \"postgres://kiln@db.internal:5432/kiln\" (leave it out for SQLite in state_dir)"
                    ),
                );
                Database::Sqlite
            }
        }
    }

    fn github(&mut self, t: &DeTable) -> github::Settings {
        self.unknown_keys(
            t,
            "github",
            &[
                "api_url",
                "token_file",
                "poll_interval",
                "webhook_secret_file",
            ],
        );
        let api_url = match self.string(t, "github", "api_url") {
            None => github::API_URL.to_owned(),
            Some((s, at)) => {
                let lower = s.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                    self.problem(at, "github.api_url", format!("{s:?} is not an http(s) URL"));
                }
                s.trim_end_matches('/').to_owned()
            }
        };
        let (token, token_source) = match self.abs_file(t, "github", "token_file") {
            Some((p, at)) => match read_secret(&p) {
                Ok(s) => (Some(s), Some(p.display().to_string())),
                Err(e) => {
                    self.problem(at, "github.token_file", e);
                    (None, None)
                }
            },
            None => match crate::forge::env_token(github::TOKEN_ENV) {
                Some(t) => (Some(t), Some(format!("${}", github::TOKEN_ENV))),
                None => (None, None),
            },
        };
        let poll_interval = self
            .duration(t, "github", "poll_interval")
            .unwrap_or(Duration::from_secs(60));
        let webhook_secret = self.abs_file(t, "github", "webhook_secret_file").and_then(
            |(p, at)| match read_secret(&p) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem(at, "github.webhook_secret_file", e);
                    None
                }
            },
        );
        github::Settings {
            api_url,
            token,
            token_source,
            poll_interval,
            webhook_secret,
        }
    }

    fn registry(&mut self, t: &DeTable, at: usize) -> Option<Registry> {
        self.unknown_keys(t, "registry", &["url", "ca_file", "insecure"]);
        let url = match self.string(t, "registry", "url") {
            Some((u, at)) => {
                let u = u.trim_end_matches('/').to_owned();
                let probe = format!("{u}/artifact");
                if u.contains("://") || probe.parse::<crate::reference::Reference>().is_err() {
                    self.problem(
                        at,
                        "registry.url",
                        format!("{u:?} is not a registry and path, like \"ghcr.io/acme\" or \"127.0.0.1:5000/team\""),
                    );
                }
                Some(u)
            }
            None => {
                self.problem(at, "registry.url", "missing: where artifacts go");
                None
            }
        };
        let ca_file = self.abs_file(t, "registry", "ca_file").map(|(p, at)| {
            if !p.is_file() {
                self.problem(
                    at,
                    "registry.ca_file",
                    format!("{} does not exist", p.display()),
                );
            }
            p
        });
        let insecure = self.bool(t, "registry", "insecure").unwrap_or(false);
        Some(Registry {
            url: url?,
            ca_file,
            insecure,
        })
    }

    fn repo(&mut self, t: &DeTable, i: usize, at: usize) -> Option<Repo> {
        let p = format!("repo[{i}]");
        self.unknown_keys(
            t,
            &p,
            &[
                "github",
                "path",
                "branches",
                "tags",
                "dir",
                "recipe_file",
                "verify",
                "allow_network",
                "cache_tags",
            ],
        );
        let gh = self.string(t, &p, "github");
        let path = self.string(t, &p, "path");
        let source = match (gh, path) {
            (Some((g, at)), None) => match github_name(&g) {
                Some((owner, name)) => Some(RepoSource::GitHub { owner, name }),
                None => {
                    self.problem(
                        at,
                        &format!("{p}.github"),
                        format!("{g:?} is not \"owner/name\""),
                    );
                    None
                }
            },
            (None, Some((s, at))) => {
                if !s.starts_with('/') {
                    self.problem(
                        at,
                        &format!("{p}.path"),
                        format!("{s:?} must be an absolute path"),
                    );
                    None
                } else {
                    Some(RepoSource::Path(PathBuf::from(s.trim_end_matches('/'))))
                }
            }
            (Some(_), Some((_, at))) => {
                self.problem(at, &p, "give either github or path, not both");
                None
            }
            (None, None) => {
                self.problem(
                    at,
                    &p,
                    "missing: github = \"owner/name\" or path = \"/srv/git/repo.git\"",
                );
                None
            }
        };
        let branches = match self.strings(t, &p, "branches") {
            None => vec!["main".to_owned()],
            Some((bs, at)) => {
                if bs.is_empty() && self.get(t, "tags").is_none() {
                    self.problem(
                        at,
                        &format!("{p}.branches"),
                        "watch at least one branch (or set tags)",
                    );
                }
                for b in &bs {
                    if !valid_branch(b) {
                        self.problem(
                            at,
                            &format!("{p}.branches"),
                            format!("{b:?} is not a branch name"),
                        );
                    }
                }
                bs
            }
        };
        let tags = self.string(t, &p, "tags").map(|(g, at)| {
            if globset::Glob::new(&g).is_err() || g.is_empty() {
                self.problem(
                    at,
                    &format!("{p}.tags"),
                    format!("{g:?} is not a glob, like \"v*\""),
                );
            }
            g
        });
        let dir = match self.string(t, &p, "dir") {
            None => String::new(),
            Some((d, at)) => match normalize_rel(&d) {
                Some(n) if n == "." => String::new(),
                Some(n) if !n.split('/').any(|c| c == "..") => n,
                _ => {
                    self.problem(
                        at,
                        &format!("{p}.dir"),
                        format!("{d:?} must be a path inside the repository"),
                    );
                    String::new()
                }
            },
        };
        let recipe_file = self.abs_file(t, &p, "recipe_file").map(|(f, _)| f);
        let verify = self.verify(t, &p);
        let allow_network = self.bool(t, &p, "allow_network").unwrap_or(false);
        let cache_tags = self.bool(t, &p, "cache_tags").unwrap_or(false);
        Some(Repo {
            source: source?,
            branches,
            tags,
            dir,
            recipe_file,
            verify,
            allow_network,
            cache_tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckError;
    use crate::daemon::config::tag_matches;

    fn parse(s: &str) -> Result<Config, CheckError> {
        Config::parse(s.as_bytes(), Path::new("kiln.toml"))
    }

    #[test]
    fn the_signing_key_is_loaded_once_and_an_exposed_one_is_refused_with_its_line() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let public =
            crate::attest::sign::generate(t.path(), crate::attest::sign::KeyType::Ed25519).unwrap();
        let key = t.path().join(crate::attest::sign::PRIVATE_FILE);
        let config = format!(
            "[signing]\nkey_file = \"{}\"\nsigstore_bundle = true\n\n[[repo]]\npath = \"/srv/git/r\"\n",
            key.display()
        );
        let c = parse(&config).unwrap();
        let signer = c.signer.expect("a signer");
        assert_eq!(signer.keyid(), public.keyid());
        assert!(signer.sigstore_bundle());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&config).unwrap_err().to_string();
        assert!(
            e.contains("kiln.toml:2: signing.key_file") && e.contains("0644"),
            "{e}"
        );
        let e = parse("[signing]\n\n[[repo]]\npath = \"/srv/git/r\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("signing.key_file"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(
            r#"
state_dir = "/var/lib/kiln"
listen = "127.0.0.1:7878"
concurrency = 2
host_id = "build-2"
public_url = "https://kiln.example.com/"

[github]
api_url = "https://github.example.com/api/v3/"
poll_interval = "90s"

[registry]
url = "ghcr.io/acme"

[[repo]]
github = "acme/widget"
branches = ["main", "release/1.x"]
tags = "v*"
dir = "services/api/"

[[repo]]
path = "/srv/git/widget.git"
"#,
        )
        .unwrap();
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.host_id, "build-2");
        assert_eq!(c.public_url.as_deref(), Some("https://kiln.example.com"));
        let gh = c.github.unwrap();
        assert_eq!(gh.api_url, "https://github.example.com/api/v3");
        assert_eq!(gh.poll_interval, Duration::from_secs(90));
        assert_eq!(c.repos.len(), 2);
        assert_eq!(c.repos[0].name(), "acme/widget");
        assert_eq!(c.repos[0].recipe_key(), "services/api/kiln.toml");
        assert_eq!(c.repos[1].branches, vec!["main".to_owned()]);
        assert_eq!(c.repos[1].recipe_key(), "kiln.toml");
        assert!(tag_matches("v*", "v1.2.3") && !tag_matches("v*", "nightly"));
    }

    #[test]
    fn every_problem_names_its_key_and_line() {
        let e = parse(
            "state_dir = \"relative\"\nconcurency = 2\nconcurrency = 0\nlisten = \"nowhere\"\n\n[registry]\nurl = \"https://x\"\n\n[[repo]]\ngithub = \"acme\"\nbranchez = [\"main\"]\n\n[[repo]]\npath = \"/srv/a\"\ngithub = \"a/b\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            "kiln.toml:1: state_dir:",
            "kiln.toml:2: concurency: unknown key",
            "kiln.toml:3: concurrency: expected a whole number from 1 to 64",
            "kiln.toml:4: listen:",
            "kiln.toml:7: registry.url:",
            "kiln.toml:10: repo[0].github: \"acme\" is not \"owner/name\"",
            "kiln.toml:11: repo[0].branchez: unknown key",
            "repo[1]: give either github or path, not both",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn cache_keys_have_defaults_and_zero_turns_affinity_off() {
        let c = parse("[[repo]]\npath = \"/a\"\n").unwrap();
        assert_eq!(c.cache_affinity, Duration::from_secs(5));
        assert_eq!(c.cache_budget, 20 << 30);
        assert!(!c.repos[0].cache_tags);
        let c = parse("cache_affinity = \"0s\"\n[limits]\ncache = \"1g\"\n[[repo]]\npath = \"/a\"\ncache_tags = true\n").unwrap();
        assert_eq!(c.cache_affinity, Duration::ZERO);
        assert_eq!(c.cache_budget, 1 << 30);
        assert!(c.repos[0].cache_tags);
        let c = parse("cache_affinity = \"30s\"\n[[repo]]\npath = \"/a\"\n").unwrap();
        assert_eq!(c.cache_affinity, Duration::from_secs(30));
        let e = parse("cache_affinity = \"soon\"\n[[repo]]\npath = \"/a\"\n").unwrap_err();
        assert!(
            e.to_string().contains("cache_affinity: invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn verify_is_never_always_or_a_fraction() {
        let c = parse("verify = \"always\"\n[[repo]]\npath = \"/a\"\nverify = 0.25\n[[repo]]\npath = \"/b\"\n").unwrap();
        assert_eq!(c.verify, Verify::Always);
        assert_eq!(c.repos[0].verify, Some(Verify::Sample(0.25)));
        assert_eq!(c.repos[1].verify, None);
        assert!(parse("[[repo]]\npath = \"/a\"\n").unwrap().verify == Verify::Never);
        let e = parse("verify = 2\n[[repo]]\npath = \"/a\"\nverify = \"sometimes\"\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("kiln.toml:1: verify: a fraction must be from 0 to 1"),
            "{text}"
        );
        assert!(
            text.contains("kiln.toml:4: repo[0].verify: expected \"never\", \"always\""),
            "{text}"
        );
        assert!(Verify::Always.pick() && !Verify::Never.pick());
        let picked = (0..10_000).filter(|_| Verify::Sample(0.3).pick()).count();
        assert!(
            (2_500..3_500).contains(&picked),
            "0.3 of 10000 picked {picked}"
        );
    }

    #[test]
    fn github_repos_need_the_github_section_and_duplicates_are_refused() {
        let e = parse("[[repo]]\ngithub = \"a/b\"\n[[repo]]\ngithub = \"a/b\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("needs a [github] section"), "{text}");
        assert!(text.contains("already watched"), "{text}");
        assert!(parse("").unwrap_err().to_string().contains("[[repo]]"));
    }
}
