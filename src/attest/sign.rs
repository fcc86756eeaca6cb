//! Keys and DSSE envelopes: what makes a statement kiln's word rather than anyone's.
//!
//! A key is ECDSA P-256 (cosign's default; signatures in ASN.1 DER) or Ed25519, stored as a
//! PKCS#8 PEM private key beside its SPKI PEM public key. Its id is `sha256:` + the hex SHA-256
//! of the SPKI DER, so anyone holding the public key computes the same id. The cryptography is
//! RustCrypto's (`p256`, `ed25519-dalek`); nothing here signs or verifies by hand.
//!
//! A DSSE v1 envelope signs PAE(payloadType, payload) =
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, lengths in ASCII decimal bytes.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
    spki::der::pem::LineEnding,
};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::digest::Digest;

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The file names `kiln key generate DIR` writes.
pub const PRIVATE_FILE: &str = "kiln.key";
pub const PUBLIC_FILE: &str = "kiln.pub";

/// A key type kiln signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Ed25519,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecdsa-p256" | "p256" | "ecdsa" => Ok(KeyType::EcdsaP256),
            "ed25519" => Ok(KeyType::Ed25519),
            o => Err(format!(
                "{o:?} is not a key type: use ecdsa-p256 or ed25519"
            )),
        }
    }
}

/// Why a key could not be made, read or used. None of these is helped by retrying.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: the private key is readable by {who} (mode {mode:04o}); kiln refuses it: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: already exists; kiln never overwrites a key", path.display())]
    Exists { path: PathBuf },
}

/// The id of a public key: `sha256:` + the hex SHA-256 of its SPKI DER.
fn key_id(spki_der: &[u8]) -> String {
    Digest::of(spki_der).to_string()
}

enum Private {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A private key, loaded once in the kiln process. It never leaves it: no `Debug` of its
/// secret, no serialization; a build container is never given it.
pub struct Signer {
    key: Private,
    public: PublicKey,
    /// Also publish each envelope as a Sigstore bundle (see [`super::sigstore_bundle`]).
    bundle: bool,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signer({} {})",
            self.public.kind().name(),
            self.public.keyid
        )
    }
}

impl Signer {
    /// A new random key.
    pub fn generate(kind: KeyType) -> Signer {
        let key = match kind {
            KeyType::EcdsaP256 => {
                Private::P256(p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
            }
            KeyType::Ed25519 => {
                Private::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
            }
        };
        Signer::from_private(key)
    }

    fn from_private(key: Private) -> Signer {
        let public = match &key {
            Private::P256(k) => Public::P256(*k.verifying_key()),
            Private::Ed25519(k) => Public::Ed25519(k.verifying_key()),
        };
        Signer {
            key,
            public: PublicKey::new(public),
            bundle: false,
        }
    }

    /// Whether each signed statement is also attached as a Sigstore bundle v0.3.
    pub fn with_sigstore_bundle(mut self, on: bool) -> Signer {
        self.bundle = on;
        self
    }

    pub fn sigstore_bundle(&self) -> bool {
        self.bundle
    }

    /// Read a PKCS#8 PEM private key (ECDSA P-256 or Ed25519). A file that its group or
    /// others may read is refused: the key must be the service's alone.
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        // One open, then its metadata: the mode checked is the file read.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::Malformed {
                path: path.to_owned(),
                what: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
                who: if mode & 0o007 != 0 {
                    "others"
                } else {
                    "its group"
                },
            });
        }
        let mut pem = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut file, &mut pem).map_err(io)?;
        Signer::from_pem(&pem).map_err(|what| KeyError::Malformed {
            path: path.to_owned(),
            what,
        })
    }

    fn from_pem(pem: &str) -> Result<Signer, String> {
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Signer::from_private(Private::P256(k)));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Signer::from_private(Private::Ed25519(k)));
        }
        Err(
            "not a PKCS#8 PEM private key (\"BEGIN PRIVATE KEY\") of type ECDSA P-256 or Ed25519"
                .into(),
        )
    }

    /// The private key as PKCS#8 PEM (for `kiln key generate` to write).
    fn to_pem(&self) -> Result<Zeroizing<String>, String> {
        match &self.key {
            Private::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Private::Ed25519(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| e.to_string())
    }

    pub fn keyid(&self) -> &str {
        &self.public.keyid
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// A signature over `msg`: ASN.1 DER for ECDSA P-256 (deterministic, RFC 6979), the 64
    /// bytes of Ed25519.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.key {
            Private::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
            Private::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
        }
    }
}

