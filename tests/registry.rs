//! Publishing against the real CNCF distribution registry (Debian's docker-registry), with
//! in-test servers only for what a real registry will not do on demand (faults, nonsense).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::net::{FakeServer, FaultProxy, Registry, Reply, Tls, docker_config};
use common::recipe::*;
use common::*;

/// The remote of the test repositories: its canonical form is what provenance records.
const REMOTE: &str = "https://github.com/acme/hello.git";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn uploads_in(log: &str, repo: &str) -> usize {
    log.matches(&format!("\"PUT /v2/{repo}/blobs/uploads/"))
        .count()
        + log
            .matches(&format!("\"PATCH /v2/{repo}/blobs/uploads/"))
            .count()
}

#[test]
fn build_push_pull_run_and_find_the_provenance() {
    require("skopeo");
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    let sha = hello_repo(&repo, "push", HELLO_TOML, Some(REMOTE));
    let prefix = format!("{}/acme", reg.addr);
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(t.path().join("l"))
            .args(["--json", "--push", &prefix, "--tag", "v1"]),
    );
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = res["artifacts"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        res["artifacts"][0]["pushed_to"],
        format!("{}/acme/hello@{digest}", reg.addr).as_str()
    );

    // A real client pulls and runs it, by the commit tag and by the extra tag.
    for tag in [sha.as_str(), "v1"] {
        let image = format!("{}/acme/hello:{tag}", reg.addr);
        run_ok(Command::new("docker").args(["pull", "-q", &image]));
        let run = run_ok(Command::new("docker").args(["run", "--rm", &image]));
        assert!(String::from_utf8_lossy(&run.stdout).contains("hello from kiln"));
        let _ = Command::new("docker")
            .args(["rmi", &image])
            .checked_output();
    }
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{}/acme/hello:{sha}", reg.addr)),
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        sha.as_str()
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        "https://github.com/acme/hello"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.created"],
        "2024-01-02T03:04:05Z"
    );
    assert_eq!(
        kiln::Digest::of(&raw.stdout).to_string(),
        digest,
        "the registry serves the exact bytes"
    );

    // The provenance is reachable through the fallback tag and names this commit.
    let fallback = format!("sha256-{}", &digest[7..]);
    let idx = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{}/acme/hello:{fallback}", reg.addr)),
    );
    let idx: serde_json::Value = serde_json::from_slice(&idx.stdout).unwrap();
    assert_eq!(
        idx["manifests"][0]["artifactType"],
        "application/vnd.in-toto+json"
    );
    let inspect = run_ok(
        kiln()
            .args(["inspect", "--json"])
            .arg(format!("{}/acme/hello:v1", reg.addr)),
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["revision"], sha.as_str());
    assert_eq!(info["source"], "https://github.com/acme/hello");
    assert_eq!(info["created"], "2024-01-02T03:04:05Z");
    assert!(is_digest(info["recipe_digest"].as_str().unwrap()));
    let prov = &info["provenance"];
    assert_eq!(prov["subject_matches"], true);
    assert_eq!(prov["summary"]["revision"], sha.as_str());
    assert_eq!(
        prov["summary"]["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    assert_eq!(prov["summary"]["subject"], digest.as_str());
    let text = run_ok(
        kiln()
            .arg("inspect")
            .arg(format!("{}/acme/hello:v1", reg.addr)),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&sha) && text.contains("subject matches"),
        "{text}"
    );

    // The statement itself, fetched and checked independently of kiln inspect.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statement = rt.block_on(async {
        let client = kiln::registry::RegistryClient::new(&reg.addr, &Default::default()).unwrap();
        let r = kiln::registry::Repository::new(&client, "acme/hello");
        let referrer = prov["digest"].as_str().unwrap();
        let (bytes, _, _) = r.get_manifest(referrer).await.unwrap().unwrap();
        let rm: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(rm["subject"]["digest"], digest.as_str());
        assert_eq!(rm["artifactType"], "application/vnd.in-toto+json");
        let layer: kiln::Digest = rm["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
        serde_json::from_slice::<serde_json::Value>(&r.get_blob(&layer, 1 << 20).await.unwrap())
            .unwrap()
    });
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], &digest[7..]);
    let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert!(
        deps.iter()
            .any(|d| d["digest"]["gitCommit"] == sha.as_str()),
        "{statement}"
    );
    assert!(deps.iter().any(|d| d["name"] == "builder"), "{statement}");
    let ext = &statement["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(ext["source"], "https://github.com/acme/hello");
    assert_eq!(ext["ref"], "refs/heads/main");
    assert_eq!(ext["recipe"], "kiln.toml");
    assert!(
        statement["predicate"]["buildDefinition"]["internalParameters"]["compressor"]
            .as_str()
            .unwrap()
            .contains("zlib-rs")
    );

    // A re-push of the unchanged image uploads no blob.
    let before = uploads_in(&reg.log(), "acme/hello");
    let again = run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:hello", t.path().join("l").display()))
            .arg(format!("{}/acme/hello:v1", reg.addr)),
    );
    assert!(
        stderr_of(&again).contains(" 0 blobs uploaded"),
        "{}",
        stderr_of(&again)
    );
    assert_eq!(
        uploads_in(&reg.log(), "acme/hello"),
        before,
        "no blob upload on re-push"
    );
}

