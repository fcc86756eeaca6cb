//! Referrers in a local layout: manifests whose `subject` is another manifest (a provenance
//! statement today; signatures and SBOMs next). The image layout has no referrers API, so
//! each referrer is an entry of `index.json` annotated with the digest of its subject.

use oci_spec::image::Descriptor;

use super::{OciLayout, StoreError};
use crate::digest::Digest;

/// Index annotation naming the subject of a referrer stored in a layout.
pub const REFERRER_SUBJECT: &str = "dev.kiln.referrer.subject";

/// The predicate type an attestation's descriptor names (`in-toto.io/predicate-type`).
fn predicate_of(d: &Descriptor) -> Option<&String> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get("in-toto.io/predicate-type"))
}

fn subject_of(d: &Descriptor) -> Option<&String> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REFERRER_SUBJECT))
}

impl OciLayout {
    /// The referrers of `subject` recorded in this layout, with their manifests' annotations.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, StoreError> {
        let want = subject.to_string();
        Ok(self
            .index()?
            .manifests()
            .iter()
            .filter(|d| subject_of(d) == Some(&want))
            .map(|d| {
                // The layout's own bookkeeping stays here; the manifest's annotations go on.
                let mut d = d.clone();
                let mut ann = d.annotations().clone().unwrap_or_default();
                ann.remove(REFERRER_SUBJECT);
                d.set_annotations((!ann.is_empty()).then_some(ann));
                d
            })
            .collect())
    }

    /// Record `referrer` as a referrer of `subject`, replacing earlier referrers of the same
    /// subject with the same `artifactType` and predicate type (a new build's statement
    /// replaces the old one; a verdict does not replace a provenance).
    pub fn add_referrer(
        &self,
        subject: &Descriptor,
        mut referrer: Descriptor,
    ) -> Result<(), StoreError> {
        let subject = subject.digest().to_string();
        let mut ann = referrer.annotations().clone().unwrap_or_default();
        ann.insert(REFERRER_SUBJECT.to_owned(), subject.clone());
        referrer.set_annotations(Some(ann));
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let mut entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                !(subject_of(d) == Some(&subject)
                    && d.artifact_type() == referrer.artifact_type()
                    && predicate_of(d) == predicate_of(&referrer))
            })
            .cloned()
            .collect();
        entries.push(referrer);
        index.set_manifests(entries);
        self.write_index(&index)
    }
}

impl OciLayout {
    /// Forget `referrer` as a referrer of `subject` (its blobs stay until a collection).
    pub fn remove_referrer(&self, subject: &Digest, referrer: &Digest) -> Result<(), StoreError> {
        let (subject, referrer) = (subject.to_string(), referrer.to_string());
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| !(subject_of(d) == Some(&subject) && d.digest().to_string() == referrer))
            .cloned()
            .collect();
        index.set_manifests(entries);
        self.write_index(&index)
    }
}
