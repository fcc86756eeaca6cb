//! Walking a directory into a sorted list of layer entries.
//!
//! The walk never follows symlinks and never trusts directory order: it collects every entry's
//! relative path and kind (from `lstat`), then sorts by path bytes, which puts parents before
//! children. Only the list of names is held in memory; file contents are streamed later.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PackError;
use super::header::Kind;

/// One entry of a layer, before its contents are read.
#[derive(Debug)]
pub struct Entry {
    /// Path inside the layer: relative, no `./`, no trailing `/`.
    pub path: Vec<u8>,
    /// Where the contents come from.
    pub source: PathBuf,
    pub kind: Kind,
}

/// Walk `root` (not included itself) into entries sorted by path bytes.
///
/// Hardlinks are not detected: each path is stored as a regular file with its own contents,
/// so a layer never depends on which of several linked names comes first.
pub fn walk(
    root: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<Entry>, PackError> {
    let meta = fs::metadata(root).map_err(|source| PackError::Read {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory {
            path: root.to_owned(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let rd = fs::read_dir(&dir).map_err(|source| PackError::Read {
            path: dir.clone(),
            source,
        })?;
        for item in rd {
            let item = item.map_err(|source| PackError::Read {
                path: dir.clone(),
                source,
            })?;
            let source = item.path();
            let mut path: Vec<u8> = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(item.file_name().as_bytes());
            let md = fs::symlink_metadata(&source).map_err(|e| PackError::Read {
                path: source.clone(),
                source: e,
            })?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                stack.push((source.clone(), path.clone()));
                Kind::Dir
            } else if ft.is_file() {
                Kind::File {
                    size: md.len(),
                    executable: md.permissions().mode() & 0o100 != 0,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&source).map_err(|e| PackError::Read {
                    path: source.clone(),
                    source: e,
                })?;
                Kind::Symlink {
                    target: target.into_os_string().into_encoded_bytes(),
                }
            } else {
                let what = if ft.is_fifo() {
                    "a fifo"
                } else if ft.is_socket() {
                    "a socket"
                } else if ft.is_block_device() {
                    "a block device"
                } else if ft.is_char_device() {
                    "a character device"
                } else {
                    "an unknown file type"
                };
                return Err(PackError::Unsupported { path: source, what });
            };
            out.push(Entry { path, source, kind });
        }
    }
    out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
