//! Signed provenance, signed rebuild verdicts and `kiln trust`, against the real registry,
//! with keys made by `kiln key generate`. kiln's DSSE envelopes are checked by an independent
//! verifier (Python's securesystemslib), never only by kiln's own code.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use common::attest::*;
use common::daemon::*;
use common::forge::FakeGitHub;
use common::net::Registry;
use common::recipe::*;
use common::*;

const PROVENANCE: &str = "https://slsa.dev/provenance/v1";
const VSA: &str = "https://slsa.dev/verification_summary/v1";
const SPDX: &str = "https://spdx.dev/Document";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The referrers listed are exactly a signed provenance and a signed SBOM.
fn assert_signed_provenance_and_sbom(listed: &[serde_json::Value]) {
    let mut types: Vec<&str> = listed
        .iter()
        .map(|r| r["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.in-toto.provenance+dsse",
            "application/vnd.in-toto.spdx+dsse"
        ],
        "{listed:?}"
    );
}

/// `kiln trust REF ARGS...`.
fn trust(reference: &str, args: &[&str]) -> Output {
    kiln()
        .arg("trust")
        .arg(reference)
        .args(args)
        .checked_output()
        .unwrap()
}

fn key_args<'a>(flag: &'a str, keys: &[&'a TestKey]) -> Vec<&'a str> {
    keys.iter()
        .flat_map(|k| [flag, k.public.to_str().unwrap()])
        .collect()
}

/// A signed build of `repo`, pushed under `prefix`: its JSON.
fn build_push(
    repo: &Path,
    layout: &Path,
    prefix: &str,
    key: Option<&TestKey>,
) -> serde_json::Value {
    let mut c = kiln();
    c.arg("build")
        .arg(repo)
        .arg("--output")
        .arg(layout)
        .args(["--json", "--push", prefix]);
    if let Some(k) = key {
        c.arg("--sign-key").arg(&k.private);
    }
    serde_json::from_slice(&run_ok(&mut c).stdout).unwrap()
}

/// The referrers of `digest` in `repo` as the registry's fallback index lists them.
fn referrers(reg: &Registry, repo: &str, digest: &str) -> Vec<serde_json::Value> {
    let tag = digest.replace(':', "-");
    skopeo_manifest(&format!("docker://{}/{repo}:{tag}", reg.addr))
        .map(|i| i["manifests"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// The one layer of the referrer manifest `digest`, fetched with skopeo: (manifest, bytes).
fn fetch_referrer(reg: &Registry, repo: &str, digest: &str) -> (serde_json::Value, Vec<u8>) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false", "--preserve-digests"])
            .arg(format!("docker://{}/{repo}@{digest}", reg.addr))
            .arg(format!("dir:{}", dir.display())),
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let bytes = std::fs::read(dir.join(layer.trim_start_matches("sha256:"))).unwrap();
    (m, bytes)
}

/// Copy an image, without its referrers, to another repository of the registry.
fn bare_copy(reg: &Registry, from: &str, digest: &str, to: &str) -> String {
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("docker://{}/{from}@{digest}", reg.addr))
            .arg(format!("docker://{}/{to}:copy", reg.addr)),
    );
    format!("{}/{to}@{digest}", reg.addr)
}

/// The subject descriptor of an artifact in a build's JSON.
fn subject(artifact: &serde_json::Value) -> oci_spec::image::Descriptor {
    oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(artifact["media_type"].as_str().unwrap()),
        artifact["size"].as_u64().unwrap(),
        artifact["digest"]
            .as_str()
            .unwrap()
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    )
}

/// Attach `encoded` (of `predicate` type) to `subject` in `repo`, as kiln would.
fn attach(
    reg: &Registry,
    repo: &str,
    subject: &oci_spec::image::Descriptor,
    encoded: &kiln::attest::Encoded,
    predicate: &str,
) {
    push_attestation(&reg.addr, repo, subject, encoded, predicate);
}

