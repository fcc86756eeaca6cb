//! `kiln validate`: every blob, digest, size and diff_id of a local OCI layout checked.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

pub fn validate(layout: &Path) -> Result<ExitCode> {
    let r = kiln::validate::validate_layout(layout)?;
    eprintln!(
        "ok: {} manifests, {} layers, {} blobs",
        r.manifests, r.layers, r.blobs
    );
    Ok(ExitCode::SUCCESS)
}
