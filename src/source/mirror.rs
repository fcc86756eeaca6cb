//! Bare mirrors of watched repositories: one per repository under the daemon's state
//! directory, fetched by commit. Builds read their trees from here (see
//! [`open_commit`](super::open_commit)), so a force-push or a deleted branch upstream never
//! takes away a commit that is queued.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::SourceError;
use super::git::{Git, NETWORK_TIMEOUT};
use crate::secret::Secret;

/// Credentials for fetching: sent as an `Authorization` header, only to URLs under `base`
/// (`https://HOST/`), through git's environment (never its arguments).
#[derive(Clone, Debug)]
pub struct FetchAuth {
    pub base: String,
    pub token: Secret,
}

/// Where a repository is fetched from, and what to record as its source.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The URL git fetches from (https, `git://`, or a local path).
    pub fetch_url: String,
    /// Credentials for `fetch_url`, scoped to its host.
    pub auth: Option<FetchAuth>,
    /// What annotations and provenance record as the source: the repository's web address,
    /// or its path.
    pub web_url: String,
}

/// A bare repository kiln fetches into.
#[derive(Clone, Debug)]
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    /// The mirror at `dir`, created (bare) if missing. Concurrent openers (two jobs of one
    /// repository) wait for each other.
    pub fn open(dir: &Path, cancel: &CancellationToken) -> Result<Mirror, SourceError> {
        let m = Mirror {
            dir: dir.to_owned(),
        };
        if !dir.join("HEAD").is_file() {
            let _lock = m.lock()?;
            if !dir.join("HEAD").is_file() {
                // Made aside and renamed into place: a half-made mirror is never seen.
                let parent = dir.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent).map_err(|source| SourceError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
                let tmp = tempfile::Builder::new()
                    .prefix(".mirror-")
                    .tempdir_in(parent)
                    .map_err(|source| SourceError::Io {
                        path: parent.to_owned(),
                        source,
                    })?;
                Git::new(tmp.path(), ["init", "--bare", "-q"]).output(cancel, false)?;
                let made = tmp.keep();
                std::fs::rename(&made, dir).map_err(|source| SourceError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }
        Ok(m)
    }

    /// An exclusive lock beside the mirror, for creating and fetching into it.
    fn lock(&self) -> Result<std::fs::File, SourceError> {
        let path = self.dir.with_extension("lock");
        let f = std::fs::File::create(&path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        f.lock()
            .map_err(|source| SourceError::Io { path, source })?;
        Ok(f)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the mirror has `commit`.
    pub fn has(&self, commit: &str, cancel: &CancellationToken) -> bool {
        Git::new(
            &self.dir,
            ["cat-file", "-e", &format!("{commit}^{{commit}}")],
        )
        .output(cancel, false)
        .is_ok()
    }

    /// Make sure the mirror has `commit` from `url` (https, git:// or a local path). Fetches
    /// the commit itself; where the server does not allow that, the ref it came from.
    pub fn fetch(
        &self,
        url: &str,
        commit: &str,
        git_ref: Option<&str>,
        auth: Option<&FetchAuth>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        if !is_object_name(commit) {
            return Err(SourceError::NoSuchCommit {
                repo: PathBuf::from(url),
                commit: commit.to_owned(),
                reason: "not a full commit SHA".into(),
            });
        }
        if self.has(commit, cancel) {
            return Ok(());
        }
        // One fetch at a time per mirror (concurrent fetches race on ref locks).
        let _lock = self.lock()?;
        if self.has(commit, cancel) {
            return Ok(());
        }
        // Fetched commits get a ref of their own: it keeps them from gc, and lets the next
        // fetch say what it has, so it brings only what is new.
        let fetch = |refspec: &str| {
            let mut g = Git::new(
                &self.dir,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--no-recurse-submodules",
                    "--end-of-options",
                    url,
                    refspec,
                ],
            )
            .timeout(NETWORK_TIMEOUT);
            for (k, v) in auth.map(auth_env).unwrap_or_default() {
                g = g.env(k, v);
            }
            g.output(cancel, true).map(|_| ())
        };
        let by_commit = fetch(&format!("+{commit}:refs/kiln/commits/{commit}"));
        if self.has(commit, cancel) {
            return Ok(());
        }
        if let Some(r) = git_ref.filter(|r| r.starts_with("refs/") && !r.contains("..")) {
            match fetch(&format!("+{r}:refs/kiln/fetched/{r}")) {
                Ok(()) if self.has(commit, cancel) => return Ok(()),
                Ok(()) => {}
                Err(SourceError::Cancelled) => return Err(SourceError::Cancelled),
                Err(e) => tracing::debug!(error = %e, "fetching the ref failed too"),
            }
        }
        match by_commit {
            Err(e) => Err(e),
            Ok(()) => Err(SourceError::NoSuchCommit {
                repo: PathBuf::from(url),
                commit: commit.to_owned(),
                reason: "the fetch succeeded but did not bring the commit".into(),
            }),
        }
    }
}

/// The environment that makes git send `auth`'s token to URLs under its base, and nowhere
/// else: `http.<base>.extraHeader` through `GIT_CONFIG_COUNT`, never argv.
pub fn auth_env(auth: &FetchAuth) -> Vec<(String, String)> {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("x-access-token:{}", auth.token.expose()));
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        (
            "GIT_CONFIG_KEY_0".into(),
            format!("http.{}.extraHeader", auth.base),
        ),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}"),
        ),
    ]
}

/// A full SHA-1 or SHA-256 object name.
pub fn is_object_name(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A directory name for a repository's mirror: readable, and distinct for distinct names.
pub fn mirror_name(repo: &str) -> String {
    use sha2::Digest as _;
    let readable: String = repo
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let readable = readable.trim_matches(['_', '.']);
    let tail: String = readable
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let hash = hex::encode(&sha2::Sha256::digest(repo.as_bytes())[..6]);
    format!("{tail}-{hash}.git")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_are_distinct_and_safe() {
        let a = mirror_name("acme/widget");
        assert!(a.starts_with("acme_widget-") && a.ends_with(".git"), "{a}");
        assert_ne!(mirror_name("acme/widget"), mirror_name("acme_widget"));
        let p = mirror_name("/srv/git/../x.git");
        assert!(!p.contains('/'), "{p}");
    }
}