fn envelope(bytes: &[u8]) -> kiln::attest::Encoded {
    kiln::attest::Encoded {
        media_type: kiln::attest::DSSE_MEDIA_TYPE,
        artifact_type: "application/vnd.in-toto.provenance+dsse".into(),
        bytes: bytes.to_vec(),
    }
}

fn verdict(subject: &serde_json::Value, passed: bool, signer: &TestKey) -> kiln::attest::Encoded {
    signed_verdict(
        subject["digest"].as_str().unwrap(),
        passed,
        "kiln://rebuilder",
        signer,
    )
}

fn assert_refused(out: &Output, code: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .any(|l| l.starts_with(&format!("{code}: "))),
        "wanted the reason {code}: {}",
        text(out)
    );
}

#[test]
fn signed_provenance_verifies_independently_and_passes_the_gate() {
    require("skopeo");
    let python = dsse_python();
    assert!(!python.is_empty());
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    let sha = hello_repo(
        &repo,
        "signed_provenance_verifies",
        HELLO_TOML,
        Some("git@github.com:acme/hello.git"),
    );
    let ec = TestKey::generate(&t.path().join("ec"), "ecdsa-p256");
    let ed = TestKey::generate(&t.path().join("ed"), "ed25519");
    for (name, key, other) in [("ec", &ec, &ed), ("ed", &ed, &ec)] {
        let prefix = format!("{}/{name}", reg.addr);
        let built = build_push(
            &repo,
            &t.path().join(format!("l-{name}")),
            &prefix,
            Some(key),
        );
        let art = &built["artifacts"][0];
        let digest = art["digest"].as_str().unwrap();
        // Two referrers: the signed provenance and the signed SBOM (no unsigned statement
        // is kept).
        let listed = referrers(&reg, &format!("{name}/hello"), digest);
        assert_signed_provenance_and_sbom(&listed);
        let r = listed
            .iter()
            .find(|r| r["annotations"]["in-toto.io/predicate-type"] == PROVENANCE)
            .unwrap();
        assert_eq!(r["artifactType"], "application/vnd.in-toto.provenance+dsse");
        assert_eq!(r["annotations"]["in-toto.io/predicate-type"], PROVENANCE);
        let (m, bytes) = fetch_referrer(
            &reg,
            &format!("{name}/hello"),
            r["digest"].as_str().unwrap(),
        );
        assert_eq!(
            m["layers"][0]["mediaType"],
            "application/vnd.dsse.envelope.v1+json"
        );
        assert_eq!(m["subject"]["digest"], digest);
        let env: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
        assert_eq!(env["signatures"][0]["keyid"], key.keyid.as_str());
        let st: serde_json::Value =
            serde_json::from_slice(&B64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(
            st["subject"][0]["digest"]["sha256"],
            digest.trim_start_matches("sha256:")
        );
        let def = &st["predicate"]["buildDefinition"];
        assert_eq!(def["externalParameters"]["revision"], sha.as_str());
        assert_eq!(
            def["externalParameters"]["remote"],
            "git@github.com:acme/hello.git"
        );
        let deps = def["resolvedDependencies"].as_array().unwrap();
        for want in ["builder", "recipe"] {
            assert!(deps.iter().any(|d| d["name"] == want), "{want} in {deps:?}");
        }
        assert!(
            deps.iter()
                .any(|d| d["digest"]["gitCommit"] == sha.as_str())
        );
        assert_eq!(def["internalParameters"]["network"], false);
        assert!(
            def["internalParameters"]["limits"]["memory"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(
            st["predicate"]["runDetails"]["byproducts"][0]["name"],
            "build log"
        );
        // The independent verifier: securesystemslib, over the envelope as the registry has it.
        let file = t.path().join(format!("{name}.dsse.json"));
        std::fs::write(&file, &bytes).unwrap();
        assert!(
            independently_verified(&file, key, &key.keyid),
            "{name}: securesystemslib verifies it"
        );
        // Another key, presented under the signer's key id: the signature itself fails.
        assert!(
            !independently_verified(&file, other, &key.keyid),
            "{name}: not with another key"
        );
        let mut flipped: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut p = B64.decode(flipped["payload"].as_str().unwrap()).unwrap();
        p[10] ^= 0x01;
        flipped["payload"] = B64.encode(&p).into();
        let tampered = t.path().join(format!("{name}.tampered.json"));
        std::fs::write(&tampered, serde_json::to_vec(&flipped).unwrap()).unwrap();
        assert!(
            !independently_verified(&tampered, key, &key.keyid),
            "{name}: not a flipped payload"
        );

        let reference = format!("{prefix}/hello:{sha}");
        let ok = trust(&reference, &key_args("--key", &[key]));
        assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
        assert!(String::from_utf8_lossy(&ok.stdout).contains(&key.keyid));
        // Rotation: either of two trusted keys; without the signer's key, refused.
        let both = trust(&reference, &key_args("--key", &[other, key]));
        assert_eq!(both.status.code(), Some(0), "{}", text(&both));
        assert_refused(
            &trust(&reference, &key_args("--key", &[other])),
            "unknown-key",
        );
        // inspect lists it, with its signer and whether it verifies.
        let out = run_ok(
            kiln()
                .args(["inspect", "--json", &reference, "--key"])
                .arg(&key.public),
        );
        let i: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let a = &i["attestations"][0];
        assert_eq!(a["kind"], "provenance");
        assert_eq!(a["signature"]["state"], "verified");
        assert_eq!(a["signature"]["keyids"][0], key.keyid.as_str());
        assert_eq!(i["provenance"]["summary"]["revision"], sha.as_str());
    }
}

#[test]
fn tampered_and_forged_attestations_are_refused_with_their_reason() {
    require("skopeo");
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let builder = TestKey::generate(&t.path().join("builder"), "ecdsa-p256");
    let rebuilder = TestKey::generate(&t.path().join("rebuilder"), "ed25519");
    let stranger = TestKey::generate(&t.path().join("stranger"), "ecdsa-p256");
    let prefix = format!("{}/t", reg.addr);
    let one = t.path().join("one");
    hello_repo(&one, "tampered-one", HELLO_TOML, None);
    let first = build_push(&one, &t.path().join("l1"), &prefix, Some(&builder));
    let a1 = &first["artifacts"][0];
    let d1 = a1["digest"].as_str().unwrap().to_owned();
    let two = t.path().join("two");
    hello_repo(&two, "tampered-two", HELLO_TOML, None);
    let second = build_push(
        &two,
        &t.path().join("l2"),
        &format!("{}/t2", reg.addr),
        Some(&builder),
    );
    let a2 = &second["artifacts"][0];
    let d2 = a2["digest"].as_str().unwrap().to_owned();
    let listed = referrers(&reg, "t/hello", &d1);
    let prov = listed
        .iter()
        .find(|r| r["annotations"]["in-toto.io/predicate-type"] == PROVENANCE)
        .unwrap();
    let (_, legit) = fetch_referrer(&reg, "t/hello", prov["digest"].as_str().unwrap());
    let env: serde_json::Value = serde_json::from_slice(&legit).unwrap();
    let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let keys = key_args("--key", &[&builder]);

    // Unsigned.
    let r = bare_copy(&reg, "t/hello", &d1, "unsigned/hello");
    attach(
        &reg,
        "unsigned/hello",
        &subject(a1),
        &kiln::attest::encode(&statement, None).unwrap(),
        PROVENANCE,
    );
    assert_refused(&trust(&r, &keys), "unsigned");
    // A flipped byte in the payload.
    let mut flipped = payload.clone();
    let at = flipped.windows(7).position(|w| w == b"kiln://").unwrap() + 3;
    flipped[at] ^= 0x01;
    let mut bad = env.clone();
    bad["payload"] = B64.encode(&flipped).into();
    let r = bare_copy(&reg, "t/hello", &d1, "flipped/hello");
    attach(
        &reg,
        "flipped/hello",
        &subject(a1),
        &envelope(&serde_json::to_vec(&bad).unwrap()),
        PROVENANCE,
    );
    assert_refused(&trust(&r, &keys), "invalid-signature");
    // Signed by another key.
    let r = bare_copy(&reg, "t/hello", &d1, "stranger/hello");
    let by_stranger = kiln::attest::encode(&statement, Some(&stranger.signer())).unwrap();
    attach(
        &reg,
        "stranger/hello",
        &subject(a1),
        &by_stranger,
        PROVENANCE,
    );
    assert_refused(&trust(&r, &keys), "unknown-key");
    // The first artifact's envelope moved onto the second's manifest.
    let r = bare_copy(&reg, "t2/hello", &d2, "moved/hello");
    attach(
        &reg,
        "moved/hello",
        &subject(a2),
        &envelope(&legit),
        PROVENANCE,
    );
    assert_refused(&trust(&r, &keys), "subject-mismatch");
    // A malformed envelope, and nothing else: undecided.
    let r = bare_copy(&reg, "t/hello", &d1, "malformed/hello");
    attach(
        &reg,
        "malformed/hello",
        &subject(a1),
        &envelope(b"{\"payload\": 7"),
        PROVENANCE,
    );
    let out = trust(&r, &keys);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Verdicts on the legitimately signed artifact.
    let reference = format!("{prefix}/hello@{d1}");
    fn with<'a>(keys: &[&'a str], k: &'a TestKey) -> Vec<&'a str> {
        [keys.to_vec(), key_args("--rebuilt-by", &[k])].concat()
    }
    let rebuilt_by = |k| with(&keys, k);
    assert_refused(
        &trust(&reference, &rebuilt_by(&rebuilder)),
        "no-rebuild-verdict",
    );
    // Signed by the provenance signer itself: not independent.
    attach(
        &reg,
        "t/hello",
        &subject(a1),
        &verdict(a1, true, &builder),
        VSA,
    );
    let own = trust(&reference, &rebuilt_by(&builder));
    assert_refused(&own, "no-rebuild-verdict");
    assert!(text(&own).contains("own key"), "{}", text(&own));
    // An independent PASSED verdict satisfies the gate; two are wanted with --min-rebuilds 2.
    attach(
        &reg,
        "t/hello",
        &subject(a1),
        &verdict(a1, true, &rebuilder),
        VSA,
    );
    let ok = trust(&reference, &rebuilt_by(&rebuilder));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let two_wanted = [rebuilt_by(&rebuilder), vec!["--min-rebuilds", "2"]].concat();
    assert_refused(&trust(&reference, &two_wanted), "no-rebuild-verdict");
    // --json lists every attestation considered.
    let out = trust(
        &reference,
        &[rebuilt_by(&rebuilder), vec!["--json"]].concat(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trusted"], true);
    assert_eq!(v["attestations"].as_array().unwrap().len(), 3);
    // The same rebuilder twice is still one rebuilder.
    let again = signed_verdict(&d1, true, "kiln://rebuilder-again", &rebuilder);
    attach(&reg, "t/hello", &subject(a1), &again, VSA);
    assert_refused(&trust(&reference, &two_wanted), "no-rebuild-verdict");
    // A FAILED verdict from a trusted rebuilder vetoes.
    attach(
        &reg,
        "t/hello",
        &subject(a1),
        &verdict(a1, false, &rebuilder),
        VSA,
    );
    assert_refused(
        &trust(&reference, &rebuilt_by(&rebuilder)),
        "failed-verdict",
    );

    // A forged provenance pointing at another commit must not steer a rebuild.
    let mut forged = statement.clone();
    forged["predicate"]["buildDefinition"]["externalParameters"]["revision"] =
        "0123456789abcdef0123456789abcdef01234567".into();
    for (repo, signer, why) in [
        ("forged-unsigned/hello", None, "unsigned"),
        ("forged-stranger/hello", Some(&stranger), "unknown key"),
    ] {
        let r = bare_copy(&reg, "t/hello", &d1, repo);
        let enc = kiln::attest::encode(&forged, signer.map(|k| k.signer()).as_ref()).unwrap();
        attach(&reg, repo, &subject(a1), &enc, PROVENANCE);
        let out = kiln()
            .args(["verify", &r, "--key"])
            .arg(&builder.public)
            .checked_output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("must not steer a rebuild") && said.contains(why),
            "{said}"
        );
        assert!(!said.contains("rebuilding:"), "nothing was rebuilt: {said}");
    }
}

#[test]
fn a_private_key_others_can_read_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let key = TestKey::generate(&t.path().join("k"), "ed25519");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key.private, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = kiln()
        .args(["build", ".", "--output"])
        .arg(t.path().join("l"))
        .arg("--sign-key")
        .arg(&key.private)
        .checked_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&key.private.display().to_string()) && said.contains("0640"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
    // `kiln key generate` never overwrites.
    let before = std::fs::read(&key.private).unwrap();
    let again = kiln()
        .args(["key", "generate"])
        .arg(t.path().join("k"))
        .checked_output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read(&key.private).unwrap(), before);
}

/// Everything a step can see of its container: environment, mounts, every process's
/// command line and environment, and the whole filesystem.
const INSPECT_STEPS: &[&str] = &[
    "mkdir -p /out/seen",
    "env > /out/seen/env",
    "cat /proc/self/mountinfo > /out/seen/mountinfo",
    "for p in /proc/[0-9]*; do cat $p/cmdline $p/environ; echo; done > /out/seen/procs 2>/dev/null || true",
    "cd / && tar -cf /out/seen/rootfs.tar $(ls -d /* | grep -v -e ^/proc -e ^/sys -e ^/out -e ^/dev) 2>/dev/null || true",
];

#[test]
fn the_signing_key_never_reaches_the_build() {
    let t = tempfile::tempdir().unwrap();
    let key = TestKey::generate(&t.path().join("k"), "ecdsa-p256");
    let repo = t.path().join("r");
    let recipe = Recipe::steps(INSPECT_STEPS).files("seen").bytes();
    builder_image("busybox");
    git_repo(&repo, &[("kiln.toml", &recipe)], None);
    let layout = t.path().join("l");
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(&layout)
            .arg("--sign-key")
            .arg(&key.private)
            .arg("--json"),
    );
    let _: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = layer_files(&layout, "seen");
    for f in [
        "seen/env",
        "seen/mountinfo",
        "seen/procs",
        "seen/rootfs.tar",
    ] {
        assert!(
            files.contains_key(f),
            "{f} was collected: {:?}",
            files.keys()
        );
    }
    assert!(
        files["seen/rootfs.tar"].len() > 100_000,
        "the filesystem was archived"
    );
    // Nothing of the key anywhere: the collected views, every blob (layers unpacked), the log.
    let forms = key_secret_forms();
    let scan = |what: &str, bytes: &[u8]| {
        assert_no_secret(what, bytes);
        for s in key_scalars() {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s),
                "the raw key scalar in {what}"
            );
        }
        let pem = std::fs::read_to_string(&key.private).unwrap();
        assert!(
            !String::from_utf8_lossy(bytes).contains(pem.trim()),
            "the PEM in {what}"
        );
        assert!(!forms.is_empty());
    };
    for (name, bytes) in &files {
        scan(name, bytes);
    }
    for b in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = b.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        scan(&p.display().to_string(), &bytes);
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            use std::io::Read;
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .unwrap();
            scan(&format!("{} (unpacked)", p.display()), &plain);
        }
    }
    for l in std::fs::read_dir(layout.join(".kiln/logs")).unwrap() {
        let p = l.unwrap().path();
        scan(&p.display().to_string(), &std::fs::read(&p).unwrap());
    }
    // The provenance was signed all the same.
    let st = provenance_statement(&layout, "seen");
    assert_eq!(st["predicateType"], PROVENANCE);
}

