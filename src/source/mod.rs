//! The source stage: the exact tree a build sees, and what identifies it.
//!
//! In a git work tree that is the committed tree at HEAD (tracked files only) of the given
//! directory, which may be a subdirectory of the repository; its commit time is the
//! SOURCE_DATE_EPOCH and its SHA the revision. A plain directory is used as it is, with an
//! epoch the caller provides.

pub mod git;
pub mod mirror;

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use git::Git;
pub use mirror::{FetchAuth, Origin};

/// What identifies a source, as recorded in annotations and `--json` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// The commit SHA, for git sources.
    pub revision: Option<String>,
    /// The link to the source that annotations record: the same from every checkout (see
    /// [`crate::forge::source_link`]), or the caller's `--source-url`. None for a local path.
    pub url: Option<String>,
    /// The remote as git has it (the `origin` of a work tree, or the URL an exact commit was
    /// fetched from), without credentials: the provenance records it, never the manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// SOURCE_DATE_EPOCH: the commit time, or the caller's epoch for a plain directory.
    pub epoch: u64,
    /// Built from uncommitted changes (`--allow-dirty`).
    pub dirty: bool,
    /// The symbolic ref HEAD pointed at (`refs/heads/main`), for provenance.
    #[serde(skip)]
    pub git_ref: Option<String>,
    /// The built directory's path inside the repository (`""` at the root, `app/` below it).
    #[serde(skip)]
    pub subdir: String,
}

/// A source ready to build: its info and the directory holding exactly the tree to build.
pub struct Checkout {
    pub info: SourceInfo,
    tree: Tree,
}

enum Tree {
    /// Extracted from git; removed on drop.
    Extracted(tempfile::TempDir),
    /// A plain directory, used in place.
    InPlace(PathBuf),
}

impl Checkout {
    /// The directory holding the tree to build.
    pub fn tree(&self) -> &Path {
        match &self.tree {
            Tree::Extracted(t) => t.path(),
            Tree::InPlace(p) => p,
        }
    }
}

