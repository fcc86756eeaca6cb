//! Local repositories (bare or not) on this host's disk: their refs read with git, watched
//! with `notify` (the refs and `packed-refs`), fetched by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Changes, Forge, ForgeError, Kind, Origin, Snapshot, Watch};
use crate::source::git::Git;

/// How often a local repository is read again when no change was seen on disk.
const FALLBACK_POLL: Duration = Duration::from_secs(60);

/// Local repositories as a kind of forge.
pub struct LocalKind;

/// The kind's entry in [`KINDS`](super::KINDS).
pub const KIND: LocalKind = LocalKind;

impl Kind for LocalKind {
    fn name(&self) -> &'static str {
        "local"
    }

    fn claims(&self, repo: &str) -> bool {
        repo.starts_with('/')
    }
}

/// The repositories on this host's disk, named by their paths.
#[derive(Default)]
pub struct Local;

/// `(ref, commit)` of the branches and tags of a local repository (tags peeled to commits).
fn refs(git_dir: &Path, cancel: &CancellationToken) -> Result<Vec<(String, String)>, String> {
    let out = Git::new(
        git_dir,
        [
            "for-each-ref",
            "--format=%(objectname) %(*objectname) %(refname)",
            "refs/heads",
            "refs/tags",
        ],
    )
    .text(cancel)
    .map_err(|e| e.to_string())?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ' ');
            let (obj, peeled, name) = (p.next()?, p.next()?, p.next()?);
            let commit = if peeled.is_empty() { obj } else { peeled };
            Some((name.to_owned(), commit.to_owned()))
        })
        .collect())
}

/// The refs of the repository at `repo`, read off the async runtime.
async fn read_refs(repo: &str) -> Result<Vec<(String, String)>, ForgeError> {
    let dir = PathBuf::from(repo);
    tokio::task::spawn_blocking(move || refs(&dir, &CancellationToken::new()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| ForgeError::Unreadable {
            what: format!("the refs of {repo}"),
            message,
        })
}

/// The refs of `repo` under `prefix`, by their names below it, with their commits.
async fn named(repo: &str, prefix: &str) -> Result<Vec<(String, String)>, ForgeError> {
    Ok(under(&read_refs(repo).await?, prefix))
}

/// The `refs` under `prefix`, by their names below it.
fn under(refs: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    refs.iter()
        .filter_map(|(r, sha)| Some((r.strip_prefix(prefix)?.to_owned(), sha.clone())))
        .collect()
}

#[async_trait::async_trait]
impl Forge for Local {
    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn watch(&self) -> Watch {
        Watch::Notify {
            fallback: FALLBACK_POLL,
        }
    }

    /// A watcher on the repository's git directory: the directory itself (`packed-refs`,
    /// `HEAD`) and its `refs`. A repository that cannot be watched is only read every
    /// a minute.
    async fn changes(&self, repo: &str, stop: &CancellationToken) -> Result<Changes, ForgeError> {
        let (path, stop) = (PathBuf::from(repo), stop.clone());
        // The git directory: the path itself for a bare repository, else its .git.
        let found = tokio::task::spawn_blocking(move || {
            Git::new(&path, ["rev-parse", "--absolute-git-dir"]).text(&stop)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let git_dir = PathBuf::from(found.map_err(|message| ForgeError::Unreadable {
            what: format!("{repo} (not a readable git repository)"),
            message,
        })?);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = {
            use notify::Watcher;
            let tx = tx.clone();
            let w = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
                if r.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            });
            match w {
                Ok(mut w) => {
                    let ok = w
                        .watch(&git_dir.join("refs"), notify::RecursiveMode::Recursive)
                        .is_ok()
                        && w.watch(&git_dir, notify::RecursiveMode::NonRecursive)
                            .is_ok();
                    if !ok {
                        tracing::warn!(repo, "cannot watch the repository; polling it instead");
                    }
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(repo, error = %e, "cannot watch the repository; polling it instead");
                    None
                }
            }
        };
        tracing::info!(repo, git_dir = %git_dir.display(), "watching a local repository");
        // The sender is kept with the watcher: without one, the channel stays open and quiet.
        Ok(Changes::new(rx, (watcher, tx)))
    }

    async fn head(&self, repo: &str, branch: &str) -> Result<Option<String>, ForgeError> {
        let want = format!("refs/heads/{branch}");
        Ok(read_refs(repo)
            .await?
            .into_iter()
            .find_map(|(r, sha)| (r == want).then_some(sha)))
    }

    async fn tags(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError> {
        named(repo, "refs/tags/").await
    }

    /// One read of the refs for all of it.
    async fn snapshot(
        &self,
        repo: &str,
        branches: &[String],
        tags: bool,
    ) -> Result<Snapshot, ForgeError> {
        let refs = read_refs(repo).await?;
        let find = |want: String| {
            refs.iter()
                .find(|(r, _)| *r == want)
                .map(|(_, sha)| sha.clone())
        };
        Ok(Snapshot {
            heads: branches
                .iter()
                .map(|b| (b.clone(), find(format!("refs/heads/{b}"))))
                .collect(),
            tags: tags.then(|| under(&refs, "refs/tags/")),
        })
    }

    async fn branches(&self, repo: &str) -> Result<Vec<(String, String)>, ForgeError> {
        named(repo, "refs/heads/").await
    }

    /// Fetched by its path, recorded as its path.
    async fn origin(&self, repo: &str) -> Result<Origin, ForgeError> {
        Ok(Origin {
            fetch_url: repo.to_owned(),
            auth: None,
            web_url: repo.to_owned(),
        })
    }
}
