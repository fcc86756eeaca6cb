//! The source stage: the exact tree a build sees, and what identifies it.
//!
//! In a git work tree that is the committed tree at HEAD (tracked files only) of the given
//! directory, which may be a subdirectory of the repository; its commit time is the
//! SOURCE_DATE_EPOCH and its SHA the revision. A plain directory is used as it is, with an
//! epoch the caller provides.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What identifies a source, as recorded in annotations and `--json` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// The commit SHA, for git sources.
    pub revision: Option<String>,
    /// The `origin` remote, normalized and without credentials.
    pub url: Option<String>,
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
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("extracting the committed tree: {0}")]
    Extract(#[from] crate::pack::PackError),
}

impl SourceError {
    /// Whether trying again could help: none of these fix themselves.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String, SourceError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SourceError::Git {
            dir: dir.to_owned(),
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SourceError::Git {
            dir: dir.to_owned(),
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_owned())
}

fn is_work_tree(dir: &Path) -> bool {
    matches!(
        git(dir, &["rev-parse", "--is-inside-work-tree"]).as_deref(),
        Ok("true")
    )
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
    if !is_work_tree(dir) {
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
                git_ref: None,
                subdir: String::new(),
                epoch,
                dirty: false,
            },
            tree: Tree::InPlace(dir.to_owned()),
        });
    }
    let revision =
        git(dir, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).map_err(|_| {
            SourceError::NoCommit {
                dir: dir.to_owned(),
            }
        })?;
    let prefix = git(dir, &["rev-parse", "--show-prefix"])?;
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    let commit_time: u64 = git(dir, &["log", "-1", "--format=%ct", "HEAD"])?
        .trim()
        .parse()
        .map_err(|_| SourceError::Git {
            dir: dir.to_owned(),
            args: "log -1 --format=%ct HEAD".into(),
            message: "not an integer commit time".into(),
        })?;
    let changes = git(
        dir,
        &["status", "--porcelain", "--untracked-files=no", "--", "."],
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
        git(dir, &["stash", "create"])?
    } else {
        revision.clone()
    };
    let commit = if commit.is_empty() {
        revision.clone()
    } else {
        commit
    };
    let url = git(dir, &["remote", "get-url", "origin"])
        .ok()
        .map(|u| normalize_remote(&u));
    let git_ref = git(dir, &["symbolic-ref", "-q", "HEAD"])
        .ok()
        .filter(|r| !r.is_empty());

    let extracted = tempfile::Builder::new()
        .prefix("kiln-source-")
        .tempdir_in(scratch)
        .map_err(|source| SourceError::Io {
            path: scratch.to_owned(),
            source,
        })?;
    let treeish = format!("{commit}:{prefix}");
    // From the top level: `<commit>:<prefix>` names the subdirectory's tree only there.
    extract_tree(&top, &treeish, extracted.path(), cancel)?;
    Ok(Checkout {
        info: SourceInfo {
            revision: Some(revision),
            url,
            epoch: opts.epoch.unwrap_or(commit_time),
            dirty,
            git_ref,
            subdir: prefix,
        },
        tree: Tree::Extracted(extracted),
    })
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
    use std::io::{BufRead, BufReader, Write};
    let git_err = |args: &str, message: String| SourceError::Git {
        dir: top.to_owned(),
        args: args.to_owned(),
        message,
    };
    let listing = Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["ls-tree", "-r", "-z", treeish])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| git_err("ls-tree", e.to_string()))?;
    if !listing.status.success() {
        return Err(git_err(
            "ls-tree",
            String::from_utf8_lossy(&listing.stderr).trim().to_owned(),
        ));
    }
    // "<mode> <type> <object>\t<path>" records, NUL-terminated.
    let mut entries: Vec<(String, String, std::ffi::OsString)> = Vec::new();
    for rec in listing.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let tab = rec
            .iter()
            .position(|&b| b == b'\t')
            .ok_or_else(|| git_err("ls-tree", "malformed output".into()))?;
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
            return Err(git_err(
                "ls-tree",
                format!("refusing the path {:?} in the tree", Path::new(&path)),
            ));
        }
        entries.push((mode.to_owned(), oid.to_owned(), path));
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| git_err("cat-file --batch", e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let oids: Vec<String> = entries.iter().map(|e| e.1.clone()).collect();
    let feeder = std::thread::spawn(move || {
        for oid in oids {
            if writeln!(stdin, "{oid}").is_err() {
                break;
            }
        }
    });
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let result = (|| -> Result<(), SourceError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source: std::io::Error| SourceError::Io { path, source }
        };
        for (mode, oid, rel) in &entries {
            if cancel.is_cancelled() {
                return Err(SourceError::Extract(crate::pack::PackError::Cancelled));
            }
            let mut header = String::new();
            out.read_line(&mut header)
                .map_err(|e| git_err("cat-file --batch", e.to_string()))?;
            let size: u64 = header
                .trim_end()
                .strip_prefix(&format!("{oid} blob "))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    git_err(
                        "cat-file --batch",
                        format!("unexpected answer {:?} for {oid}", header.trim_end()),
                    )
                })?;
            let target = dst.join(rel);
            let parent = target.parent().unwrap_or(dst);
            // No component on the way may be a symlink written earlier.
            let mut at = dst.to_owned();
            for c in Path::new(rel)
                .parent()
                .into_iter()
                .flat_map(|p| p.components())
            {
                at.push(c);
                if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(git_err(
                        "cat-file",
                        format!("the tree writes through the symlink {:?}", at),
                    ));
                }
            }
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            let mut body = (&mut out).take(size);
            if mode == "120000" {
                let mut link = Vec::new();
                body.read_to_end(&mut link).map_err(io(&target))?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
                    .map_err(io(&target))?;
            } else {
                let mut f = std::fs::File::create(&target).map_err(io(&target))?;
                std::io::copy(&mut body, &mut f).map_err(io(&target))?;
                let perm = if mode == "100755" { 0o755 } else { 0o644 };
                std::fs::set_permissions(
                    &target,
                    std::os::unix::fs::PermissionsExt::from_mode(perm),
                )
                .map_err(io(&target))?;
            }
            let mut nl = [0u8; 1];
            out.read_exact(&mut nl)
                .map_err(|e| git_err("cat-file --batch", e.to_string()))?;
        }
        Ok(())
    })();
    drop(out);
    let _ = child.kill();
    let _ = child.wait();
    let _ = feeder.join();
    result
}