#[test]
fn tls_and_htpasswd_with_docker_config_and_no_secret_in_trace_logs() {
    require("htpasswd");
    let t = tempfile::tempdir().unwrap();
    let tls = Tls::make(t.path());
    let password = REGISTRY_PASSWORD;
    let reg = Registry::start_full(Some(&tls), |dir, _| {
        let out = run_ok(Command::new("htpasswd").args(["-Bbn", "builder", password]));
        fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    });
    let src = t.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("bin/app"), b"#!/bin/sh\necho secure\n").unwrap();
    let layout = t.path().join("l");
    pack(
        &src,
        &layout,
        &["--tag", "app", "--source-date-epoch", "1700000000"],
    );
    let target = format!("{}/secure/app:v1", reg.addr);

    // No credentials: a clear refusal.
    let empty = t.path().join("empty-docker-config");
    fs::create_dir_all(&empty).unwrap();
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(&target)
        .arg("--registry-ca")
        .arg(&tls.ca)
        .env("DOCKER_CONFIG", &empty)
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("401") || err.contains("username and password"),
        "{err}"
    );

    // Without the CA, TLS verification fails.
    let cfg = docker_config(t.path(), &reg.addr, "builder", password);
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(&target)
        .env("DOCKER_CONFIG", &cfg)
        .checked_output()
        .unwrap();
    assert!(!out.status.success(), "pushed without trusting the CA");

    // With credentials from DOCKER_CONFIG and the CA: pushed, with nothing secret in trace logs.
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(&target)
        .arg("--registry-ca")
        .arg(&tls.ca)
        .env("DOCKER_CONFIG", &cfg)
        .env("RUST_LOG", "trace")
        .checked_output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.len() > 1000, "trace logging was on");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("builder:{password}"));
    assert!(
        !all.contains(password),
        "the password leaked into the output"
    );
    assert!(
        !all.contains(&b64),
        "the basic auth header leaked into the output"
    );
    assert!(
        !all.contains(&b64[..20]),
        "part of the basic auth header leaked into the output"
    );

    // The same credentials through a credential helper (`credHelpers`), as Docker runs them:
    // `docker-credential-<name> get` with the server on stdin, JSON on stdout.
    let helpers = t.path().join("helpers");
    fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-kilntest");
    fs::write(
        &helper,
        format!("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"builder\",\"Secret\":\"{password}\"}}' \"$server\"\n"),
    )
    .unwrap();
    fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let helper_cfg = t.path().join("helper-config");
    fs::create_dir_all(&helper_cfg).unwrap();
    fs::write(
        helper_cfg.join("config.json"),
        format!(r#"{{"credHelpers": {{"{}": "kilntest"}}}}"#, reg.addr),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(format!("{}/secure/app:via-helper", reg.addr))
        .arg("--registry-ca")
        .arg(&tls.ca)
        .env("DOCKER_CONFIG", &helper_cfg)
        .env("PATH", path)
        .checked_output()
        .unwrap();
    assert!(
        out.status.success(),
        "push with a credential helper: {}",
        stderr_of(&out)
    );

    // An independent client sees it, with the same credentials.
    let certs = t.path().join("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&tls.ca, certs.join("ca.crt")).unwrap();
    let raw = run_ok(
        Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--creds",
                &format!("builder:{password}"),
            ])
            .arg("--cert-dir")
            .arg(&certs)
            .arg(format!("docker://{target}")),
    );
    assert!(
        String::from_utf8_lossy(&raw.stdout).contains("application/vnd.oci.image.manifest.v1+json")
    );
}

