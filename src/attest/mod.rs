//! Attestations: in-toto statements about an artifact, stored as OCI referrers of it. Today
//! that is its SLSA provenance ([`provenance`]); SBOMs and signed rebuild verdicts come next,
//! and go here.
//!
//! A statement lives in its own manifest (`artifactType` `application/vnd.in-toto+json`,
//! `subject` = the artifact's manifest), so the artifact's digest never depends on it: the
//! same commit still gives the same image digest, while each build records when and where it
//! ran. A statement is written by [`attach`]: [`encode`] is where a signer will wrap it in a
//! DSSE envelope; unsigned, it is stored as the statement's canonical JSON.

pub mod provenance;

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use serde_json::Value;

use crate::image::{ImageError, rfc3339};
use crate::store::{BlobSink, OciLayout};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The `artifactType` of the referrer and the media type of its one layer.
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";

/// A statement as it is stored: its layer's media type and bytes.
pub struct Encoded {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
}

/// A statement's bytes as they are stored. Unsigned: the statement's canonical JSON. (A
/// signer goes here: it returns a DSSE envelope over these bytes instead.)
pub fn encode(statement: &Value) -> Result<Encoded, ImageError> {
    let bytes = crate::json::to_canonical_vec(statement).map_err(|source| ImageError::Json {
        what: "statement",
        source,
    })?;
    Ok(Encoded {
        media_type: IN_TOTO_MEDIA_TYPE,
        bytes,
    })
}

/// Store `statement` in `layout` as a referrer of `subject`, replacing an older statement for
/// the same subject. Returns the referrer manifest's descriptor.
pub fn attach(
    layout: &OciLayout,
    subject: &Descriptor,
    statement: &Value,
    created: u64,
) -> Result<Descriptor, ImageError> {
    let encoded = encode(statement)?;
    let blob = layout.put_blob(&encoded.bytes)?;
    let config = layout.put_blob(crate::image::EMPTY_CONFIG)?;
    let mut ann = std::collections::HashMap::new();
    ann.insert(
        crate::image::ANNOTATION_CREATED.to_owned(),
        rfc3339(created).unwrap_or_default(),
    );
    let mut subject_desc = Descriptor::new(
        subject.media_type().clone(),
        subject.size(),
        subject.digest().clone(),
    );
    if let Some(t) = subject.artifact_type() {
        subject_desc.set_artifact_type(Some(t.clone()));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(IN_TOTO_MEDIA_TYPE))
        .config(Descriptor::new(
            MediaType::EmptyJSON,
            config.size,
            config.digest.to_oci(),
        ))
        .layers(vec![Descriptor::new(
            MediaType::from(encoded.media_type),
            blob.size,
            blob.digest.to_oci(),
        )])
        .subject(subject_desc)
        .annotations(ann)
        .build()
        .map_err(|source| ImageError::Spec {
            what: "provenance manifest",
            source,
        })?;
    let d = crate::image::put_manifest(layout, &manifest)?;
    layout.add_referrer(subject, d.clone())?;
    Ok(d)
}

/// Whether a referrer's descriptor says it holds an in-toto statement.
pub fn is_statement(referrer: &Descriptor) -> bool {
    referrer
        .artifact_type()
        .as_ref()
        .is_some_and(|t| t.to_string() == IN_TOTO_MEDIA_TYPE)
}