#[derive(Clone)]
enum Public {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key that verifies signatures, with its id.
#[derive(Clone)]
pub struct PublicKey {
    key: Public,
    keyid: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.kind().name(), self.keyid)
    }
}

impl PublicKey {
    fn new(key: Public) -> PublicKey {
        let der = match &key {
            Public::P256(k) => k.to_public_key_der(),
            Public::Ed25519(k) => k.to_public_key_der(),
        }
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
        PublicKey {
            keyid: key_id(&der),
            key,
        }
    }

    /// An SPKI PEM public key ("BEGIN PUBLIC KEY"), ECDSA P-256 or Ed25519.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::new(Public::P256(k)));
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::new(Public::Ed25519(k)));
        }
        Err(
            "not an SPKI PEM public key (\"BEGIN PUBLIC KEY\") of type ECDSA P-256 or Ed25519"
                .into(),
        )
    }

    /// Read a public key file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        PublicKey::from_pem(&pem).map_err(|what| KeyError::Malformed {
            path: path.to_owned(),
            what,
        })
    }

    pub fn to_pem(&self) -> String {
        match &self.key {
            Public::P256(k) => k.to_public_key_pem(LineEnding::LF),
            Public::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .unwrap_or_default()
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    pub fn kind(&self) -> KeyType {
        match self.key {
            Public::P256(_) => KeyType::EcdsaP256,
            Public::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Whether `sig` is this key's signature over `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            Public::P256(k) => {
                p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            Public::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
        }
    }
}

/// Write a new key pair into `dir` (`kiln.key` mode 0600, `kiln.pub`), never over an
/// existing file. Returns the public key.
pub fn generate(dir: &Path, kind: KeyType) -> Result<PublicKey, KeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path }
            } else {
                KeyError::Io { path, source }
            }
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (private, public) = (dir.join(PRIVATE_FILE), dir.join(PUBLIC_FILE));
    for p in [&private, &public] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let signer = Signer::generate(kind);
    let pem = signer.to_pem().map_err(|what| KeyError::Malformed {
        path: private.clone(),
        what,
    })?;
    let write = |path: &Path, mode: u32, bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io(path))?;
        // The mode given at creation is masked by the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(path))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(path))
    };
    write(&private, 0o600, pem.as_bytes())?;
    write(&public, 0o644, signer.public().to_pem().as_bytes())?;
    Ok(signer.public().clone())
}

/// Base64 as DSSE allows it: standard or URL-safe, padded or not.
fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    B64.decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE v1 envelope.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Base64 (standard, padded) of the payload bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the signature bytes.
    pub sig: String,
}

/// What checking an envelope's signatures against trusted keys found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Signatures verify with these trusted keys (every one that does: the order of an
    /// envelope's signatures is not signed, so none is preferred).
    Trusted { keyids: Vec<String> },
    /// A signature names a trusted key's id but does not verify with it.
    Invalid { keyid: String },
    /// No signature names a trusted key (the key ids the envelope claims).
    Unknown { keyids: Vec<String> },
    /// The envelope carries no signature.
    Unsigned,
}

impl Envelope {
    /// Sign `payload` (an in-toto statement's bytes).
    pub fn sign(payload: &[u8], signer: &Signer) -> Envelope {
        let sig = signer.sign(&pae(PAYLOAD_TYPE, payload));
        Envelope {
            payload: B64.encode(payload),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![EnvelopeSignature {
                keyid: signer.keyid().to_owned(),
                sig: B64.encode(sig),
            }],
        }
    }