#[test]
fn pushes_survive_503s_429s_and_resets() {
    require("skopeo");
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.addr);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible data: a layer larger than one monolithic upload, so it goes in chunks.
    let big = random_bytes(40 << 20, 0x9e37_79b9_7f4a_7c15);
    fs::write(src.join("random.bin"), &big).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    let layout = t.path().join("l");
    let digest = pack(
        &src,
        &layout,
        &["--tag", "app", "--source-date-epoch", "1700000000"],
    );
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(format!("{}/faulty/app:v1", proxy.addr))
        .checked_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let s = &proxy.stats;
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b, c) = (
        s.unavailable.load(SeqCst),
        s.too_many.load(SeqCst),
        s.resets.load(SeqCst),
    );
    eprintln!(
        "faults injected: {a} x 503, {b} x 429, {c} resets over {} connections",
        s.connections.load(SeqCst)
    );
    assert!(
        a >= 1 && b >= 1 && c >= 1,
        "every kind of fault was injected: {a} {b} {c}"
    );

    // Straight from the registry, an independent client verifies every blob.
    let copy = t.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/faulty/app:v1", reg.addr))
            .arg(format!("oci:{}:v1", copy.display())),
    );
    validate(&copy);
    assert_eq!(layer_files(&copy, "v1")["random.bin"], big);
}

#[test]
fn nonsense_answers_give_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let layout = t.path().join("l");
    pack(&src, &layout, &["--tag", "app"]);

    let check = |server: &FakeServer, cmd: &str, needles: &[&str]| {
        let mut c = kiln();
        c.env_remove("RUST_LOG");
        match cmd {
            "push" => c
                .arg("push")
                .arg(&layout)
                .arg(format!("{}/x/app:v1", server.addr)),
            _ => c.arg("inspect").arg(format!("{}/x/app:v1", server.addr)),
        };
        let out = c.checked_output().unwrap();
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{cmd} succeeded against nonsense");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.len() < 4096,
            "the error is short even for a huge body: {} bytes",
            err.len()
        );
        for n in needles {
            assert!(err.contains(n), "missing {n:?} in {err}");
        }
    };

    // A registry that stores the blob under another digest.
    let wrong = FakeServer::start(|method, path| match (method, path) {
        ("HEAD", _) => Reply::new("404 Not Found"),
        ("POST", _) => Reply::new("202 Accepted").header("Location", "/v2/x/app/blobs/uploads/1"),
        ("PUT", p) if p.contains("/blobs/uploads/") => Reply::new("201 Created").header(
            "Docker-Content-Digest",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        _ => Reply::new("200 OK"),
    });
    check(&wrong, "push", &["reported digest", "sha256:0000"]);

    // A huge error body: read with a cap, summarized.
    let huge = FakeServer::start(|method, _| match method {
        "HEAD" => Reply::new("404 Not Found"),
        _ => Reply::new("400 Bad Request").body(vec![b'A'; 30 * 1024 * 1024]),
    });
    check(&huge, "push", &["HTTP 400"]);

    // Malformed JSON where a manifest should be, and in an error body.
    let malformed = FakeServer::start(|_, path| {
        if path.contains("/manifests/") {
            Reply::new("200 OK")
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .body("{\"schemaVersion\": 2, \"layers\": [")
        } else {
            Reply::new("500 Internal Server Error").body("{\"errors\": [")
        }
    });
    check(&malformed, "inspect", &["malformed manifest"]);
}

#[test]
fn concurrent_provenance_pushes_both_land_in_the_fallback_index() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("hello");
    hello_repo(&repo, "concurrent", HELLO_TOML, Some(REMOTE));
    // Two builds of one commit: the same image, two provenance statements (different times).
    let a = build_json_ok(&repo, &t.path().join("a"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build_json_ok(&repo, &t.path().join("b"));
    assert_eq!(a["artifacts"][0]["digest"], b["artifacts"][0]["digest"]);
    assert_ne!(
        a["artifacts"][0]["provenance"],
        b["artifacts"][0]["provenance"]
    );
    let target = format!("{}/acme/hello:v1", reg.addr);
    let spawn = |l: &str| {
        kiln()
            .arg("push")
            .arg(format!("{}:hello", t.path().join(l).display()))
            .arg(&target)
            .spawn()
            .unwrap()
    };
    let (mut pa, mut pb) = (spawn("a"), spawn("b"));
    assert!(pa.wait().unwrap().success() && pb.wait().unwrap().success());
    let digest = a["artifacts"][0]["digest"].as_str().unwrap();
    let idx = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!(
                "docker://{}/acme/hello:sha256-{}",
                reg.addr,
                &digest[7..]
            )),
    );
    let idx = String::from_utf8_lossy(&idx.stdout);
    for p in [&a, &b] {
        let d = p["artifacts"][0]["provenance"].as_str().unwrap();
        assert!(
            idx.contains(d),
            "{d} missing from the referrers index: {idx}"
        );
    }
}