/// GitHub remotes in any form become `https://github.com/<owner>/<repo>`; other URLs keep their
/// form minus any credentials (`user:password@`) in their authority.
pub fn normalize_remote(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    // host and path, for URL forms and scp-like `user@host:path`
    let (authority, path) = match scheme {
        Some(_) => rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p)),
        None => match rest.split_once(':') {
            Some((a, p)) if !a.contains('/') => (a, p),
            _ => return url.to_owned(),
        },
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host_port.split(':').next().unwrap_or(host_port);
    if host.eq_ignore_ascii_case("github.com") || host.eq_ignore_ascii_case("www.github.com") {
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        return format!("https://github.com/{path}");
    }
    match scheme {
        Some(s) => format!("{s}://{host_port}/{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_remotes_are_normalized() {
        for u in [
            "git@github.com:o/r.git",
            "https://github.com/o/r.git",
            "https://github.com/o/r",
            "ssh://git@github.com/o/r.git",
            "https://x-access-token:ghs_secret@github.com/o/r.git",
            "git://github.com/o/r.git",
        ] {
            assert_eq!(normalize_remote(u), "https://github.com/o/r", "{u}");
        }
    }

    #[test]
    fn other_remotes_lose_credentials_only() {
        assert_eq!(
            normalize_remote("https://user:pw@git.example.com:8443/team/app.git"),
            "https://git.example.com:8443/team/app.git"
        );
        assert_eq!(
            normalize_remote("https://git.example.com/team/app"),
            "https://git.example.com/team/app"
        );
        assert_eq!(
            normalize_remote("git@gitlab.example.com:team/app.git"),
            "git@gitlab.example.com:team/app.git"
        );
        assert_eq!(normalize_remote("/srv/git/app.git"), "/srv/git/app.git");
    }
}
