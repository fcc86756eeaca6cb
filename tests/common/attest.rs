//! Signing in tests: keys made by `kiln key generate` (their private forms join the secret
//! scan), provenance read from a layout, attestations attached by hand (forged ones too), and
//! the independent DSSE verifier.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{kiln, run_ok};

/// Private key material the tests made: every form must stay out of kiln's output.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SCALARS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The text forms of every private key made so far (PEM lines, the scalar in hex and base64).
pub fn key_secret_forms() -> Vec<String> {
    SECRETS.lock().unwrap().clone()
}

/// The raw private scalars made so far, to look for in binary blobs.
pub fn key_scalars() -> Vec<Vec<u8>> {
    SCALARS.lock().unwrap().clone()
}

/// A key pair made by `kiln key generate`.
pub struct TestKey {
    pub private: PathBuf,
    pub public: PathBuf,
    pub keyid: String,
    /// The private scalar (P-256) or seed (Ed25519).
    pub scalar: Vec<u8>,
}

impl TestKey {
    /// `kiln key generate DIR --type KIND` (`ecdsa-p256` or `ed25519`).
    pub fn generate(dir: &Path, kind: &str) -> TestKey {
        let out = run_ok(
            kiln()
                .args(["key", "generate"])
                .arg(dir)
                .args(["--type", kind]),
        );
        let keyid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(keyid.starts_with("sha256:") && keyid.len() == 71, "{keyid}");
        let private = dir.join("kiln.key");
        let pem = std::fs::read_to_string(&private).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = B64.decode(&body).unwrap();
        // The scalar follows its ASN.1 header: ECPrivateKey's `version 1, OCTET STRING(32)`,
        // or Ed25519's `OCTET STRING(OCTET STRING(32))` (RFC 5915, RFC 8410).
        let header: &[u8] = if kind == "ed25519" {
            &[0x04, 0x22, 0x04, 0x20]
        } else {
            &[0x02, 0x01, 0x01, 0x04, 0x20]
        };
        let at = der
            .windows(header.len())
            .position(|w| w == header)
            .expect("the private scalar in the PKCS#8 DER")
            + header.len();
        let scalar = der[at..at + 32].to_vec();
        let mut secrets = SECRETS.lock().unwrap();
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                .map(str::to_owned),
        );
        secrets.push(hex::encode(&scalar));
        secrets.push(B64.encode(&scalar));
        SCALARS.lock().unwrap().push(scalar.clone());
        TestKey {
            private,
            public: dir.join("kiln.pub"),
            keyid,
            scalar,
        }
    }

    pub fn signer(&self) -> kiln::attest::sign::Signer {
        kiln::attest::sign::Signer::load(&self.private).unwrap()
    }
}

/// The newest statement attached to the manifest tagged `tag` in `layout` (an unsigned
/// statement, or a DSSE envelope's payload), of `predicate` type.
pub fn layout_statement(layout: &Path, tag: &str, predicate: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let subject = entries
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    for d in entries
        .iter()
        .filter(|d| d["annotations"]["dev.kiln.referrer.subject"] == subject.as_str())
    {
        let m: serde_json::Value =
            serde_json::from_slice(&blob(d["digest"].as_str().unwrap())).unwrap();
        let bytes = blob(m["layers"][0]["digest"].as_str().unwrap());
        let st: serde_json::Value = match m["layers"][0]["mediaType"].as_str() {
            Some("application/vnd.dsse.envelope.v1+json") => {
                let e: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                serde_json::from_slice(&B64.decode(e["payload"].as_str().unwrap()).unwrap())
                    .unwrap()
            }
            _ => serde_json::from_slice(&bytes).unwrap(),
        };
        if st["predicateType"] == predicate {
            return st;
        }
    }
    panic!("no {predicate} statement for {tag} in {}", layout.display())
}

/// The SLSA provenance of the manifest tagged `tag` in `layout`.
pub fn provenance_statement(layout: &Path, tag: &str) -> serde_json::Value {
    layout_statement(layout, tag, "https://slsa.dev/provenance/v1")
}

