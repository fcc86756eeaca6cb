//! Attestations: in-toto statements about an artifact, stored as OCI referrers of it: its
//! SLSA provenance ([`provenance`]) and rebuild verdicts ([`vsa`]), signed as DSSE envelopes
//! when a key is configured ([`sign`]).
//!
//! A statement lives in its own manifest (`subject` = the artifact's manifest), so the
//! artifact's digest never depends on it: the same commit still gives the same image digest,
//! while each build records when and where it ran. [`attach`] writes one:
//!
//! - unsigned: `artifactType` and layer media type `application/vnd.in-toto+json`, the
//!   statement's canonical JSON;
//! - signed: `artifactType` `application/vnd.in-toto.<predicate>+dsse` (`provenance`,
//!   `verification_summary`), one layer `application/vnd.dsse.envelope.v1+json` holding the
//!   DSSE envelope.
//!
//! Either way the manifest's annotations name the predicate type (`in-toto.io/predicate-type`)
//! and the layer's digest (`dev.kiln.attestation.blob`), and the referrers list carries them:
//! a reader picks provenance from a verdict, and fetches only the envelope, in one request.

pub mod provenance;
pub mod sign;
pub mod vsa;

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use serde_json::Value;

use crate::digest::Digest;
use crate::image::{ImageError, rfc3339};
use crate::store::{BlobSink, OciLayout};
use sign::{Envelope, Signer};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The `artifactType` of an unsigned statement's referrer, and the media type of its layer.
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// The media type of a signed statement's layer.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The annotation naming a referrer's predicate type (on its manifest and its layer).
pub const PREDICATE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// The annotation naming the digest of a referrer's one layer (the statement or envelope).
pub const BLOB_ANNOTATION: &str = "dev.kiln.attestation.blob";
/// The in-toto predicate type of an SBOM statement (see [`crate::sbom`]): BuildKit's and
/// cosign's (`--type spdxjson`) choice, which their readers match exactly. The SPDX version
/// is the document's own `spdxVersion` (`SPDX-2.3`).
pub const SPDX_PREDICATE_TYPE: &str = "https://spdx.dev/Document";
/// The media type of an SPDX JSON document.
pub const SPDX_MEDIA_TYPE: &str = "application/spdx+json";
/// The largest attestation layer kiln reads, but an SBOM's.
pub const MAX_STATEMENT: usize = 4 << 20;
/// The largest SBOM layer kiln reads (one listing 10,000 files is a few MiB).
pub const MAX_SBOM: usize = 64 << 20;
/// A Sigstore bundle: the referrer's `artifactType` and its layer's media type.
pub const SIGSTORE_BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The `artifactType` of a signed statement of `predicate_type`:
/// `application/vnd.in-toto.<name>+dsse`, as in-toto names DSSE-wrapped statements in storage.
pub fn signed_artifact_type(predicate_type: &str) -> String {
    let name = match predicate_type {
        provenance::PREDICATE_TYPE => "provenance",
        vsa::PREDICATE_TYPE => "verification_summary",
        SPDX_PREDICATE_TYPE => "spdx",
        _ => "statement",
    };
    format!("application/vnd.in-toto.{name}+dsse")
}

/// A statement as it is stored: its layer's media type, its referrer's `artifactType`, and
/// its bytes.
pub struct Encoded {
    pub media_type: &'static str,
    pub artifact_type: String,
    pub bytes: Vec<u8>,
}

/// A statement's bytes as they are stored: its canonical JSON, or a DSSE envelope over it.
pub fn encode(statement: &Value, signer: Option<&Signer>) -> Result<Encoded, ImageError> {
    let json = |what, r: Result<Vec<u8>, serde_json::Error>| {
        r.map_err(|source| ImageError::Json { what, source })
    };
    let bytes = json("statement", crate::json::to_canonical_vec(statement))?;
    encode_canonical(
        bytes,
        statement["predicateType"].as_str().unwrap_or(""),
        signer,
    )
}

/// [`encode`] for a statement already in canonical JSON (`bytes`), of `predicate_type`.
pub fn encode_canonical(
    bytes: Vec<u8>,
    predicate_type: &str,
    signer: Option<&Signer>,
) -> Result<Encoded, ImageError> {
    let json = |what, r: Result<Vec<u8>, serde_json::Error>| {
        r.map_err(|source| ImageError::Json { what, source })
    };
    Ok(match signer {
        None => Encoded {
            media_type: IN_TOTO_MEDIA_TYPE,
            artifact_type: IN_TOTO_MEDIA_TYPE.to_owned(),
            bytes,
        },
        Some(s) => {
            let envelope = Envelope::sign(&bytes, s);
            Encoded {
                media_type: DSSE_MEDIA_TYPE,
                artifact_type: signed_artifact_type(predicate_type),
                bytes: json("envelope", crate::json::to_canonical_vec(&envelope))?,
            }
        }
    })
}

