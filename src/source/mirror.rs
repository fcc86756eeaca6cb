//! Bare mirrors of watched repositories: one per repository under the daemon's state
//! directory, fetched by commit. Builds read their trees from here (see
//! [`open_commit`](super::open_commit)), so a force-push or a deleted branch upstream never
//! takes away a commit that is queued.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::SourceError;
use super::git::{Git, NETWORK_TIMEOUT};
use crate::registry::Secret;

/// Credentials for fetching: sent as an `Authorization` header, only to URLs under `base`
/// (`https://github.com/`), through git's environment (never its arguments).
#[derive(Clone, Debug)]
pub struct FetchAuth {
    pub base: String,
    pub token: Secret,
}

/// A bare repository kiln fetches into.
#[derive(Clone, Debug)]
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    /// The mirror at `dir`, created (bare, never garbage-collected on its own) if missing.
    pub fn open(dir: &Path, cancel: &CancellationToken) -> Result<Mirror, SourceError> {
        if !dir.join("HEAD").is_file() {
            std::fs::create_dir_all(dir).map_err(|source| SourceError::Io {
                path: dir.to_owned(),
                source,
            })?;
            Git::new(dir, ["init", "--bare", "-q"]).output(cancel, false)?;
            // Fetched commits have no refs of their own: never let gc drop them.
            Git::new(dir, ["config", "gc.auto", "0"]).output(cancel, false)?;
        }
        Ok(Mirror {
            dir: dir.to_owned(),
        })
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
        if self.has(commit, cancel) {
            return Ok(());
        }
        // One fetch at a time per mirror (concurrent fetches race on shallow and ref locks).
        let lock_path = self.dir.join("kiln-fetch.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|source| SourceError::Io {
            path: lock_path.clone(),
            source,
        })?;
        lock.lock().map_err(|source| SourceError::Io {
            path: lock_path,
            source,
        })?;
        if self.has(commit, cancel) {
            return Ok(());
        }
        let fetch = |what: &str| {
            let mut g = Git::new(
                &self.dir,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--no-recurse-submodules",
                    url,
                    what,
                ],
            )
            .timeout(NETWORK_TIMEOUT);
            if let Some(a) = auth {
                use base64::Engine as _;
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("x-access-token:{}", a.token.expose()));
                g = g
                    .env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", format!("http.{}.extraHeader", a.base))
                    .env(
                        "GIT_CONFIG_VALUE_0",
                        format!("Authorization: Basic {basic}"),
                    );
            }
            g.output(cancel, true).map(|_| ())
        };
        let by_commit = fetch(commit);
        if self.has(commit, cancel) {
            return Ok(());
        }
        if let Some(r) = git_ref {
            match fetch(r) {
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
