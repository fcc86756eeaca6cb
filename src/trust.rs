//! `kiln trust`: whether a deployment may run an artifact, decided offline from its signed
//! attestations alone (no rebuild): a provenance for this exact digest signed by a trusted
//! builder key and, when asked, enough `PASSED` rebuild verdicts signed by independent keys.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::attest::sign::PublicKey;
use crate::attest::{Assessed, Signature, assess};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository, or_cancel};

/// What a deployment requires.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Builder keys: one of them must sign the provenance.
    pub keys: Vec<PublicKey>,
    /// Rebuilder keys; when not empty, `min_rebuilds` PASSED verdicts signed by these keys,
    /// other than the provenance signer's, are required.
    pub rebuilt_by: Vec<PublicKey>,
    pub min_rebuilds: usize,
}

/// Why the policy does not hold: one per reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// `unsigned`, `unknown-key`, `invalid-signature`, `subject-mismatch`,
    /// `no-rebuild-verdict`, `failed-verdict` (and, undecided, `unreadable`).
    pub code: &'static str,
    pub message: String,
}

/// The decision and everything it considered.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub reference: String,
    pub digest: String,
    pub trusted: bool,
    /// Whether no decision could be made (an attestation that could not be read, while the
    /// policy did not hold without it).
    pub undecided: bool,
    pub reasons: Vec<Reason>,
    /// The trusted key that signed the provenance.
    pub provenance_signer: Option<String>,
    /// Independent rebuilders (distinct keys) whose PASSED verdicts counted.
    pub rebuilds: usize,
    pub attestations: Vec<Assessed>,
    /// Referrers that could not be read, and why.
    pub unreadable: Vec<String>,
}

impl Decision {
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.trusted {
            s.push_str(&format!(
                "trusted: {} (provenance signed by {}; {} independent rebuild{})\n",
                self.digest,
                self.provenance_signer.as_deref().unwrap_or("?"),
                self.rebuilds,
                if self.rebuilds == 1 { "" } else { "s" }
            ));
        } else {
            for r in &self.reasons {
                s.push_str(&format!("{}: {}\n", r.code, r.message));
            }
            for u in &self.unreadable {
                s.push_str(&format!("unreadable: {u}\n"));
            }
        }
        s
    }
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading {reference}: {source}")]
    Registry {
        reference: String,
        source: Box<PushError>,
    },
    #[error("cancelled")]
    Cancelled,
}

/// Decide whether `policy` holds for the artifact `reference` names.
pub async fn decide(
    reference: &Reference,
    options: &RegistryOptions,
    policy: &Policy,
    cancel: &CancellationToken,
) -> Result<Decision, TrustError> {
    let shown = reference.to_string();
    let err = |e: PushError| match e {
        PushError::Cancelled => TrustError::Cancelled,
        e => TrustError::Registry {
            reference: shown.clone(),
            source: Box::new(e),
        },
    };
    let client = RegistryClient::for_reference(reference, options)
        .map_err(|e| err(PushError::Registry(e)))?;
    let repo = Repository::new(&client, &reference.repository);
    let digest: Digest = match &reference.digest {
        Some(d) => *d,
        None => {
            let (bytes, _, _) = or_cancel(cancel, repo.get_manifest(&reference.target()))
                .await
                .map_err(&err)?
                .ok_or_else(|| err(PushError::Invalid(format!("{shown} does not exist"))))?;
            Digest::of(&bytes)
        }
    };
    let found = or_cancel(cancel, repo.attestations(&digest))
        .await
        .map_err(&err)?;
    let keys: Vec<PublicKey> = policy
        .keys
        .iter()
        .chain(&policy.rebuilt_by)
        .cloned()
        .collect();
    let mut attestations = Vec::new();
    let mut unreadable = Vec::new();
    for (r, read) in found {
        match read {
            Ok(Some(a)) => attestations.push(assess(&a, &digest, &keys)),
            Ok(None) => {}
            Err(PushError::Cancelled) => return Err(TrustError::Cancelled),
            Err(e) => unreadable.push(format!("{}: {e}", r.digest())),
        }
    }
    Ok(judge(shown, &digest, policy, attestations, unreadable))
}

