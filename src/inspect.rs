//! `kiln inspect`: what a pushed artifact records about where it came from.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::digest::Digest;
use crate::image::annotations;
use crate::reference::Reference;
use crate::registry::{PushError, RegistryClient, RegistryOptions, Repository};

/// Everything `kiln inspect` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inspection {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub source: Option<String>,
    pub revision: Option<String>,
    pub created: Option<String>,
    pub base: Option<BaseInfo>,
    pub recipe_digest: Option<String>,
    pub builder_image: Option<String>,
    pub provenance: Option<ProvenanceInfo>,
    /// Every attestation attached: its kind, signer, whether the signature verifies with
    /// the keys given, and for verdicts what they say.
    pub attestations: Vec<crate::attest::Assessed>,
    /// Attestations that could not be read, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BaseInfo {
    pub name: Option<String>,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProvenanceInfo {
    /// The referrer manifest holding the statement.
    pub digest: String,
    pub summary: BTreeMap<String, String>,
    /// Whether the statement's subject is this artifact.
    pub subject_matches: bool,
}

impl Inspection {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let none = "-".to_owned();
        let _ = writeln!(s, "reference:  {}", self.reference);
        let _ = writeln!(s, "digest:     {}", self.digest);
        let _ = writeln!(
            s,
            "media type: {}",
            self.artifact_type.as_ref().unwrap_or(&self.media_type)
        );
        let _ = writeln!(s, "source:     {}", self.source.as_ref().unwrap_or(&none));
        let _ = writeln!(s, "revision:   {}", self.revision.as_ref().unwrap_or(&none));
        let _ = writeln!(s, "created:    {}", self.created.as_ref().unwrap_or(&none));
        match &self.base {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "base:       {} {}",
                    b.name.as_ref().unwrap_or(&none),
                    b.digest.as_ref().unwrap_or(&none)
                );
            }
            None => {
                let _ = writeln!(s, "base:       scratch");
            }
        }
        let _ = writeln!(
            s,
            "recipe:     {}",
            self.recipe_digest.as_ref().unwrap_or(&none)
        );
        let _ = writeln!(
            s,
            "builder:    {}",
            self.builder_image.as_ref().unwrap_or(&none)
        );
        match &self.provenance {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "provenance: {} (subject {})",
                    p.digest,
                    if p.subject_matches {
                        "matches"
                    } else {
                        "DOES NOT MATCH"
                    }
                );
                for (k, v) in &p.summary {
                    let _ = writeln!(s, "  {k}: {v}");
                }
            }
            None => {
                let _ = writeln!(s, "provenance: none found");
            }
        }
        if !self.attestations.is_empty() {
            let _ = writeln!(s, "attestations:");
        }
        for u in &self.unreadable {
            let _ = writeln!(s, "  unreadable: {u}");
        }
        for a in &self.attestations {
            let _ = writeln!(s, "  {} {}", a.kind, a.referrer);
            let _ = writeln!(s, "    signature: {}", signature_text(&a.signature));
            if !a.subject_matches {
                let _ = writeln!(s, "    subject:   DOES NOT MATCH");
            }
            if let Some(v) = &a.verdict {
                let _ = writeln!(
                    s,
                    "    verdict:   {} by {} at {}",
                    v.result, v.verifier, v.time
                );
            }
        }
        s
    }
}

fn signature_text(s: &crate::attest::Signature) -> String {
    use crate::attest::Signature;
    match s {
        Signature::Unsigned => "none (unsigned)".into(),
        Signature::Verified { keyids } => format!("{} (verifies)", keyids.join(", ")),
        Signature::Invalid { keyid } => format!("{keyid} (DOES NOT VERIFY)"),
        Signature::UnknownKey { keyids } => {
            format!("{} (not checked: no such --key)", keyids.join(", "))
        }
    }
}

/// Fetch and summarize what `reference` points at; signatures are checked against `keys`.
pub async fn inspect(
    reference: &Reference,
    options: &RegistryOptions,
    keys: &[crate::attest::sign::PublicKey],
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Inspection, PushError> {
    tokio::select! {
        r = inspect_inner(reference, options, keys) => r,
        _ = cancel.cancelled() => Err(PushError::Cancelled),
    }
}

async fn inspect_inner(
    reference: &Reference,
    options: &RegistryOptions,
    keys: &[crate::attest::sign::PublicKey],
) -> Result<Inspection, PushError> {
    let client = RegistryClient::for_reference(reference, options)?;
    let repo = Repository::new(&client, &reference.repository);
    let target = reference.target();
    let (bytes, media_type, _) = repo
        .get_manifest(&target)
        .await?
        .ok_or_else(|| PushError::Invalid(format!("{reference} does not exist")))?;
    let digest = Digest::of(&bytes);
    let m: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        PushError::Invalid(format!(
            "{reference}: the registry returned a malformed manifest: {e}"
        ))
    })?;
    let ann = |k: &str| m["annotations"][k].as_str().map(str::to_owned);
    let mut out = Inspection {
        reference: reference.to_string(),
        digest: digest.to_string(),
        media_type: if media_type.is_empty() {
            m["mediaType"].as_str().unwrap_or("").to_owned()
        } else {
            media_type
        },
        artifact_type: m["artifactType"].as_str().map(str::to_owned),
        source: ann(annotations::SOURCE),
        revision: ann(annotations::REVISION),
        created: ann(crate::image::ANNOTATION_CREATED),
        base: None,
        recipe_digest: ann(annotations::RECIPE_DIGEST),
        builder_image: ann(annotations::BUILDER_IMAGE),
        provenance: None,
        attestations: Vec::new(),
        unreadable: Vec::new(),
    };
    let (base_name, base_digest) = (
        ann("org.opencontainers.image.base.name"),
        ann("org.opencontainers.image.base.digest"),
    );
    if base_name.is_some() || base_digest.is_some() {
        out.base = Some(BaseInfo {
            name: base_name,
            digest: base_digest,
        });
    }
    if out.created.is_none()
        && m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        && let Some(cd) = m["config"]["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
    {
        let cfg = repo.get_blob(&cd, 4 << 20).await?;
        if let Ok(c) = serde_json::from_slice::<serde_json::Value>(&cfg) {
            out.created = c["created"].as_str().map(str::to_owned);
        }
    }
    for (r, read) in repo.attestations(&digest).await? {
        let a = match read {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(PushError::Cancelled) => return Err(PushError::Cancelled),
            Err(e) => {
                out.unreadable.push(format!("{}: {e}", r.digest()));
                continue;
            }
        };
        let assessed = crate::attest::assess(&a, &digest, keys);
        // The summary is of a provenance whose signature verifies, when there is one.
        let verified = matches!(
            assessed.signature,
            crate::attest::Signature::Verified { .. }
        );
        let replaces = out.provenance.is_none() || verified;
        if assessed.kind == "provenance"
            && replaces
            && let Some(st) = &assessed.statement
        {
            out.provenance = Some(ProvenanceInfo {
                digest: assessed.referrer.clone(),
                summary: crate::attest::provenance::summary(st),
                subject_matches: assessed.subject_matches,
            });
        }
        out.attestations.push(assessed);
    }
    Ok(out)
}