fn build_json_ok(repo: &Path, layout: &Path) -> serde_json::Value {
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(repo)
            .arg("--output")
            .arg(layout)
            .arg("--json"),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The registry's `auth: token` mode, with an in-test token server that signs JWTs (RS256,
/// x5c) with a test certificate. Tokens say they live a minute but expire after three seconds,
/// so they run out in the middle of a slow push: kiln must notice (401), get a new one, and
/// finish.
#[test]
fn token_auth_with_tokens_expiring_mid_push() {
    use base64::Engine as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    run_ok(Command::new("openssl").current_dir(&dir).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "token.key",
        "-out",
        "token.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kiln-test-token-signer",
    ]));
    let der = run_ok(Command::new("openssl").current_dir(&dir).args([
        "x509",
        "-in",
        "token.crt",
        "-outform",
        "DER",
    ]))
    .stdout;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    let issued = std::sync::Arc::new(AtomicUsize::new(0));
    let (issued2, key) = (issued.clone(), dir.join("token.key"));
    let token_server = FakeServer::start_full(move |req| {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("builder:tok3n-pw")
        );
        if req.header("authorization") != Some(expected.as_str()) {
            return Reply::new("401 Unauthorized").body("{\"details\":\"bad credentials\"}");
        }
        let query = req.path.split_once('?').map_or("", |(_, q)| q);
        let mut access = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            if k == "scope" {
                let v = v
                    .replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",");
                let parts: Vec<&str> = v.splitn(3, ':').collect();
                if parts.len() == 3 {
                    access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let n = issued2.fetch_add(1, Ordering::SeqCst);
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
        let claims = serde_json::json!({
            "iss": "kiln-test-issuer", "sub": "builder", "aud": "kiln-test-registry",
            // The registry allows 60 s of clock skew: this token is good for about 3 s.
            "exp": now - 57, "nbf": now - 70, "iat": now - 70, "jti": format!("t{n}"), "access": access,
        });
        let input = format!(
            "{}.{}",
            b64(claims_bytes(&header).as_slice()),
            b64(claims_bytes(&claims).as_slice())
        );
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(sign.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
        let sig = sign.wait_with_output().unwrap().stdout;
        let token = format!("{input}.{}", b64(&sig));
        // Claim a minute: the client must cope with the registry rejecting it sooner.
        Reply::new("200 OK")
            .header("Content-Type", "application/json")
            .body(serde_json::json!({"token": token, "expires_in": 60}).to_string())
    });
    let realm = format!("http://{}/token", token_server.addr);
    let crt = dir.join("token.crt");
    let reg = Registry::start_with(move |_, _| {
        format!(
            "auth:\n  token:\n    realm: {realm}\n    service: kiln-test-registry\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
            crt.display()
        )
    });
    // Slow the uploads down so the push outlives a token.
    let slow = common::net::SlowProxy::start(&reg.addr, std::time::Duration::from_millis(20));
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("random.bin"), random_bytes(16 << 20, 7)).unwrap();
    let layout = t.path().join("l");
    let digest = pack(
        &src,
        &layout,
        &["--tag", "app", "--source-date-epoch", "1700000000"],
    );
    let cfg = docker_config(t.path(), &slow.addr, "builder", "tok3n-pw");
    let started = std::time::Instant::now();
    let out = kiln()
        .arg("push")
        .arg(&layout)
        .arg(format!("{}/tok/app:v1", slow.addr))
        .env("DOCKER_CONFIG", &cfg)
        .checked_output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let n = issued.load(Ordering::SeqCst);
    eprintln!("push took {took:?} with {n} tokens issued");
    assert!(
        took > std::time::Duration::from_secs(3),
        "the push must outlive a token ({took:?})"
    );
    assert!(
        n >= 2,
        "a new token was fetched when the first expired ({n} issued)"
    );
    // kiln believed the first token good for 54 s: a second one means the registry rejected
    // the first as expired mid-push and kiln fetched a new one.
    let log = reg.log();
    let rejected = log
        .lines()
        .filter(|l| l.contains("invalid token") || l.contains("token not to be used"))
        .count();
    assert!(
        rejected >= 1,
        "the registry never rejected an expired token:\n{log}"
    );
}

