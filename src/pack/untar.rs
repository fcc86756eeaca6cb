//! Spooling an untrusted tar stream into a directory, safely.
//!
//! Only regular files, directories, symlinks and hardlinks are accepted; device nodes, fifos
//! and anything else are rejected with the entry's name. Paths are checked before anything is
//! written: absolute paths and `..` components are refused, and the tar crate's `unpack_in`
//! refuses to write through a symlink that leads outside the directory. Ownership, times and
//! extended attributes are dropped; only the owner-exec bit of a file's mode survives.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use tar::EntryType;
use tokio_util::sync::CancellationToken;

use super::PackError;

pub fn unpack(
    stream: impl Read,
    dst: &Path,
    cancel: &CancellationToken,
    max_bytes: u64,
) -> Result<(), PackError> {
    let mut total: u64 = 0;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| PackError::BadTar(e.to_string()))?;
    for entry in entries {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let mut entry = entry.map_err(|e| PackError::BadTar(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| PackError::BadTar(e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        let bad = |reason: &str| PackError::BadTar(format!("entry {shown:?}: {reason}"));
        if path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err(bad("path leaves the output directory"));
        }
        let ty = entry.header().entry_type();
        if ty == EntryType::XGlobalHeader {
            // e.g. the commit id `git archive` records; metadata only.
            continue;
        }
        match ty {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            EntryType::Char | EntryType::Block => {
                return Err(bad("device files are not allowed in layers"));
            }
            EntryType::Fifo => return Err(bad("fifos are not allowed in layers")),
            // Extension headers (PAX, GNU long names) are consumed by the tar crate.
            other => return Err(bad(&format!("unsupported entry type {other:?}"))),
        }
        if ty == EntryType::Link {
            let target = entry
                .link_name()
                .map_err(|e| PackError::BadTar(e.to_string()))?
                .ok_or_else(|| bad("hardlink without a target"))?;
            if target
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
            {
                return Err(bad("hardlink target leaves the output directory"));
            }
        }
        // Counted before anything is written: a file past the limit never lands.
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(PackError::TooLarge { limit: max_bytes });
        }
        let executable = entry.header().mode().unwrap_or(0) & 0o100 != 0;
        let unpacked = entry
            .unpack_in(dst)
            .map_err(|e| PackError::BadTar(format!("entry {shown:?}: {e}")))?;
        if !unpacked {
            return Err(bad("path leaves the output directory"));
        }
        let on_disk = dst.join(&path);
        let mode = match ty {
            EntryType::Directory => Some(0o755),
            EntryType::Regular | EntryType::Continuous => {
                Some(if executable { 0o755 } else { 0o644 })
            }
            _ => None,
        };
        if let Some(mode) = mode {
            fs::set_permissions(&on_disk, fs::Permissions::from_mode(mode)).map_err(|source| {
                PackError::Read {
                    path: on_disk.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}
