//! Staging an artifact's files from a build's output and packing them into its layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::events::Observer;
use crate::pack::{Compression, Layer, PackOptions};
use crate::recipe::{Artifact, FileMapping};
use crate::store::OciLayout;

/// What packing an artifact needs: where its layer goes, the build's output and spool, and
/// how to pack.
pub(super) struct Packing {
    pub layout: OciLayout,
    /// The build's output directory.
    pub output: PathBuf,
    /// Scratch space beside it, for staging mapped files.
    pub spool: PathBuf,
    pub epoch: u64,
    pub compression: Compression,
    pub cancel: CancellationToken,
    pub observer: Arc<dyn Observer + Send + Sync>,
}

/// Stage `artifact`'s files from the build output and pack them into one layer, taking the
/// SBOM's inventory of its files on the way.
pub(super) fn pack_artifact(
    artifact: &Artifact,
    p: &Packing,
) -> Result<(Layer, crate::sbom::Contents), PipelineError> {
    let output = p.output.as_path();
    let whole =
        artifact.files.len() == 1 && artifact.files[0].from == "." && artifact.files[0].to == "/";
    let staged;
    let root = if whole {
        output.to_owned()
    } else {
        staged = tempfile::Builder::new()
            .prefix("kiln-stage-")
            .tempdir_in(&p.spool)
            .map_err(|e| PipelineError::Files {
                artifact: artifact.name.clone(),
                reason: e.to_string(),
            })?;
        stage(output, &artifact.files, staged.path()).map_err(|reason| PipelineError::Files {
            artifact: artifact.name.clone(),
            reason,
        })?;
        staged.path().to_owned()
    };
    let mut opts = PackOptions::new(p.epoch);
    opts.compression = p.compression;
    let mut inventory = crate::sbom::Inventory::new(crate::sbom::FILE_CAP);
    let layer = crate::pack::pack_dir_tapped(
        &root,
        &opts,
        &p.layout,
        &p.cancel,
        p.observer.as_ref(),
        &mut inventory,
    )
    .map_err(|source| PipelineError::Pack {
        artifact: artifact.name.clone(),
        source,
    })?;
    let contents = inventory.finish().map_err(|source| PipelineError::Sbom {
        artifact: artifact.name.clone(),
        source,
    })?;
    Ok((layer, contents))
}

/// Lay out `files` mappings from `output` into `dst`. Hard links where possible (the packer
/// reads contents, so links never reach the layer), symlinks recreated as they are. A `from`
/// must stay inside the output directory: no `..` (checked by the recipe) and no symlinked
/// directory on the way.
fn stage(output: &Path, files: &[FileMapping], dst: &Path) -> Result<(), String> {
    for m in files {
        let mut src = output.to_owned();
        if m.from != "." {
            for part in m.from.split('/') {
                let md = fs::symlink_metadata(&src)
                    .map_err(|e| format!("files.from {:?}: {e}", m.from))?;
                if md.file_type().is_symlink() {
                    return Err(format!(
                        "files.from {:?} passes through a symlink and could leave the output directory",
                        m.from
                    ));
                }
                src.push(part);
            }
        }
        if fs::symlink_metadata(&src).is_err() {
            return Err(format!(
                "files.from {:?} does not exist in the build output",
                m.from
            ));
        }
        // An earlier mapping may have staged a symlink on this one's way: never write through it.
        let mut at = dst.to_owned();
        for part in
            m.to.trim_start_matches('/')
                .split('/')
                .filter(|p| !p.is_empty())
        {
            at.push(part);
            if fs::symlink_metadata(&at).is_ok_and(|md| md.file_type().is_symlink()) {
                return Err(format!(
                    "files.to {:?} passes through a symlink staged by another mapping",
                    m.to
                ));
            }
        }
        let target = dst.join(m.to.trim_start_matches('/'));
        copy_tree(&src, &target).map_err(|e| format!("staging {:?} at {:?}: {e}", m.from, m.to))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    if md.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if md.is_dir() {
        if fs::symlink_metadata(dst).is_ok_and(|d| d.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symlink staged by another mapping",
                dst.display()
            )));
        }
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        let _ = fs::remove_file(dst);
        fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))
    }
}