/// Store `statement` in `layout` as a referrer of `subject`, signed when `signer` is given,
/// replacing an older statement of the same kind for the same subject. Returns the referrer
/// manifest's descriptor (with the manifest's annotations, as a referrers list shows them).
pub fn attach(
    layout: &OciLayout,
    subject: &Descriptor,
    statement: &Value,
    created: u64,
    signer: Option<&Signer>,
) -> Result<Descriptor, ImageError> {
    let encoded = encode(statement, signer)?;
    let predicate = statement["predicateType"].as_str().unwrap_or("");
    attach_signed(layout, subject, encoded, predicate, created, signer)
}

/// [`attach`] for a statement already in canonical JSON (`bytes`), of `predicate` type: a
/// large statement (an SBOM) is never held as a `serde_json::Value`.
pub fn attach_canonical(
    layout: &OciLayout,
    subject: &Descriptor,
    bytes: Vec<u8>,
    predicate: &str,
    created: u64,
    signer: Option<&Signer>,
) -> Result<Descriptor, ImageError> {
    let encoded = encode_canonical(bytes, predicate, signer)?;
    attach_signed(layout, subject, encoded, predicate, created, signer)
}

fn attach_signed(
    layout: &OciLayout,
    subject: &Descriptor,
    encoded: Encoded,
    predicate: &str,
    created: u64,
    signer: Option<&Signer>,
) -> Result<Descriptor, ImageError> {
    let d = attach_encoded(layout, subject, &encoded, predicate, created)?;
    if let Some(s) = signer.filter(|s| s.sigstore_bundle()) {
        let bundle = sigstore_bundle(&encoded.bytes, s)?;
        attach_encoded(layout, subject, &bundle, predicate, created)?;
    }
    Ok(d)
}

/// The same signed envelope as a Sigstore bundle v0.3, the form cosign's newer bundle format
/// stores as a referrer: `verificationMaterial.publicKey.hint` (and the signature's `keyid`)
/// is kiln's key id, with no certificate, transparency-log entry or timestamp.
pub fn sigstore_bundle(envelope: &[u8], signer: &Signer) -> Result<Encoded, ImageError> {
    let json = |source| ImageError::Json {
        what: "Sigstore bundle",
        source,
    };
    let envelope: Envelope = serde_json::from_slice(envelope).map_err(json)?;
    let bundle = serde_json::json!({
        "mediaType": SIGSTORE_BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": signer.keyid()},
            "tlogEntries": [],
        },
        "dsseEnvelope": envelope,
    });
    Ok(Encoded {
        media_type: SIGSTORE_BUNDLE_MEDIA_TYPE,
        artifact_type: SIGSTORE_BUNDLE_MEDIA_TYPE.to_owned(),
        bytes: crate::json::to_canonical_vec(&bundle).map_err(json)?,
    })
}

/// Store an encoded statement of `predicate` type in `layout` as a referrer of `subject`
/// (what [`attach`] does once it has encoded; tests use it to attach forged ones).
pub fn attach_encoded(
    layout: &OciLayout,
    subject: &Descriptor,
    encoded: &Encoded,
    predicate: &str,
    created: u64,
) -> Result<Descriptor, ImageError> {
    let blob = layout.put_blob(&encoded.bytes)?;
    let config = layout.put_blob(crate::image::EMPTY_CONFIG)?;
    let predicate = predicate.to_owned();
    let mut ann = HashMap::new();
    ann.insert(
        crate::image::ANNOTATION_CREATED.to_owned(),
        rfc3339(created).unwrap_or_default(),
    );
    ann.insert(PREDICATE_ANNOTATION.to_owned(), predicate.clone());
    ann.insert(BLOB_ANNOTATION.to_owned(), blob.digest.to_string());
    if encoded.artifact_type == SIGSTORE_BUNDLE_MEDIA_TYPE {
        // As cosign annotates its bundles, so its readers find them.
        ann.insert(
            "dev.sigstore.bundle.content".to_owned(),
            "dsse-envelope".to_owned(),
        );
        ann.insert(
            "dev.sigstore.bundle.predicateType".to_owned(),
            predicate.clone(),
        );
    }
    let mut subject_desc = Descriptor::new(
        subject.media_type().clone(),
        subject.size(),
        subject.digest().clone(),
    );
    if let Some(t) = subject.artifact_type() {
        subject_desc.set_artifact_type(Some(t.clone()));
    }
    let mut layer = Descriptor::new(
        MediaType::from(encoded.media_type),
        blob.size,
        blob.digest.to_oci(),
    );
    layer.set_annotations(Some(HashMap::from([(
        PREDICATE_ANNOTATION.to_owned(),
        predicate,
    )])));
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(encoded.artifact_type.as_str()))
        .config(Descriptor::new(
            MediaType::EmptyJSON,
            config.size,
            config.digest.to_oci(),
        ))
        .layers(vec![layer])
        .subject(subject_desc)
        .annotations(ann.clone())
        .build()
        .map_err(|source| ImageError::Spec {
            what: "attestation manifest",
            source,
        })?;
    let mut d = crate::image::put_manifest(layout, &manifest)?;
    d.set_artifact_type(Some(MediaType::from(encoded.artifact_type.as_str())));
    d.set_annotations(Some(ann));
    layout.add_referrer(subject, d.clone())?;
    Ok(d)
}

