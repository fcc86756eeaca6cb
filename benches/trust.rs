//! Signing and the deployment gate: `cargo bench --bench trust`.
//!
//! 1. Signing time per artifact: a provenance statement encoded as a signed DSSE envelope
//!    (ECDSA P-256, Ed25519), against the baseline of encoding it unsigned (its canonical
//!    JSON), 1,000 times each. Target: < 5 ms per artifact.
//! 2. `kiln trust` against a local CNCF registry (plain HTTP on loopback), for an artifact
//!    with a signed provenance and 3 signed PASSED verdicts by 3 rebuilders, under the policy
//!    `--key builder --rebuilt-by r1 r2 r3 --min-rebuilds 3`: wall time of the whole command
//!    (process start included), median of 20 after 3 warm-ups, and the registry requests one
//!    run makes, counted in the registry's access log. Targets: < 300 ms, at most 8 requests.
//!    Baseline in the same run: `skopeo inspect --raw` of the same manifest (one GET).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::attest::*;
use common::net::Registry;
use common::*;

const SIGNINGS: usize = 1_000;
const RUNS: usize = 20;

fn per_artifact_ms(f: impl Fn()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let s = Instant::now();
    for _ in 0..SIGNINGS {
        f();
    }
    s.elapsed().as_secs_f64() * 1000.0 / SIGNINGS as f64
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[RUNS / 2]
}

/// Requests in the registry's access log so far.
fn requests(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| ["\"GET /v2/", "\"HEAD /v2/"].iter().any(|m| l.contains(m)))
        .count()
}

fn main() {
    let t = tempfile::tempdir().unwrap();
    let builder = TestKey::generate(&t.path().join("builder"), "ecdsa-p256");
    let ed = TestKey::generate(&t.path().join("ed"), "ed25519");

    // 1. Signing.
    let prov = kiln::attest::provenance::Provenance {
        name: "app".into(),
        digest: kiln::digest::Digest::of(b"manifest"),
        sbom: None,
        source_url: Some("https://github.com/acme/app".into()),
        remote: Some("git@github.com:acme/app.git".into()),
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        git_ref: Some("refs/heads/main".into()),
        recipe_path: "kiln.toml".into(),
        dir: String::new(),
        recipe_digest: kiln::digest::Digest::of(b"recipe"),
        dirty: false,
        epoch: 1_700_000_000,
        compression: "gzip".into(),
        compressor: "zlib-rs level 6".into(),
        level: 6,
        builder_image: "kiln-builder/busybox:latest".into(),
        builder_digest: kiln::digest::Digest::of(b"builder").to_string(),
        base: None,
        builder_id: "https://kiln.example.com/hosts/build-1".into(),
        invocation_id: "01J00000000000000000000000".into(),
        started: 1_700_000_000,
        finished: 1_700_000_060,
        limits: Default::default(),
        log_digest: Some(kiln::digest::Digest::of(b"log")),
        caches: Vec::new(),
        network_steps: Vec::new(),
    }
    .statement();
    let baseline = per_artifact_ms(|| {
        kiln::attest::encode(&prov, None).unwrap();
    });
    println!("signing, per artifact ({SIGNINGS} each):");
    println!("  unsigned canonical JSON (baseline)  {baseline:.3} ms");
    for (name, key) in [("ECDSA P-256", &builder), ("Ed25519", &ed)] {
        let signer = key.signer();
        let ms = per_artifact_ms(|| {
            kiln::attest::encode(&prov, Some(&signer)).unwrap();
        });
        println!(
            "  {name:<12} DSSE envelope             {ms:.3} ms ({:.1}x the baseline; target < 5 ms: {})",
            ms / baseline,
            if ms < 5.0 { "met" } else { "MISSED" }
        );
    }

    // 2. kiln trust against a local registry.
    require("skopeo");
    let reg = Registry::start();
    let dir = t.path().join("out");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/app"), random_bytes(1 << 20, 7)).unwrap();
    let layout = t.path().join("layout");
    pack(
        &dir,
        &layout,
        &["--tag", "app", "--source-date-epoch", "1700000000"],
    );
    let pushed = run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:app", layout.display()))
            .arg(format!("{}/bench/app:1", reg.addr)),
    );
    let digest = String::from_utf8(pushed.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/bench/app@{digest}", reg.addr)),
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let subject = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(m["mediaType"].as_str().unwrap()),
        raw.stdout.len() as u64,
        digest.parse::<oci_spec::image::Digest>().unwrap(),
    );
    let mut st = prov.clone();
    st["subject"][0]["digest"]["sha256"] = digest.trim_start_matches("sha256:").into();
    let signed = kiln::attest::encode(&st, Some(&builder.signer())).unwrap();
    let registry = reg.addr.clone();
    push_attestation(
        &registry,
        "bench/app",
        &subject,
        &signed,
        "https://slsa.dev/provenance/v1",
    );
    let mut rebuilders = Vec::new();
    for i in 1..=3 {
        let k = TestKey::generate(&t.path().join(format!("r{i}")), "ed25519");
        let v = signed_verdict(&digest, true, &format!("kiln://rebuilder-{i}"), &k);
        push_attestation(
            &registry,
            "bench/app",
            &subject,
            &v,
            "https://slsa.dev/verification_summary/v1",
        );
        rebuilders.push(k);
    }
    let reference = format!("{}/bench/app@{digest}", reg.addr);
    let mut trust = kiln();
    trust
        .env("RUST_LOG", "warn")
        .args(["trust", &reference, "--key"])
        .arg(&builder.public)
        .arg("--rebuilt-by");
    for k in &rebuilders {
        trust.arg(&k.public);
    }
    trust.args(["--min-rebuilds", "3"]);
    let before = requests(&reg);
    let out = trust.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let n = requests(&reg) - before;
    let trust_ms = median_ms(|| {
        assert!(trust.output().unwrap().status.success());
    });
    let skopeo_ms = median_ms(|| {
        let o = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(o.status.success());
    });
    println!("kiln trust, a provenance and 3 verdicts, local registry (median of {RUNS}):");
    println!("  skopeo inspect --raw (baseline)     {skopeo_ms:.1} ms");
    println!(
        "  kiln trust                          {trust_ms:.1} ms ({:.2}x the baseline; target < 300 ms: {})",
        trust_ms / skopeo_ms,
        if trust_ms < 300.0 { "met" } else { "MISSED" }
    );
    println!(
        "  registry requests per run           {n} (target <= 8: {})",
        if n <= 8 { "met" } else { "MISSED" }
    );
}
