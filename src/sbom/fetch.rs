//! Reading an artifact's SBOM back: from a registry or a local layout, its signature checked
//! against the keys a reader trusts.

use crate::attest::{Attestation, Body, Signature};
use crate::digest::Digest;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository};
use crate::store::{ContentStore, OciLayout};

use super::{PREDICATE_TYPE, SbomError};

/// An SBOM read back.
#[derive(Debug)]
pub struct Retrieved {
    /// The artifact's manifest digest.
    pub subject: Digest,
    /// The SBOM referrer's manifest digest.
    pub referrer: String,
    pub signature: Signature,
    /// The SPDX document, canonical JSON.
    pub document: Vec<u8>,
}

/// Why an SBOM could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(#[from] PushError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Sbom(#[from] SbomError),
}

impl FetchError {
    /// Whether asking again could help (the registry, or the disk, failed).
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Registry(e) => e.is_retryable(),
            FetchError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Pick the SBOM about `subject` among `found`: a statement naming the subject, signed by
/// one of `keys` when keys are given (else the first, signed or not).
fn pick(
    found: Vec<(String, Attestation)>,
    subject: &Digest,
    keys: &[crate::attest::sign::PublicKey],
    shown: &str,
) -> Result<Retrieved, FetchError> {
    let mut candidates = Vec::new();
    for (_, a) in found {
        let judged = crate::attest::assess(&a, subject, keys);
        if judged.kind != "sbom" || !judged.subject_matches {
            continue;
        }
        let Some(statement) = judged.statement.as_ref() else {
            continue;
        };
        candidates.push((
            judged.signature.clone(),
            judged.referrer.clone(),
            statement.clone(),
        ));
    }
    let verified = |s: &Signature| matches!(s, Signature::Verified { .. });
    // Signed by a trusted key first, then kiln's own (other tools attach SPDX too).
    candidates
        .sort_by_key(|(s, r, st)| (!verified(s), !crate::attest::is_kiln_sbom(st), r.clone()));
    let Some((signature, referrer, statement)) = candidates.into_iter().next() else {
        return Err(FetchError::NotFound(format!(
            "{shown} has no SBOM (no {PREDICATE_TYPE} statement about {subject} among its referrers)"
        )));
    };
    if !keys.is_empty() && !verified(&signature) {
        return Err(FetchError::NotFound(format!(
            "{shown} has no SBOM signed by a --key key (its SBOM {referrer} is {})",
            signature.describe()
        )));
    }
    Ok(Retrieved {
        subject: *subject,
        referrer,
        signature,
        document: super::document_bytes(&statement)?,
    })
}

/// The SBOM of a pushed artifact.
pub async fn from_registry(
    reference: &crate::reference::Reference,
    options: &RegistryOptions,
    keys: &[crate::attest::sign::PublicKey],
) -> Result<Retrieved, FetchError> {
    let shown = reference.to_string();
    let client = RegistryClient::for_reference(reference, options).map_err(PushError::Registry)?;
    let repo = Repository::new(&client, &reference.repository);
    let (bytes, _, _) = repo
        .get_manifest(&reference.target())
        .await?
        .ok_or_else(|| FetchError::NotFound(format!("{shown} does not exist")))?;
    let subject = Digest::of(&bytes);
    let mut found = Vec::new();
    for (r, read) in repo
        .attestations_where(&subject, |p| p.is_none_or(|p| p == PREDICATE_TYPE))
        .await?
    {
        match read {
            Ok(Some(a)) => found.push((r.digest().to_string(), a)),
            Ok(None) => {}
            Err(PushError::Cancelled) => return Err(PushError::Cancelled.into()),
            Err(e) => {
                tracing::warn!(referrer = %r.digest(), error = %e, "skipping an unreadable referrer")
            }
        }
    }
    pick(found, &subject, keys, &shown)
}

/// The SBOM of an artifact in a local layout, by tag or digest.
pub fn from_layout(
    layout: &OciLayout,
    target: &str,
    keys: &[crate::attest::sign::PublicKey],
) -> Result<Retrieved, FetchError> {
    let shown = format!("{}:{target}", layout.root().display());
    let subject = match target.parse::<Digest>() {
        Ok(d) => d,
        Err(_) => {
            let d = layout
                .resolve(target)?
                .ok_or_else(|| FetchError::NotFound(format!("{shown}: no such tag")))?;
            Digest::from_oci(d.digest())
                .map_err(|e| FetchError::NotFound(format!("{shown}: {e}")))?
        }
    };
    let mut found = Vec::new();
    for r in layout.referrers(&subject)? {
        if !crate::attest::is_attestation(&r) {
            continue;
        }
        let Ok(rd) = Digest::from_oci(r.digest()) else {
            continue;
        };
        let Ok(Some(blob)) = crate::attest::blob_in(layout, &rd) else {
            continue;
        };
        let dsse = r
            .artifact_type()
            .as_ref()
            .is_some_and(|t| t.to_string().ends_with("+dsse"));
        let bytes = layout.read_blob(&blob)?;
        let body: Body = match Attestation::decode(dsse, &bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(referrer = %rd, error = %e, "skipping an unreadable referrer");
                continue;
            }
        };
        let predicate_hint = r
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::attest::PREDICATE_ANNOTATION).cloned());
        found.push((
            rd.to_string(),
            Attestation {
                referrer: rd.to_string(),
                blob,
                predicate_hint,
                body,
            },
        ));
    }
    pick(found, &subject, keys, &shown)
}