/// Whether a referrer's descriptor says it holds an attestation kiln reads: an unsigned
/// in-toto statement or a DSSE envelope over one.
pub fn is_attestation(referrer: &Descriptor) -> bool {
    referrer.artifact_type().as_ref().is_some_and(|t| {
        let t = t.to_string();
        t == IN_TOTO_MEDIA_TYPE
            || (t.starts_with("application/vnd.in-toto.") && t.ends_with("+dsse"))
    })
}

/// What an attestation's layer holds.
#[derive(Clone, Debug)]
pub enum Body {
    /// An unsigned statement.
    Unsigned(Value),
    /// A DSSE envelope (its statement is read once a signature is checked).
    Signed(Envelope),
}

/// An attestation read from a registry or a layout.
#[derive(Clone, Debug)]
pub struct Attestation {
    /// The referrer manifest's digest.
    pub referrer: String,
    /// The digest of its layer (the statement or the envelope).
    pub blob: Digest,
    /// The predicate type its annotations name (a hint until the statement is read).
    pub predicate_hint: Option<String>,
    pub body: Body,
}

impl Attestation {
    /// Read a layer's bytes: a DSSE envelope when `dsse`, else a statement.
    pub fn decode(dsse: bool, bytes: &[u8]) -> Result<Body, String> {
        if dsse {
            let e: Envelope = serde_json::from_slice(bytes)
                .map_err(|e| format!("a malformed DSSE envelope: {e}"))?;
            if e.payload_type != sign::PAYLOAD_TYPE {
                return Err(format!(
                    "a DSSE envelope of payloadType {:?}, not {}",
                    e.payload_type,
                    sign::PAYLOAD_TYPE
                ));
            }
            e.payload()?;
            Ok(Body::Signed(e))
        } else {
            serde_json::from_slice(bytes)
                .map(Body::Unsigned)
                .map_err(|e| format!("a malformed statement: {e}"))
        }
    }

    /// The statement, without checking any signature: for display, and for `kiln verify`
    /// when no key is given.
    pub fn statement_unchecked(&self) -> Result<Value, String> {
        match &self.body {
            Body::Unsigned(v) => Ok(v.clone()),
            Body::Signed(e) => serde_json::from_slice(&e.payload()?)
                .map_err(|e| format!("the envelope's payload is not a statement: {e}")),
        }
    }
}

/// The subject digests (`sha256:<hex>`) a statement names.
pub fn subjects(statement: &Value) -> Vec<String> {
    statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["digest"]["sha256"].as_str())
        .map(|h| format!("sha256:{h}"))
        .collect()
}

/// The digest of the one layer (statement or envelope) of the referrer `referrer` in `layout`.
pub fn blob_in(layout: &OciLayout, referrer: &Digest) -> Result<Option<Digest>, ImageError> {
    let bytes = layout.read_blob(referrer)?;
    let m: Value = serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
        what: "attestation manifest",
        source,
    })?;
    Ok(m["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok()))
}

/// An attestation's signature, as checked against the keys a reader trusts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Signature {
    /// A bare statement.
    Unsigned,
    /// Signed, and signatures verify with these trusted keys.
    Verified { keyids: Vec<String> },
    /// Signed under a trusted key's id, but the signature does not verify.
    Invalid { keyid: String },
    /// Signed by keys the reader does not trust (the ids the envelope claims).
    UnknownKey { keyids: Vec<String> },
}