/// The daemon signs with its host key; its sampled verify publishes a signed PASSED verdict,
/// which does not count as independent. Another host's `kiln verify --attest` does.
#[test]
fn a_daemon_signs_and_an_independent_rebuilder_completes_the_gate() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let files = hello("trust-e2e", "");
    let sha = gh.create("acme/hello", &refs(&files));
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let host = TestKey::generate(&t.path().join("host"), "ecdsa-p256");
    let rebuilder = TestKey::generate(&t.path().join("rebuilder"), "ed25519");
    let body = format!(
        "{}\n[signing]\nkey_file = \"{}\"\n\n[registry]\nurl = \"{}/acme\"\n\n[[repo]]\ngithub = \"acme/hello\"\nbranches = [\"main\"]\n",
        github_config(&gh, t.path(), "1s", "verify = \"always\""),
        host.private.display(),
        reg.addr
    );
    let d = Daemon::start(t.path(), &body, "debug", &[]);
    d.wait_builds("the signed build", Duration::from_secs(180), |b| {
        has(b, &sha, "success")
    });
    let reference = format!("{}/acme/hello:{sha}", reg.addr);
    let host_keys = [
        key_args("--key", &[&host]),
        key_args("--rebuilt-by", &[&host]),
    ]
    .concat();
    let own = trust(&reference, &host_keys);
    assert_refused(&own, "no-rebuild-verdict");
    assert!(text(&own).contains("own key"), "{}", text(&own));
    let out = trust(&reference, &[host_keys.clone(), vec!["--json"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vsa = common::attest::attestation_of(&v, "vsa");
    assert_eq!(vsa["verdict"]["result"], "PASSED");
    assert_eq!(vsa["signature"]["keyids"][0], host.keyid.as_str());

    // Another host rebuilds from the signed provenance and attests with its own key.
    let out = kiln()
        .args([
            "verify",
            &reference,
            "--attest",
            "--verifier-id",
            "kiln://rebuilder",
            "--key",
        ])
        .arg(&host.public)
        .arg("--sign-key")
        .arg(&rebuilder.private)
        .checked_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let both = [
        key_args("--key", &[&host]),
        key_args("--rebuilt-by", &[&host, &rebuilder]),
    ]
    .concat();
    let ok = trust(&reference, &both);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    // The host's key never showed in its log (the secret scan covers the key's forms).
    assert_no_secret("the daemon's log", d.log().as_bytes());
}

/// The one-shot paths: `kiln build --verify --push --sign-key` publishes a signed verdict
/// beside the signed provenance; `kiln push --sign-key` signs a layout built without a key.
#[test]
fn one_shot_commands_sign_what_they_publish() {
    require("skopeo");
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let key = TestKey::generate(&t.path().join("k"), "ecdsa-p256");
    let repo = t.path().join("hello");
    let sha = hello_repo(&repo, "one_shot_commands_sign", HELLO_TOML, None);
    let prefix = format!("{}/verified", reg.addr);
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(t.path().join("l1"))
            .args(["--json", "--verify", "--push", &prefix, "--sign-key"])
            .arg(&key.private)
            .arg("--sigstore-bundle"),
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = built["artifacts"][0]["digest"].as_str().unwrap();
    let listed = referrers(&reg, "verified/hello", digest);
    let mut types: Vec<(String, String)> = listed
        .iter()
        .map(|r| {
            (
                r["artifactType"].as_str().unwrap().to_owned(),
                r["annotations"]["in-toto.io/predicate-type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    types.sort();
    let bundle = "application/vnd.dev.sigstore.bundle.v0.3+json";
    assert_eq!(
        types,
        [
            (bundle.to_owned(), PROVENANCE.to_owned()),
            (bundle.to_owned(), VSA.to_owned()),
            (bundle.to_owned(), SPDX.to_owned()),
            (
                "application/vnd.in-toto.provenance+dsse".to_owned(),
                PROVENANCE.to_owned()
            ),
            (
                "application/vnd.in-toto.spdx+dsse".to_owned(),
                SPDX.to_owned()
            ),
            (
                "application/vnd.in-toto.verification_summary+dsse".to_owned(),
                VSA.to_owned()
            ),
        ]
    );
    // The Sigstore bundle holds the very envelope, under the key id as its hint, annotated as
    // cosign annotates its own; the envelope inside verifies independently.
    let find = |t: &str| {
        listed
            .iter()
            .find(|r| {
                r["artifactType"] == t
                    && r["annotations"]["in-toto.io/predicate-type"] == PROVENANCE
            })
            .unwrap()
    };
    let b = find(bundle);
    assert_eq!(
        b["annotations"]["dev.sigstore.bundle.content"],
        "dsse-envelope"
    );
    assert_eq!(
        b["annotations"]["dev.sigstore.bundle.predicateType"],
        PROVENANCE
    );
    let (m, bytes) = fetch_referrer(&reg, "verified/hello", b["digest"].as_str().unwrap());
    assert_eq!(m["artifactType"], bundle);
    assert_eq!(m["layers"][0]["mediaType"], bundle);
    let bundle_file = t.path().join("bundle.json");
    std::fs::write(&bundle_file, &bytes).unwrap();
    assert!(
        sigstore_bundle_checked(&bundle_file),
        "Sigstore's own models read the bundle back unchanged"
    );
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["mediaType"], bundle);
    assert_eq!(
        doc["verificationMaterial"]["publicKey"]["hint"],
        key.keyid.as_str()
    );
    assert_eq!(
        doc["verificationMaterial"]["tlogEntries"],
        serde_json::json!([])
    );
    let e = find("application/vnd.in-toto.provenance+dsse");
    let (_, env) = fetch_referrer(&reg, "verified/hello", e["digest"].as_str().unwrap());
    let env: serde_json::Value = serde_json::from_slice(&env).unwrap();
    assert_eq!(doc["dsseEnvelope"], env);
    let inner = t.path().join("bundle-envelope.json");
    std::fs::write(&inner, serde_json::to_vec(&doc["dsseEnvelope"]).unwrap()).unwrap();
    assert!(independently_verified(&inner, &key, &key.keyid));
    let reference = format!("{prefix}/hello:{sha}");
    let v: serde_json::Value = serde_json::from_slice(
        &trust(
            &reference,
            &[key_args("--key", &[&key]), vec!["--json"]].concat(),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(v["trusted"], true);
    let vsa = common::attest::attestation_of(&v, "vsa");
    assert_eq!(vsa["verdict"]["result"], "PASSED");
    assert_eq!(vsa["signature"]["state"], "verified");
    assert_eq!(vsa["subject_matches"], true);

    // Built without a key, signed at push.
    let layout = t.path().join("l2");
    run_ok(kiln().arg("build").arg(&repo).arg("--output").arg(&layout));
    let target = format!("{}/pushed/hello:1", reg.addr);
    let out = run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:hello", layout.display()))
            .arg(&target)
            .arg("--sign-key")
            .arg(&key.private),
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // The provenance and the SBOM, both signed in the layout before the push.
    let listed = referrers(&reg, "pushed/hello", &digest);
    assert_signed_provenance_and_sbom(&listed);
    let ok = trust(&target, &key_args("--key", &[&key]));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));

    // Asked to sign, with nothing of kiln's to sign (a packed directory): refused, not pushed.
    let plain = t.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("f"), "x").unwrap();
    let packed = t.path().join("packed");
    // Its SBOM is kiln's, but says nothing of how it was built: still refused.
    pack(
        &plain,
        &packed,
        &["--tag", "p", "--source-date-epoch", "1", "--sbom"],
    );
    let out = kiln()
        .arg("push")
        .arg(format!("{}:p", packed.display()))
        .arg(format!("{}/unsigned/p:1", reg.addr))
        .arg("--sign-key")
        .arg(&key.private)
        .checked_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no kiln provenance"), "{}", text(&out));
    assert!(skopeo_manifest(&format!("docker://{}/unsigned/p:1", reg.addr)).is_none());
    let index = std::fs::read_to_string(packed.join("index.json")).unwrap();
    assert!(
        index.contains("https://spdx.dev/Document") && !index.contains("+dsse"),
        "its SBOM is there, and was not signed: {index}"
    );
    // A verdict key without --attest is a mistake, said at once.
    let out = kiln()
        .args(["verify", &target, "--sign-key"])
        .arg(&key.private)
        .checked_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--attest"), "{}", text(&out));
}