fn claims_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A base image from the registry: resolved by tag to a digest, its layer reused as it is
/// (mounted, never re-uploaded or re-compressed), and the result runs.
#[test]
fn builds_on_a_registry_base_image_and_reuses_its_layers() {
    require("skopeo");
    let busybox = builder_image("busybox");
    let reg = Registry::start();
    let base = format!("{}/base/busybox:1", reg.addr);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("docker-daemon:{busybox}"))
            .arg(format!("docker://{base}")),
    );
    let base_raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{base}")),
    )
    .stdout;
    let base_manifest: serde_json::Value = serde_json::from_slice(&base_raw).unwrap();
    let base_layer = base_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("onbase");
    // Two artifacts on one base; the repository is its own origin over file://, so that
    // kiln verify can fetch it back.
    let recipe = format!(
        "[build]\nimage = \"{busybox}\"\nsteps = [\"mkdir -p /out && cp hello.sh /out/hello.sh\"]\n\
         [[artifact]]\nname = \"onbase\"\nbase = \"{base}\"\nentrypoint = [\"/bin/sh\", \"/hello.sh\"]\nenv = {{ GREETING = \"on a base\" }}\n\
         [[artifact]]\nname = \"onbase2\"\nbase = \"{base}\"\n"
    );
    let sha = git_repo(
        &repo,
        &[
            ("kiln.toml", recipe.as_bytes()),
            ("hello.sh", b"echo \"hello $GREETING\"\n"),
        ],
        Some(&format!("file://{}", repo.display())),
    );
    let log_before = reg.log().len();
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(t.path().join("l"))
            .args(["--json", "--push", &format!("{}/acme", reg.addr)]),
    );
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = res["artifacts"][0]["digest"].as_str().unwrap().to_owned();
    validate(&t.path().join("l"));

    let image = format!("{}/acme/onbase:{sha}", reg.addr);
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{image}")),
    )
    .stdout;
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        m["layers"][0]["digest"],
        base_layer.as_str(),
        "the base layer is reused byte for byte"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.name"],
        base.as_str()
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.digest"],
        kiln::Digest::of(&base_raw).to_string().as_str()
    );
    let cfg = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--config", "--tls-verify=false"])
            .arg(format!("docker://{image}")),
    )
    .stdout;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    let env = cfg["config"]["Env"].to_string();
    assert!(
        env.contains("PATH=/bin") && env.contains("GREETING=on a base"),
        "base and artifact env merged: {env}"
    );

    // Mounted from the base repository, never uploaded again.
    let log = reg.log();
    let hex = &base_layer[7..];
    assert!(
        log.contains(&format!("mount=sha256:{hex}"))
            || log.contains(&format!("mount=sha256%3A{hex}")),
        "the base layer was mounted"
    );
    let uploads_of_base = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/acme/onbase/blobs/uploads/") && (l.contains(hex)))
        .count();
    assert_eq!(uploads_of_base, 0, "the base layer was uploaded again");

    run_ok(Command::new("docker").args(["pull", "-q", &image]));
    let run = run_ok(Command::new("docker").args(["run", "--rm", &image]));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello on a base"
    );
    let _ = Command::new("docker")
        .args(["rmi", &image])
        .checked_output();
    let info = run_ok(kiln().args(["inspect", "--json", &image]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["base"]["name"], base.as_str());
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["provenance"]["subject_matches"], true);

    // One base per build: the second artifact did not resolve the base again.
    let base_gets = reg.log()[log_before..]
        .lines()
        .filter(|l| l.contains("\"GET /v2/base/busybox/manifests/1 "))
        .count();
    assert_eq!(
        base_gets, 1,
        "the base was resolved more than once in one build"
    );
    assert_eq!(
        res["artifacts"][1]["name"], "onbase2",
        "both artifacts were built"
    );

    // A base given as a multi-platform index (pushed by kiln itself) resolves to the host's
    // platform manifest.
    let idx_layout = t.path().join("multi");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{base}"))
            .arg(format!("oci:{}:one", idx_layout.display())),
    );
    let l = kiln::store::OciLayout::open(&idx_layout).unwrap();
    let one = kiln::store::ContentStore::resolve(&l, "one")
        .unwrap()
        .unwrap();
    let entry = |arch: &str| serde_json::json!({"mediaType": one.media_type().to_string(), "digest": one.digest().to_string(), "size": one.size(), "platform": {"os": "linux", "architecture": arch}});
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry("s390x"), entry("amd64"), entry("arm64")]});
    let bytes = serde_json::to_vec(&index).unwrap();
    let blob = kiln::store::BlobSink::put_blob(&l, &bytes).unwrap();
    let idx_desc = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::ImageIndex,
        blob.size,
        blob.digest.to_oci(),
    );
    kiln::store::ContentStore::tag(&l, Some("multi"), &idx_desc).unwrap();
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:multi", idx_layout.display()))
            .arg(format!("{}/base/multi:1", reg.addr)),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let resolved = rt
        .block_on(kiln::registry::base::fetch(
            &format!("{}/base/multi:1", reg.addr),
            &kiln::image::Platform::host(),
            &kiln::store::OciLayout::open_or_create(t.path().join("fetch")).unwrap(),
            &Default::default(),
            &Default::default(),
        ))
        .unwrap();
    assert_eq!(
        resolved.digest.to_string(),
        one.digest().to_string(),
        "the index resolved to the host's manifest"
    );
    assert_eq!(resolved.layers[0].digest.to_string(), base_layer);

    // The base's tag moves on; kiln verify still rebuilds on the recorded base digest, and
    // fetches the source back over file://.
    let other = t.path().join("other-base");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("moved"), b"the tag moved").unwrap();
    pack(&other, &t.path().join("other-layout"), &["--tag", "x"]);
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:x", t.path().join("other-layout").display()))
            .arg(&base),
    );
    let out = kiln().args(["verify", &image]).checked_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_self_signed_registry_works_with_its_certificate_and_fails_clearly_without() {
    let t = tempfile::tempdir().unwrap();
    let tls = common::net::Tls::self_signed(t.path());
    let reg = Registry::start_full(Some(&tls), |_, _| String::new());
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"self-signed").unwrap();
    let layout = t.path().join("l");
    let digest = pack(&tree, &layout, &["--tag", "t"]);
    // Without the certificate: the certificate error itself, never a plain-HTTP 400.
    let out = kiln()
        .env_remove("RUST_LOG")
        .arg("push")
        .arg(format!("{}:t", layout.display()))
        .arg(format!("{}/self/signed:t", reg.addr))
        .checked_output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // (A status, not any "400": the registry's random port may hold those digits.)
    assert!(!err.contains("HTTP 400"), "{err}");
    // With it (the same file the server presents): trusted as pinned.
    let out = run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:t", layout.display()))
            .arg(format!("{}/self/signed:t", reg.addr))
            .arg("--registry-ca")
            .arg(&tls.ca),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some(digest.as_str())
    );
    let info = run_ok(
        kiln()
            .args(["inspect", "--json"])
            .arg(format!("{}/self/signed:t", reg.addr))
            .arg("--registry-ca")
            .arg(&tls.ca),
    );
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["digest"], digest.as_str());
}