/// The Python the independent DSSE verifier runs on (`.ci/run` makes its venv).
pub fn dsse_python() -> String {
    let p = std::env::var("KILN_DSSE_PYTHON")
        .unwrap_or_else(|_| "/opt/kiln-ci/venv/bin/python".to_owned());
    assert!(
        Path::new(&p).is_file(),
        "{p} is missing: the independent DSSE verifier (securesystemslib) is installed by .ci/run"
    );
    p
}

/// Whether securesystemslib verifies the envelope in `file` with `key`'s public key,
/// presented under `keyid` (the verifier also checks that `key`'s id is the SHA-256 of its
/// SPKI DER, as kiln says).
pub fn independently_verified(file: &Path, key: &TestKey, keyid: &str) -> bool {
    let args: [&std::ffi::OsStr; 4] = [
        file.as_os_str(),
        key.public.as_os_str(),
        keyid.as_ref(),
        key.keyid.as_ref(),
    ];
    independent_check("dsse_verify.py", &args)
}

/// Run an independent checker, `tests/<script>`, on the checkers' Python: whether it said
/// yes (exit 0) or no (exit 1); anything else means the checker itself failed.
pub fn independent_check(script: &str, args: &[&std::ffi::OsStr]) -> bool {
    let out = Command::new(dsse_python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{script} failed to run: {said}"
    );
    eprintln!("{script}: {said}");
    out.status.success()
}

/// Attach `encoded` (a statement or an envelope of `predicate` type) to `subject` in
/// `repo` of the registry at `registry`, as kiln does: through a scratch layout, pushed with
/// kiln's own pusher (the referrers API, or the fallback tag). Forged ones too.
pub fn push_attestation(
    registry: &str,
    repo: &str,
    subject: &oci_spec::image::Descriptor,
    encoded: &kiln::attest::Encoded,
    predicate: &str,
) {
    let t = tempfile::tempdir().unwrap();
    let layout = kiln::store::OciLayout::open_or_create(t.path().join("l")).unwrap();
    kiln::attest::attach_encoded(&layout, subject, encoded, predicate, 1).unwrap();
    let reference: kiln::reference::Reference = format!("{registry}/{repo}:x").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client =
            kiln::registry::RegistryClient::for_reference(&reference, &Default::default()).unwrap();
        let pusher = kiln::registry::Pusher::new(&client, &layout, repo);
        let mut report = kiln::registry::PushReport::default();
        let digest: kiln::digest::Digest = subject.digest().to_string().parse().unwrap();
        pusher.push_referrers(&digest, &mut report).await.unwrap();
    });
}

/// A signed verdict about `subject` (a manifest digest), as a rebuilder would publish it.
pub fn signed_verdict(
    subject: &str,
    passed: bool,
    verifier: &str,
    signer: &TestKey,
) -> kiln::attest::Encoded {
    let digest: kiln::digest::Digest = subject.parse().unwrap();
    let v = kiln::attest::vsa::Verdict {
        name: "hello".into(),
        subject: digest,
        verifier_id: verifier.into(),
        time: 1_800_000_000,
        input: None,
        passed,
        rebuilt: if passed {
            digest
        } else {
            kiln::digest::Digest::of(b"other")
        },
        differing_paths: if passed { 0 } else { 3 },
    };
    kiln::attest::encode(&v.statement(), Some(&signer.signer())).unwrap()
}

/// Whether Sigstore's protobuf-specs models parse the bundle in `file` and write it back the
/// same (`tests/sigstore_bundle_check.py`, in the checkers' venv).
pub fn sigstore_bundle_checked(file: &Path) -> bool {
    independent_check("sigstore_bundle_check.py", &[file.as_os_str()])
}

/// The first attestation of `kind` (`provenance`, `vsa`) that `kiln trust --json` considered.
pub fn attestation_of(decision: &serde_json::Value, kind: &str) -> serde_json::Value {
    decision["attestations"]
        .as_array()
        .expect("kiln trust --json lists attestations")
        .iter()
        .find(|a| a["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} attestation in {decision}"))
        .clone()
}