/// The policy applied to what was found.
pub fn judge(
    reference: String,
    digest: &Digest,
    policy: &Policy,
    attestations: Vec<Assessed>,
    unreadable: Vec<String>,
) -> Decision {
    let is_in = |set: &[PublicKey], id: &str| set.iter().any(|k| k.keyid() == id);
    let mut reasons = Vec::new();
    let mut reason = |code, message: String| reasons.push(Reason { code, message });
    // 1 and 2: a provenance about this digest, signed by a builder key.
    let provenances: Vec<&Assessed> = attestations
        .iter()
        .filter(|a| a.kind == "provenance")
        .collect();
    let signer = provenances.iter().find_map(|a| match &a.signature {
        Signature::Verified { keyids } if a.subject_matches => {
            keyids.iter().find(|k| is_in(&policy.keys, k)).cloned()
        }
        _ => None,
    });
    if signer.is_none() {
        if provenances.is_empty() {
            reason(
                "unsigned",
                format!("{digest} has no provenance attached, signed or not"),
            );
        }
        for a in &provenances {
            let r = &a.referrer;
            match &a.signature {
                Signature::Unsigned => reason(
                    "unsigned",
                    format!("the provenance {r} carries no signature"),
                ),
                Signature::UnknownKey { keyids } => reason(
                    "unknown-key",
                    format!(
                        "the provenance {r} is signed by an unknown key ({})",
                        keyids.join(", ")
                    ),
                ),
                Signature::Invalid { keyid } => reason(
                    "invalid-signature",
                    format!("the provenance {r}'s signature does not verify with key {keyid}"),
                ),
                Signature::Verified { keyids }
                    if !keyids.iter().any(|k| is_in(&policy.keys, k)) =>
                {
                    reason(
                        "unknown-key",
                        format!(
                            "the provenance {r} is signed by {}, not by a --key key",
                            keyids.join(", ")
                        ),
                    )
                }
                Signature::Verified { .. } => reason(
                    "subject-mismatch",
                    format!("the provenance {r} is signed, but its subject is not {digest}"),
                ),
            }
        }
    }
    // 3: independent rebuild verdicts, counted by rebuilder key (one key is one rebuilder,
    // however many verdicts it signed).
    let mut rebuilders = std::collections::BTreeSet::new();
    let mut own = 0;
    if !policy.rebuilt_by.is_empty() {
        for a in attestations.iter().filter(|a| a.kind == "vsa") {
            let Signature::Verified { keyids } = &a.signature else {
                continue;
            };
            let by: Vec<&String> = keyids
                .iter()
                .filter(|k| is_in(&policy.rebuilt_by, k))
                .collect();
            if by.is_empty() || !a.subject_matches {
                continue;
            }
            let Some(v) = &a.verdict else { continue };
            if v.result == "FAILED" {
                reason(
                    "failed-verdict",
                    format!(
                        "{} found the rebuild different at {} ({} paths differ; verdict {})",
                        v.verifier,
                        v.time,
                        v.differing_paths.unwrap_or(0),
                        a.referrer
                    ),
                );
            } else if v.reproduced() {
                let independent: Vec<&String> = by
                    .into_iter()
                    .filter(|k| signer.as_deref() != Some(k.as_str()))
                    .collect();
                if independent.is_empty() {
                    own += 1;
                }
                rebuilders.extend(independent.into_iter().cloned());
            }
        }
        let wanted = policy.min_rebuilds.max(1);
        if rebuilders.len() < wanted {
            let mut m = format!(
                "{wanted} PASSED rebuild verdict{} signed by independent --rebuilt-by keys wanted, {} found",
                if wanted == 1 { "" } else { "s" },
                rebuilders.len()
            );
            if own > 0 {
                m.push_str(&format!(
                    " ({own} signed by the provenance signer's own key, which does not count)"
                ));
            }
            reason("no-rebuild-verdict", m);
        }
    }
    let rebuilds = rebuilders.len();
    // An attestation that could not be read might be a FAILED verdict: with verdicts asked
    // for, that leaves the decision open.
    if reasons.is_empty() && !policy.rebuilt_by.is_empty() && !unreadable.is_empty() {
        reasons.push(Reason {
            code: "unreadable",
            message: format!(
                "{} attestation(s) could not be read, and any could be a FAILED verdict",
                unreadable.len()
            ),
        });
    }
    let trusted = reasons.is_empty();
    Decision {
        reference,
        digest: digest.to_string(),
        trusted,
        undecided: !trusted && !unreadable.is_empty(),
        reasons,
        provenance_signer: signer,
        rebuilds,
        attestations,
        unreadable,
    }
}
