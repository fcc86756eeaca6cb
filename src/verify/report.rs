//! What `kiln verify` answers: the recorded build, the comparison, and where `--keep` left
//! the two trees.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{VerifyError, rebuild_error};
use crate::attest::provenance::Recorded;
use crate::compare::{Comparison, unpack_image};
use crate::digest::Digest;
use crate::pipeline::PipelineError;
use crate::store::OciLayout;

/// Where `--keep` left the trees.
#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    pub expected: PathBuf,
    pub rebuilt: PathBuf,
    /// How to look closer, when diffoscope is installed.
    pub diffoscope: Option<String>,
}

/// The SBOM's digest as the provenance records it, and as the rebuild made it.
#[derive(Clone, Debug, Serialize)]
pub struct SbomCheck {
    pub expected: String,
    pub rebuilt: Option<String>,
    pub identical: bool,
    /// Whether the recorded SBOM was made by this kiln version (SBOMs of another version are
    /// shown, not compared: it may detect more, and it names itself in the document).
    pub comparable: bool,
    /// Identical layers with a different SBOM: kiln's own fault, never the build's.
    pub kiln_bug: bool,
}

/// The answer of `kiln verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub reference: String,
    pub recorded: Recorded,
    pub identical: bool,
    pub comparison: Comparison,
    /// The SBOM as recorded and as rebuilt (when the provenance records one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomCheck>,
    pub kept: Option<Kept>,
    /// The signed verdict pushed (`--attest`): its referrer manifest's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

impl Report {
    /// The report as text.
    pub fn text(&self) -> String {
        let r = &self.recorded;
        let mut out = format!(
            "{}\n  source   {} at {}\n  recipe   {} ({})\n  builder  {} ({})\n  expected {}\n  rebuilt  {}\n",
            self.reference,
            r.source,
            r.revision,
            r.recipe,
            r.recipe_digest,
            r.builder_image,
            r.builder_digest,
            self.comparison.expected,
            self.comparison.rebuilt
        );
        if let Some(s) = &self.sbom {
            out.push_str(&format!(
                "  sbom     {} (rebuilt {}{})\n",
                s.expected,
                s.rebuilt.as_deref().unwrap_or("none"),
                if s.comparable {
                    ""
                } else {
                    "; made by another kiln version, not compared"
                }
            ));
        }
        if self.identical {
            out.push_str(
                "IDENTICAL: the rebuild from the provenance gives the same bytes (and SBOM)\n",
            );
        } else if let Some(s) = self.sbom.as_ref().filter(|s| s.kiln_bug) {
            out.push_str(&format!(
                "DIFFERENT SBOM: every layer is identical, but the rebuilt SBOM is {} where {} was recorded. This is a kiln bug: please report it, with both SBOMs (kiln sbom)\n",
                s.rebuilt.as_deref().unwrap_or("missing"),
                s.expected
            ));
        } else {
            out.push_str(&format!(
                "DIFFERENT: {}\n{}",
                self.comparison.summary(),
                self.comparison.text()
            ));
        }
        if let Some(k) = &self.kept {
            out.push_str(&format!(
                "kept: {} and {}\n",
                k.expected.display(),
                k.rebuilt.display()
            ));
            match &k.diffoscope {
                Some(cmd) => out.push_str(&format!("look closer with: {cmd}\n")),
                None => out.push_str(
                    "diffoscope (apt-get install diffoscope) shows the differences inside files\n",
                ),
            }
        }
        out
    }
}

/// Unpack both images under `dir` for a closer look.
pub(super) async fn keep(
    dir: &Path,
    published: &OciLayout,
    expected: &Digest,
    rebuilt_layout: &OciLayout,
    rebuilt: &Digest,
    cancel: &CancellationToken,
) -> Result<Kept, VerifyError> {
    let (e, r) = (dir.join("expected"), dir.join("rebuilt"));
    for (layout, digest, dst) in [
        (published.clone(), *expected, e.clone()),
        (rebuilt_layout.clone(), *rebuilt, r.clone()),
    ] {
        let c = cancel.clone();
        tokio::task::spawn_blocking(move || unpack_image(&layout, &digest, &dst, &c))
            .await
            .map_err(|e| VerifyError::Rebuild(Box::new(PipelineError::Internal(e.to_string()))))?
            .map_err(|e| {
                rebuild_error(PipelineError::Pack {
                    artifact: "--keep".into(),
                    source: e,
                })
            })?;
    }
    let diffoscope =
        which("diffoscope").then(|| format!("diffoscope {} {}", e.display(), r.display()));
    Ok(Kept {
        expected: e,
        rebuilt: r,
        diffoscope,
    })
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}
