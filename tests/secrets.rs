//! Secrets stay secret: a daemon building from the stand-in GitHub with a token and pushing
//! to a TLS registry with a password, at trace logging. Neither appears in the logs, in any
//! process's argv while the build runs (`/proc/*/cmdline` sampled), in the image's layers,
//! its config, its manifest or its provenance.

mod common;

use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::{Daemon, has};
use common::forge::FakeGitHub;
use common::net::{Registry, Tls, docker_config};
use common::*;

/// Every process's argv, now.
fn argvs() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && let Ok(b) = std::fs::read(e.path().join("cmdline"))
        {
            out.push(String::from_utf8_lossy(&b).replace('\0', " "));
        }
    }
    out
}

#[test]
fn tokens_and_passwords_never_show() {
    require("htpasswd");
    require("skopeo");
    builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let tls = Tls::make(t.path());
    let reg = Registry::start_full(Some(&tls), |dir, _| {
        let out = run_ok(Command::new("htpasswd").args(["-Bbn", "builder", REGISTRY_PASSWORD]));
        std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    });
    let cfg = docker_config(t.path(), &reg.addr, "builder", REGISTRY_PASSWORD);
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    let recipe = b"[build]\nimage = \"kiln-builder/busybox:latest\"\nsteps = [\"mkdir -p /out\", \"env > /out/env\", \"sleep 2\", \"echo done > /out/done\"]\n\n[[artifact]]\nname = \"secret-check\"\n";
    let sha = gh.create("acme/secrets", &[("kiln.toml", recipe)]);
    std::fs::write(t.path().join("token"), GITHUB_TOKEN).unwrap();
    let body = format!(
        "[github]\napi_url = \"{}\"\ntoken_file = \"{}\"\npoll_interval = \"1s\"\n[registry]\nurl = \"{}/acme\"\nca_file = \"{}\"\n[[repo]]\ngithub = \"acme/secrets\"\n",
        gh.api_url,
        t.path().join("token").display(),
        reg.addr,
        tls.ca.display()
    );
    // Sample every process's argv while the daemon works.
    let stop = Arc::new(AtomicBool::new(false));
    let leaks: Arc<Mutex<Vec<String>>> = Arc::default();
    let samples = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (stop, leaks, samples) = (stop.clone(), leaks.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for a in argvs() {
                    if a.contains(GITHUB_TOKEN) || a.contains(REGISTRY_PASSWORD) {
                        leaks.lock().unwrap().push(a);
                    }
                }
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let d = Daemon::start(
        t.path(),
        &body,
        "trace",
        &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
    );
    let builds = d.wait_builds("the build", Duration::from_secs(120), |b| {
        has(b, &sha, "success")
    });
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert!(
        samples.load(Ordering::SeqCst) > 20,
        "argv was sampled during the build"
    );
    assert!(
        leaks.lock().unwrap().is_empty(),
        "in argv: {:?}",
        leaks.lock().unwrap()
    );

    // Logs: the daemon's (trace) and the build's.
    let log = d.log();
    assert!(log.contains("TRACE"), "trace logging was on");
    assert!(
        !log.contains(GITHUB_TOKEN) && !log.contains(REGISTRY_PASSWORD),
        "a secret in the daemon log"
    );
    let id = builds[0]["id"].as_str().unwrap();
    let build_log = common::daemon::get(&format!("{}/builds/{id}/log", d.url)).1;
    assert!(!build_log.contains(GITHUB_TOKEN) && !build_log.contains(REGISTRY_PASSWORD));

    // Everything that was pushed: manifest, config, layers, provenance.
    let copy = t.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-creds"])
            .arg(format!("builder:{REGISTRY_PASSWORD}"))
            .arg("--src-tls-verify=false")
            .arg(format!("docker://{}/acme/secret-check:{sha}", reg.addr))
            .arg(format!("oci:{}:x", copy.display())),
    );
    let mut everything = Vec::new();
    for e in std::fs::read_dir(copy.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let raw = std::fs::read(e.path()).unwrap();
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut plain)
            .is_err()
        {
            plain.clear();
        }
        everything.extend(raw);
        everything.extend(plain);
    }
    let text = String::from_utf8_lossy(&everything);
    assert!(
        text.contains("SOURCE_DATE_EPOCH"),
        "the build's env was captured"
    );
    assert!(
        !text.contains(GITHUB_TOKEN) && !text.contains(REGISTRY_PASSWORD),
        "a secret in the image"
    );
    // The provenance statement itself, read back through the referrers.
    let subject: kiln::Digest = builds[0]["artifacts"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let statements = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let opts = kiln::registry::RegistryOptions {
            ca_file: Some(tls.ca.clone()),
            ..Default::default()
        };
        let client = kiln::registry::RegistryClient::with_credential(
            &reg.addr,
            &opts,
            Some(kiln::registry::Credential::Basic {
                username: "builder".into(),
                password: kiln::secret::Secret::new(REGISTRY_PASSWORD),
            }),
        )
        .unwrap();
        let repo = kiln::registry::Repository::new(&client, "acme/secret-check");
        let mut out = Vec::new();
        for r in repo.referrers(&subject).await.unwrap() {
            let (m, _, _) = repo
                .get_manifest(r.digest().as_ref())
                .await
                .unwrap()
                .unwrap();
            let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
            let layer = m["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
            out.push(repo.get_blob(&layer, 1 << 20).await.unwrap());
        }
        out
    });
    let texts: Vec<String> = statements
        .iter()
        .map(|st| String::from_utf8_lossy(st).into_owned())
        .collect();
    // The provenance and the SBOM, neither holding a secret.
    for predicate in [
        "https://slsa.dev/provenance/v1",
        "https://spdx.dev/Document",
    ] {
        assert_eq!(
            texts
                .iter()
                .filter(|st| st.contains(&format!("\"predicateType\":\"{predicate}\"")))
                .count(),
            1,
            "{predicate} in {texts:?}"
        );
    }
    assert_eq!(texts.len(), 2, "{texts:?}");
    for st in &texts {
        assert!(
            !st.contains(GITHUB_TOKEN) && !st.contains(REGISTRY_PASSWORD),
            "a secret in an attestation"
        );
    }
}