    /// The payload's bytes.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        decode_b64(&self.payload).map_err(|e| format!("the payload is not base64: {e}"))
    }

    /// Check the signatures against `keys`: any signature that verifies with any of them
    /// makes the envelope trusted (key ids are hints; the key decides).
    pub fn check(&self, keys: &[PublicKey]) -> Result<Checked, String> {
        if self.signatures.is_empty() {
            return Ok(Checked::Unsigned);
        }
        let payload = self.payload()?;
        let msg = pae(&self.payload_type, &payload);
        let mut invalid = None;
        let mut trusted: Vec<String> = Vec::new();
        for s in &self.signatures {
            let Ok(sig) = decode_b64(&s.sig) else {
                continue;
            };
            for k in keys {
                if k.verifies(&msg, &sig) {
                    if !trusted.contains(&k.keyid) {
                        trusted.push(k.keyid.clone());
                    }
                } else if k.keyid == s.keyid {
                    invalid = Some(s.keyid.clone());
                }
            }
        }
        if !trusted.is_empty() {
            trusted.sort();
            return Ok(Checked::Trusted { keyids: trusted });
        }
        Ok(match invalid {
            Some(keyid) => Checked::Invalid { keyid },
            None => Checked::Unknown {
                keyids: self.signatures.iter().map(|s| s.keyid.clone()).collect(),
            },
        })
    }

    /// The key id the first signature claims (unverified: for display).
    pub fn claimed_keyid(&self) -> Option<&str> {
        self.signatures.first().map(|s| s.keyid.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsse_v1() {
        // The DSSE spec's test vector.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn envelopes_verify_with_their_key_only() {
        for kind in [KeyType::EcdsaP256, KeyType::Ed25519] {
            let a = Signer::generate(kind);
            let b = Signer::generate(kind);
            let env = Envelope::sign(b"{\"x\":1}", &a);
            assert_eq!(env.payload().unwrap(), b"{\"x\":1}");
            assert_eq!(
                env.check(&[b.public().clone(), a.public().clone()]),
                Ok(Checked::Trusted {
                    keyids: vec![a.keyid().to_owned()]
                })
            );
            assert_eq!(
                env.check(&[b.public().clone()]),
                Ok(Checked::Unknown {
                    keyids: vec![a.keyid().to_owned()]
                })
            );
            let mut flipped = env.clone();
            flipped.payload = B64.encode(b"{\"x\":2}");
            assert_eq!(
                flipped.check(&[a.public().clone()]),
                Ok(Checked::Invalid {
                    keyid: a.keyid().to_owned()
                })
            );
            let round = PublicKey::from_pem(&a.public().to_pem()).unwrap();
            assert_eq!(round.keyid(), a.keyid());
            let again = Signer::from_pem(&a.to_pem().unwrap()).unwrap();
            assert_eq!(again.keyid(), a.keyid());
        }
    }

    #[test]
    fn every_trusted_signer_is_found_whatever_the_order() {
        let a = Signer::generate(KeyType::EcdsaP256);
        let b = Signer::generate(KeyType::Ed25519);
        let mut env = Envelope::sign(b"{}", &a);
        env.signatures
            .insert(0, Envelope::sign(b"{}", &b).signatures[0].clone());
        let mut want = vec![a.keyid().to_owned(), b.keyid().to_owned()];
        want.sort();
        assert_eq!(
            env.check(&[a.public().clone(), b.public().clone()]),
            Ok(Checked::Trusted { keyids: want })
        );
        // URL-safe, unpadded base64 is DSSE too.
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        env.payload = URL_SAFE_NO_PAD.encode(b"{}");
        assert_eq!(env.payload().unwrap(), b"{}");
    }

    #[test]
    fn keys_readable_by_others_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let public = generate(t.path(), KeyType::EcdsaP256).unwrap();
        let key = t.path().join(PRIVATE_FILE);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Signer::load(&key).unwrap().keyid(), public.keyid());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Signer::load(&key).unwrap_err().to_string();
        assert!(
            e.contains("0640") && e.contains("group") && e.contains("kiln.key"),
            "{e}"
        );
        assert!(matches!(
            generate(t.path(), KeyType::Ed25519),
            Err(KeyError::Exists { .. })
        ));
    }
}