#[test]
fn credentials_never_go_over_plain_http_to_a_host_that_is_not_loopback() {
    // This machine's own non-loopback address.
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .expect("a non-loopback address");
    assert!(!ip.is_loopback());
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = vec![0u8; 8192];
            let n = c.read(&mut buf).unwrap_or(0);
            s2.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let t = tempfile::tempdir().unwrap();
    let cfg = common::net::docker_config(t.path(), &addr, "alice", "s3cret-password");
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    pack(&tree, &t.path().join("l"), &["--tag", "t"]);
    let out = kiln()
        .arg("push")
        .arg(format!("{}:t", t.path().join("l").display()))
        .arg(format!("{addr}/plain/http:t"))
        .arg("--insecure")
        .env("DOCKER_CONFIG", &cfg)
        .checked_output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("only over HTTPS"), "{err}");
    let requests = seen.lock().unwrap().join("\n---\n");
    assert!(!requests.is_empty(), "kiln never asked");
    assert!(
        !requests.to_ascii_lowercase().contains("authorization"),
        "credentials went over plain HTTP:\n{requests}"
    );
}

#[test]
fn an_unreachable_registry_is_said_and_given_up_quickly() {
    // A closed port: every retry is one line at the default level, and the command gives up
    // after a few seconds instead of two minutes.
    let started = std::time::Instant::now();
    let out = kiln()
        .env_remove("RUST_LOG")
        .args(["inspect", "127.0.0.1:1/nothing/here:t"])
        .checked_output()
        .unwrap();
    let took = started.elapsed();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    let retries = err.lines().filter(|l| l.contains("retrying in")).count();
    assert!(retries >= 2, "{err}");
    assert!(
        err.lines()
            .filter(|l| l.contains("retrying in"))
            .all(|l| l.contains("Connection refused") && l.contains("(attempt ")),
        "{err}"
    );
    assert!(
        err.contains("gave up after") && err.contains("--retry-for"),
        "{err}"
    );
    // It stays HTTPS: a refused connection never leads to a retry over plain HTTP.
    assert!(!err.contains("http://127.0.0.1:1"), "{err}");

    let started = std::time::Instant::now();
    let out = kiln()
        .args(["inspect", "127.0.0.1:1/nothing/here:t", "--retry-for", "8s"])
        .checked_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
}