/// How to open a source.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Build a git tree with uncommitted changes to tracked files (marks the result dirty).
    pub allow_dirty: bool,
    /// An explicit epoch: overrides the commit time.
    pub epoch: Option<u64>,
    /// The epoch for a plain directory when no explicit one is given (`$SOURCE_DATE_EPOCH`);
    /// never used for a git tree, whose commit time is authoritative.
    pub plain_epoch: Option<u64>,
    /// The source link to record instead of the one derived from `origin` (`--source-url`).
    pub source_url: Option<String>,
}

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{} has uncommitted changes to tracked files:\n{changes}\ncommit them, or pass --allow-dirty to build them anyway (the result is marked dirty)", dir.display())]
    Dirty { dir: PathBuf, changes: String },
    #[error("{} is not a git work tree, so it needs --source-date-epoch or $SOURCE_DATE_EPOCH for its timestamps", dir.display())]
    NoEpoch { dir: PathBuf },
    #[error("{} is in a git repository without any commit yet", dir.display())]
    NoCommit { dir: PathBuf },
    #[error("`git {args}` failed in {}: {message}", dir.display())]
    Git {
        dir: PathBuf,
        args: String,
        message: String,
        /// A network command that may succeed later (a fetch from an unreachable host).
        retryable: bool,
    },
    #[error("git is not installed (or not on PATH), and it is needed to read a git source")]
    GitMissing,
    #[error("`git {args}` did not finish within {}s and was killed", after.as_secs())]
    GitTimeout {
        args: String,
        after: std::time::Duration,
    },
    #[error("commit {commit} is not in {}: {reason}", repo.display())]
    NoSuchCommit {
        repo: PathBuf,
        commit: String,
        reason: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find where to fetch {repo} from: {message}")]
    Locate {
        repo: String,
        message: String,
        retryable: bool,
    },
    #[error("extracting the committed tree: {0}")]
    Extract(#[from] crate::pack::PackError),
    #[error("reading the source was cancelled")]
    Cancelled,
}

impl SourceError {
    /// Whether trying again could help: a network fetch that failed or timed out, or a
    /// transient I/O condition. Bad input (a dirty tree, a missing commit) does not fix itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Git { retryable, .. } | SourceError::Locate { retryable, .. } => {
                *retryable
            }
            SourceError::GitTimeout { .. } => true,
            SourceError::Io { source, .. } => crate::errors::io_retryable(source),
            SourceError::Extract(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn git(dir: &Path, args: &[&str], cancel: &CancellationToken) -> Result<String, SourceError> {
    Git::new(dir, args).text(cancel)
}

/// Whether `dir` is inside a git repository: it or an ancestor holds `.git`. Then it must be
/// read through git, and a git that fails ("dubious ownership", a broken repository, git
/// missing) is an error, never a reason to build the directory as plain files.
fn in_git_repository(dir: &Path) -> bool {
    let Ok(abs) = dir.canonicalize() else {
        return false;
    };
    abs.ancestors().any(|a| a.join(".git").exists())
}

/// Open the source at `dir`; a git tree is extracted under `scratch`.
pub fn open(
    dir: &Path,
    opts: &SourceOptions,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<Checkout, SourceError> {
    let meta = std::fs::metadata(dir).map_err(|source| SourceError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SourceError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if !in_git_repository(dir) {
        let epoch = opts
            .epoch
            .or(opts.plain_epoch)
            .ok_or_else(|| SourceError::NoEpoch {
                dir: dir.to_owned(),
            })?;
        return Ok(Checkout {
            info: SourceInfo {
                revision: None,
                url: None,
                remote: None,
                git_ref: None,
                subdir: String::new(),
                epoch,
                dirty: false,
            },
            tree: Tree::InPlace(dir.to_owned()),
        });
    }
    let inside = git(dir, &["rev-parse", "--is-inside-work-tree"], cancel)?;
    if inside != "true" {
        return Err(SourceError::Git {
            dir: dir.to_owned(),
            args: "rev-parse --is-inside-work-tree".into(),
            message: "this is inside a git directory, not a work tree".into(),
            retryable: false,
        });
    }
    let revision = match git(
        dir,
        &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        cancel,
    ) {
        Ok(r) => r,
        Err(SourceError::Git { .. }) => {
            return Err(SourceError::NoCommit {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(e),
    };
    let prefix = git(dir, &["rev-parse", "--show-prefix"], cancel)?;
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"], cancel)?);
    let commit_time = commit_time(dir, "HEAD", cancel)?;
    let changes = git(
        dir,
        &["status", "--porcelain", "--untracked-files=no", "--", "."],
        cancel,
    )?;
    let dirty = !changes.trim().is_empty();
    if dirty && !opts.allow_dirty {
        return Err(SourceError::Dirty {
            dir: dir.to_owned(),
            changes,
        });
    }
    // A dirty build takes the tracked files as they are on disk: `git stash create` makes a
    // commit of them without touching the work tree or the stash list.
    let commit = if dirty {
        git(dir, &["stash", "create"], cancel)?
    } else {
        revision.clone()
    };
    let commit = if commit.is_empty() {
        revision.clone()
    } else {
        commit
    };
    let url = git(dir, &["remote", "get-url", "origin"], cancel)
        .ok()
        .filter(|u| !u.is_empty());
    let git_ref = git(dir, &["symbolic-ref", "-q", "HEAD"], cancel)
        .ok()
        .filter(|r| !r.is_empty());
    let extracted = extract(&top, &commit, &prefix, scratch, cancel)?;
    Ok(Checkout {
        info: SourceInfo {
            revision: Some(revision),
            remote: url.clone(),
            url,
            epoch: opts.epoch.unwrap_or(commit_time),
            dirty,
            git_ref,
            subdir: prefix,
        },
        tree: Tree::Extracted(extracted),
    })
}

/// An exact commit in a repository kiln keeps (a bare mirror): what the daemon builds.
#[derive(Clone, Debug)]
pub struct CommitSource {
    /// The repository holding the commit (bare or not).
    pub repo: PathBuf,
    /// The full commit SHA.
    pub commit: String,
    /// The directory to build inside the repository (`""` for the root, else `a/b`).
    pub subdir: String,
    /// What to record as the source: the repository's web URL or its path, whatever URL it
    /// was fetched from.
    pub url: String,
    /// The URL it was fetched from, when that is not `url` (the provenance's raw remote).
    pub remote: Option<String>,
    /// The ref that led to the commit (`refs/heads/main`), for provenance.
    pub git_ref: Option<String>,
    /// SOURCE_DATE_EPOCH instead of the commit time (a rebuild of a build that overrode it).
    pub epoch: Option<u64>,
}

/// Open an exact commit: its tree (or `subdir`'s) extracted under `scratch`, its commit time
/// as SOURCE_DATE_EPOCH.
pub fn open_commit(
    src: &CommitSource,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<Checkout, SourceError> {
    let commit = git(
        &src.repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{}^{{commit}}", src.commit),
        ],
        cancel,
    )
    .map_err(|e| match e {
        SourceError::Git { message, .. } => SourceError::NoSuchCommit {
            repo: src.repo.clone(),
            commit: src.commit.clone(),
            reason: if message.is_empty() {
                "unknown revision".into()
            } else {
                message
            },
        },
        e => e,
    })?;
    let epoch = match src.epoch {
        Some(e) => e,
        None => commit_time(&src.repo, &commit, cancel)?,
    };
    let subdir = src.subdir.trim_matches('/');
    let prefix = if subdir.is_empty() {
        String::new()
    } else {
        format!("{subdir}/")
    };
    let extracted = extract(&src.repo, &commit, &prefix, scratch, cancel)?;
    Ok(Checkout {
        info: SourceInfo {
            revision: Some(commit),
            url: Some(src.url.clone()),
            remote: Some(src.remote.clone().unwrap_or_else(|| src.url.clone())),
            epoch,
            dirty: false,
            git_ref: src.git_ref.clone(),
            subdir: prefix,
        },
        tree: Tree::Extracted(extracted),
    })
}

/// The first line of a commit's message (for people: the dashboard's build list).
pub fn commit_subject(
    repo: &Path,
    rev: &str,
    cancel: &CancellationToken,
) -> Result<String, SourceError> {
    Ok(git(repo, &["show", "-s", "--format=%s", rev], cancel)?
        .trim_end()
        .to_owned())
}

fn commit_time(repo: &Path, rev: &str, cancel: &CancellationToken) -> Result<u64, SourceError> {
    git(repo, &["show", "-s", "--format=%ct", rev], cancel)?
        .trim()
        .parse()
        .map_err(|_| SourceError::Git {
            dir: repo.to_owned(),
            args: format!("show -s --format=%ct {rev}"),
            message: "not an integer commit time".into(),
            retryable: false,
        })
}

fn extract(
    top: &Path,
    commit: &str,
    prefix: &str,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<tempfile::TempDir, SourceError> {
    let extracted = tempfile::Builder::new()
        .prefix("kiln-source-")
        .tempdir_in(scratch)
        .map_err(|source| SourceError::Io {
            path: scratch.to_owned(),
            source,
        })?;
    // From the top level: `<commit>:<prefix>` names the subdirectory's tree only there.
    extract_tree(top, &format!("{commit}:{prefix}"), extracted.path(), cancel)?;
    Ok(extracted)
}

/// Write the tree `treeish` into `dst` from the object database: the committed bytes exactly,
/// with no checkout filters, line-ending conversion or export attributes of this host (which
/// `git archive` would apply). Files keep their exec bit, symlinks their target; submodules are
/// left out. Paths are checked before anything is written.
fn extract_tree(
    top: &Path,
    treeish: &str,
    dst: &Path,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    use std::io::{BufReader, Write};
    let entries = list_tree(top, treeish, cancel)?;
    let mut batch = Git::new(top, ["cat-file", "--batch"]).spawn_piped(cancel)?;
    let mut stdin = batch
        .stdin
        .take()
        .ok_or_else(|| git_error(top, "cat-file --batch", "no stdin".into()))?;
    let oids: Vec<String> = entries.iter().map(|e| e.oid.clone()).collect();
    let feeder = std::thread::spawn(move || {
        for oid in oids {
            if writeln!(stdin, "{oid}").is_err() {
                break;
            }
        }
    });
    let stdout = batch
        .stdout
        .take()
        .ok_or_else(|| git_error(top, "cat-file --batch", "no stdout".into()))?;
    let mut out = BufReader::new(stdout);
    let result = entries.iter().try_for_each(|e| {
        if cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        write_entry(top, e, &mut out, dst)
    });
    // A read that failed because the watchdog killed git is a cancellation or a timeout.
    let result = match (result, batch.interrupted()) {
        (Err(_), Some(why)) => Err(why),
        (r, _) => r,
    };
    drop(out);
    let finished = batch.finish();
    let _ = feeder.join();
    result.and(finished)
}

fn git_error(top: &Path, args: &str, message: String) -> SourceError {
    SourceError::Git {
        dir: top.to_owned(),
        args: args.to_owned(),
        message,
        retryable: false,
    }
}

/// A blob of a committed tree: its mode, object and path.
struct TreeEntry {
    mode: String,
    oid: String,
    path: std::ffi::OsString,
}

/// The blobs of `treeish` (`ls-tree -r`), each path checked: no `..`, no absolute path, no
/// `.git`.
fn list_tree(
    top: &Path,
    treeish: &str,
    cancel: &CancellationToken,
) -> Result<Vec<TreeEntry>, SourceError> {
    let listing = Git::new(top, ["ls-tree", "-r", "-z", treeish]).output(cancel, false)?;
    // "<mode> <type> <object>\t<path>" records, NUL-terminated.
    let mut entries = Vec::new();
    for rec in listing.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let tab = rec
            .iter()
            .position(|&b| b == b'\t')
            .ok_or_else(|| git_error(top, "ls-tree", "malformed output".into()))?;
        let head = String::from_utf8_lossy(&rec[..tab]).into_owned();
        let mut parts = head.split(' ');
        let (mode, kind, oid) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if kind != "blob" {
            continue; // submodule commits
        }
        let path = std::ffi::OsStr::from_bytes(&rec[tab + 1..]).to_owned();
        let bad = Path::new(&path)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(n) if n != ".git"));
        if bad {
            return Err(git_error(
                top,
                "ls-tree",
                format!("refusing the path {:?} in the tree", Path::new(&path)),
            ));
        }
        entries.push(TreeEntry {
            mode: mode.to_owned(),
            oid: oid.to_owned(),
            path,
        });
    }
    Ok(entries)
}

/// Write one entry under `dst` from the next answer of `cat-file --batch`.
fn write_entry(
    top: &Path,
    e: &TreeEntry,
    out: &mut impl std::io::BufRead,
    dst: &Path,
) -> Result<(), SourceError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| SourceError::Io { path, source }
    };
    let oid = &e.oid;
    let mut header = String::new();
    out.read_line(&mut header)
        .map_err(|err| git_error(top, "cat-file --batch", err.to_string()))?;
    let size: u64 = header
        .trim_end()
        .strip_prefix(&format!("{oid} blob "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            git_error(
                top,
                "cat-file --batch",
                format!("unexpected answer {:?} for {oid}", header.trim_end()),
            )
        })?;
    let target = dst.join(&e.path);
    let parent = target.parent().unwrap_or(dst);
    // No component on the way may be a symlink written earlier.
    let mut at = dst.to_owned();
    for c in Path::new(&e.path)
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
    {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(git_error(
                top,
                "cat-file",
                format!("the tree writes through the symlink {:?}", at),
            ));
        }
    }
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let mut body = (&mut *out).take(size);
    if e.mode == "120000" {
        let mut link = Vec::new();
        body.read_to_end(&mut link).map_err(io(&target))?;
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
            .map_err(io(&target))?;
    } else {
        // A new file, never through a symlink: a crafted tree (a symlink, then a file of
        // the same name) cannot write outside the directory.
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(io(&target))?;
        std::io::copy(&mut body, &mut f).map_err(io(&target))?;
        let perm = if e.mode == "100755" { 0o755 } else { 0o644 };
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(perm))
            .map_err(io(&target))?;
    }
    let mut nl = [0u8; 1];
    out.read_exact(&mut nl)
        .map_err(|err| git_error(top, "cat-file --batch", err.to_string()))
}