impl Signature {
    /// What a reader who wanted a trusted signature is told about this one.
    pub fn describe(&self) -> String {
        match self {
            Signature::Unsigned => "unsigned".to_owned(),
            Signature::Invalid { keyid } => {
                format!("signed under {keyid}, but the signature does not verify")
            }
            Signature::UnknownKey { keyids } => {
                format!("signed by an unknown key ({})", keyids.join(", "))
            }
            Signature::Verified { keyids } => format!("signed by {}", keyids.join(", ")),
        }
    }
}

/// One attestation as a reader judged it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Assessed {
    /// The referrer manifest.
    pub referrer: String,
    /// Its layer (the statement or the envelope).
    pub blob: String,
    /// `provenance`, `vsa`, `sbom` or `other`.
    pub kind: &'static str,
    pub predicate_type: Option<String>,
    pub signature: Signature,
    /// Whether the statement names the artifact's digest as its subject.
    pub subject_matches: bool,
    /// For a verdict: what it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<vsa::Summary>,
    /// The statement (read without trusting it when it is not [`Signature::Verified`]).
    #[serde(skip)]
    pub statement: Option<Value>,
}

/// Judge `a`, an attestation found attached to `subject`, against `keys`.
pub fn assess(a: &Attestation, subject: &Digest, keys: &[sign::PublicKey]) -> Assessed {
    let signature = match &a.body {
        Body::Unsigned(_) => Signature::Unsigned,
        Body::Signed(e) => match e.check(keys) {
            Ok(sign::Checked::Trusted { keyids }) => Signature::Verified { keyids },
            Ok(sign::Checked::Invalid { keyid }) => Signature::Invalid { keyid },
            Ok(sign::Checked::Unknown { keyids }) => Signature::UnknownKey { keyids },
            Ok(sign::Checked::Unsigned) | Err(_) => Signature::Unsigned,
        },
    };
    let statement = a.statement_unchecked().ok();
    let predicate_type = statement
        .as_ref()
        .and_then(|s| s["predicateType"].as_str().map(str::to_owned))
        .or_else(|| a.predicate_hint.clone());
    let kind = match predicate_type.as_deref() {
        Some(provenance::PREDICATE_TYPE) => "provenance",
        Some(vsa::PREDICATE_TYPE) => "vsa",
        Some(SPDX_PREDICATE_TYPE) => "sbom",
        _ => "other",
    };
    let subject_matches = statement
        .as_ref()
        .is_some_and(|s| subjects(s).contains(&subject.to_string()));
    let verdict = match (kind, &statement) {
        ("vsa", Some(s)) => Some(vsa::summary(s)),
        _ => None,
    };
    Assessed {
        referrer: a.referrer.clone(),
        blob: a.blob.to_string(),
        kind,
        predicate_type,
        signature,
        subject_matches,
        verdict,
        statement,
    }
}

/// Whether a statement is an SBOM kiln wrote (its document's creator).
pub fn is_kiln_sbom(st: &Value) -> bool {
    st["predicateType"] == SPDX_PREDICATE_TYPE
        && st["predicate"]["creationInfo"]["creators"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("Tool: kiln-"))
}

/// Sign, in `layout`, the unsigned statements attached to `subject` that name it: each is
/// replaced by a DSSE envelope over the same statement (`kiln push --sign-key`). Returns
/// how many were signed.
pub fn sign_in_place(
    layout: &OciLayout,
    subject: &Descriptor,
    signer: &Signer,
) -> Result<usize, ImageError> {
    let digest = Digest::from_oci(subject.digest())?;
    let mut signed = 0;
    for r in layout.referrers(&digest)? {
        if r.artifact_type().as_ref().map(|t| t.to_string()).as_deref() != Some(IN_TOTO_MEDIA_TYPE)
        {
            continue;
        }
        let rd = Digest::from_oci(r.digest())?;
        let Some(blob) = blob_in(layout, &rd)? else {
            continue;
        };
        let statement: Value =
            serde_json::from_slice(&layout.read_blob(&blob)?).map_err(|source| {
                ImageError::Json {
                    what: "statement",
                    source,
                }
            })?;
        // Only what kiln recorded about this very artifact (its provenance, its SBOM) gets
        // this key behind it.
        if !(provenance::is_kiln(&statement) || is_kiln_sbom(&statement))
            || statement["subject"][0]["digest"]["sha256"].as_str() != Some(digest.hex().as_str())
        {
            continue;
        }
        let created = r
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::image::ANNOTATION_CREATED))
            .and_then(|c| {
                time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(0, |t| t.unix_timestamp().max(0) as u64);
        attach(layout, subject, &statement, created, Some(signer))?;
        layout.remove_referrer(&digest, &rd)?;
        signed += 1;
    }
    Ok(signed)
}