#[test]
fn a_long_push_shows_progress_on_a_terminal_and_nothing_otherwise() {
    require("script");
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), random_bytes(48 << 20, 3)).unwrap();
    let layout = t.path().join("l");
    pack(&tree, &layout, &["--tag", "t", "--compression", "none"]);
    let reg = Registry::start();
    let slow = common::net::SlowProxy::start(&reg.addr, std::time::Duration::from_millis(2));
    // Under a pseudo-terminal (script): per-blob progress with bytes and a rate.
    let cmd = format!(
        "{} push {}:t {}/progress/tty:t",
        env!("CARGO_BIN_EXE_kiln"),
        layout.display(),
        slow.addr
    );
    let out = run_ok(std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("MiB/s") || tty.contains("KiB/s"), "{tty}");
    // Not a terminal: no progress lines, only the result.
    let out = run_ok(
        kiln()
            .env_remove("RUST_LOG")
            .arg("push")
            .arg(format!("{}:t", layout.display()))
            .arg(format!("{}/progress/pipe:t", reg.addr)),
    );
    let err = stderr_of(&out);
    assert!(!err.contains("/s"), "{err}");
    assert!(err.contains("pushed "), "{err}");
}

/// A registry that loses a blob a concurrent pusher of the same blob just committed answers
/// the manifest with MANIFEST_BLOB_UNKNOWN (the CNCF registry does, seen in CI with two
/// `kiln push` of one image): kiln checks the blobs again, sends what is missing, and puts the
/// manifest again, instead of failing the push.
#[test]
fn a_manifest_refused_for_a_lost_blob_is_put_again_after_the_blobs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let layout = t.path().join("layout");
    pack(&src, &layout, &["--tag", "app", "--source-date-epoch", "1"]);
    let (heads, puts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, p) = (heads.clone(), puts.clone());
    let server = FakeServer::start(move |method, path| match method {
        "HEAD" => {
            h.fetch_add(1, Ordering::SeqCst);
            Reply::new("404 Not Found")
        }
        "POST" => Reply::new("202 Accepted").header("Location", "/v2/x/app/blobs/uploads/1"),
        "PUT" if path.contains("/blobs/uploads/") => {
            let digest = path
                .split("digest=")
                .nth(1)
                .unwrap_or("")
                .replace("%3A", ":");
            Reply::new("201 Created").header("Docker-Content-Digest", &digest)
        }
        "PUT" if path.contains("/manifests/sha256:") => {
            if p.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::new("400 Bad Request").body(
                    r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
                )
            } else {
                let d = path.rsplit('/').next().unwrap().to_owned();
                Reply::new("201 Created").header("Docker-Content-Digest", &d)
            }
        }
        "PUT" => Reply::new("201 Created"),
        _ => Reply::new("404 Not Found"),
    });
    let out = kiln()
        .arg("push")
        .arg(format!("{}:app", layout.display()))
        .arg(format!("{}/x/app:v1", server.addr))
        .checked_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(puts.load(Ordering::SeqCst), 2, "the manifest was put again");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        4,
        "both blobs (config, layer) were checked again"
    );
}
