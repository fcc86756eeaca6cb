//! One built artifact, as the pipeline hands it on: its name and kind, its manifest, and where
//! it went. `kiln build --json` prints these; the daemon records them.

use serde::Serialize;

use crate::digest::{Digest, DigestParseError};

/// A stored artifact.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArtifactResult {
    pub name: String,
    pub kind: String,
    /// The manifest digest.
    pub digest: String,
    /// The manifest size.
    pub size: u64,
    /// The manifest media type.
    pub media_type: String,
    /// Where `--load` put it in the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_as: Option<String>,
    /// Where `--push` put it: `host/repo@sha256:...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_to: Option<String>,
    /// The provenance referrer's manifest digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    /// The SBOM attached to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomSummary>,
    /// The SBOM's SPDX document (canonical JSON), for the daemon's state.
    #[serde(skip)]
    pub sbom_document: Option<std::sync::Arc<Vec<u8>>>,
}

/// What an artifact's SBOM says, in brief, and where it is.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SbomSummary {
    /// The SBOM referrer's manifest digest.
    pub referrer: String,
    /// sha256 of the SPDX document (its canonical JSON, what `kiln sbom` prints).
    pub digest: String,
    /// Packages detected (in the artifact's layers and its base).
    pub packages: u64,
    /// Regular files in the artifact's own layers.
    pub files: u64,
    /// The first packages (the artifact's own by purl, then its base's), as `name version`.
    pub first: Vec<String>,
}

impl ArtifactResult {
    /// The manifest digest, parsed.
    pub fn manifest_digest(&self) -> Result<Digest, DigestParseError> {
        self.digest.parse()
    }

    /// The manifest's descriptor, to push or tag it.
    pub fn descriptor(&self) -> Result<oci_spec::image::Descriptor, DigestParseError> {
        Ok(oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(self.media_type.as_str()),
            self.size,
            self.manifest_digest()?.to_oci(),
        ))
    }
}
