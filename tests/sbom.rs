//! What is inside: the SBOM of every artifact, built from real inputs (Debian's packages, a
//! Go binary built here with Debian's Go, a Python dist-info and node packages from Debian,
//! a real ELF carrying a `cargo auditable` section), and checked by the formats' own
//! validators (SPDX's spdx-tools, CycloneDX's Python library), never only by kiln.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use common::attest::*;
use common::net::Registry;
use common::*;

const SPDX: &str = "https://spdx.dev/Document";

/// Whether the formats' own validator accepts `file` (`spdx` or `cyclonedx`).
fn valid(kind: &str, file: &Path) -> bool {
    independent_check("sbom_check.py", &[kind.as_ref(), file.as_os_str()])
}

/// `kiln sbom --layout LAYOUT TARGET --format FORMAT --output FILE`: the file's bytes.
fn sbom_in_layout(layout: &Path, target: &str, format: &str, file: &Path) -> Vec<u8> {
    run_ok(
        kiln()
            .arg("sbom")
            .arg(target)
            .arg("--layout")
            .arg(layout)
            .args(["--format", format, "--output"])
            .arg(file),
    );
    std::fs::read(file).unwrap()
}

/// The SBOM of `tag` in `layout`, checked by both validators (SPDX, and its CycloneDX form).
fn checked_sbom(layout: &Path, tag: &str, dir: &Path) -> (Vec<u8>, serde_json::Value) {
    let spdx = dir.join(format!("{tag}.spdx.json"));
    let bytes = sbom_in_layout(layout, tag, "spdx-json", &spdx);
    assert!(valid("spdx", &spdx), "spdx-tools rejects the SBOM of {tag}");
    let cdx = dir.join(format!("{tag}.cdx.json"));
    sbom_in_layout(layout, tag, "cyclonedx-json", &cdx);
    assert!(
        valid("cyclonedx", &cdx),
        "CycloneDX's validator rejects the converted SBOM of {tag}"
    );
    let doc = serde_json::from_slice(&bytes).unwrap();
    (bytes, doc)
}

/// A detected package as the SBOM lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pkg {
    name: String,
    version: String,
    purl: String,
    found: String,
}

fn packages(doc: &serde_json::Value) -> Vec<Pkg> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["SPDXID"]
                .as_str()
                .unwrap()
                .starts_with("SPDXRef-Package-")
        })
        .map(|p| Pkg {
            name: p["name"].as_str().unwrap().to_owned(),
            version: p["versionInfo"].as_str().unwrap().to_owned(),
            purl: p["externalRefs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["referenceType"] == "purl")
                .unwrap()["referenceLocator"]
                .as_str()
                .unwrap()
                .to_owned(),
            found: p["sourceInfo"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// A purl component, percent-decoded.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// The manifest digest tagged `tag` in `layout`.
fn tagged(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A Go program with two vendored dependencies, built here with Debian's Go (offline).
fn go_binary(dir: &Path) -> PathBuf {
    require("go");
    let w = |p: &str, s: &str| {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    };
    w(
        "go.mod",
        "module example.com/hello\n\ngo 1.19\n\nrequire (\n\texample.com/greet v1.2.0\n\tgolang.org/x/shout v0.3.1\n)\n",
    );
    w(
        "main.go",
        "package main\n\nimport (\n\t\"example.com/greet\"\n\t\"golang.org/x/shout\"\n)\n\nfunc main() { println(shout.Up(greet.Hello())) }\n",
    );
    w(
        "vendor/modules.txt",
        "# example.com/greet v1.2.0\n## explicit\nexample.com/greet\n# golang.org/x/shout v0.3.1\n## explicit\ngolang.org/x/shout\n",
    );
    w(
        "vendor/example.com/greet/greet.go",
        "package greet\n\nfunc Hello() string { return \"hello\" }\n",
    );
    w(
        "vendor/golang.org/x/shout/shout.go",
        "package shout\n\nimport \"strings\"\n\nfunc Up(s string) string { return strings.ToUpper(s) }\n",
    );
    run_ok(
        Command::new("go")
            .args(["build", "-trimpath", "-o", "hello", "."])
            .current_dir(dir)
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=vendor")
            .env("GOPROXY", "off")
            .env("GOCACHE", dir.join(".cache"))
            .env("HOME", dir),
    );
    dir.join("hello")
}

/// `go version -m`: the Go version, and each `mod`/`dep` line's path and version.
fn go_version_m(binary: &Path) -> (String, Vec<(String, String, String)>) {
    let out =
        String::from_utf8(run_ok(Command::new("go").arg("version").arg("-m").arg(binary)).stdout)
            .unwrap();
    let go = out
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let mods = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim_start().split('\t').collect();
            (f[0] == "mod" || f[0] == "dep")
                .then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .collect();
    (go, mods)
}

/// A real ELF (a copy of the host's `true`) with a `.dep-v0` section holding what
/// `cargo auditable` writes: zlib-compressed JSON.
fn auditable_binary(dir: &Path) -> PathBuf {
    require("objcopy");
    let json = br#"{"packages":[{"name":"auditable-app","version":"0.1.0","source":"local","dependencies":[1],"root":true},{"name":"itoa","version":"1.0.11","source":"crates.io"}]}"#;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json).unwrap();
    let section = dir.join("dep-v0.zlib");
    std::fs::write(&section, z.finish().unwrap()).unwrap();
    let out = dir.join("auditable-app");
    run_ok(
        Command::new("objcopy")
            .arg("--add-section")
            .arg(format!(".dep-v0={}", section.display()))
            .args(["--set-section-flags", ".dep-v0=noload,readonly"])
            .arg("/bin/true")
            .arg(&out),
    );
    out
}

/// The one directory of `parent` whose name starts with `prefix` and ends with `suffix`.
fn one_dir(parent: &str, prefix: &str, suffix: &str) -> PathBuf {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .unwrap_or_else(|| panic!("no {prefix}*{suffix} in {parent}"))
}

#[test]
fn real_packages_are_found_exactly_and_nothing_is_guessed() {
    let busybox = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let hello = go_binary(&t.path().join("go"));
    let (go, modules) = go_version_m(&hello);
    let auditable = auditable_binary(t.path());
    // Debian's python3-yaml and node-semver (installed by .ci/run).
    let yaml = one_dir("/usr/lib/python3/dist-packages", "PyYAML-", ".dist-info");
    let semver = std::fs::read("/usr/share/nodejs/semver/package.json")
        .expect("node-semver is installed by .ci/run");
    let types = std::fs::read("/usr/share/nodejs/@types/semver/package.json").unwrap();
    let version_of = |b: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        v["version"].as_str().unwrap().to_owned()
    };
    let true_bin = std::fs::read("/bin/true").unwrap();

    let recipe = format!(
        "[build]\nimage = \"{busybox}\"\nsteps = [\"cp -r out/. /out/\"]\n\
         [[artifact]]\nname = \"inside\"\n"
    );
    let go_bytes = std::fs::read(&hello).unwrap();
    let aud_bytes = std::fs::read(&auditable).unwrap();
    let metadata = std::fs::read(yaml.join("METADATA")).unwrap();
    let yaml_at = format!(
        "out/usr/lib/python3/dist-packages/{}/METADATA",
        yaml.file_name().unwrap().to_string_lossy()
    );
    let files: Vec<(&str, &[u8])> = vec![
        ("kiln.toml", recipe.as_bytes()),
        ("out/usr/bin/hello", go_bytes.as_slice()),
        ("out/usr/bin/true", true_bin.as_slice()),
        ("out/usr/bin/auditable-app", aud_bytes.as_slice()),
        (yaml_at.as_str(), metadata.as_slice()),
        (
            "out/app/node_modules/semver/package.json",
            semver.as_slice(),
        ),
        (
            "out/app/node_modules/@types/semver/package.json",
            types.as_slice(),
        ),
        // Not a package's own package.json: never read as one.
        (
            "out/app/node_modules/semver/lib/package.json",
            br#"{"name":"decoy","version":"9.9.9"}"#,
        ),
    ];
    let repo = t.path().join("inside");
    let sha = git_repo(&repo, &files, Some("https://github.com/acme/inside"));
    let build = |layout: &Path| -> serde_json::Value {
        let out = run_ok(
            kiln()
                .arg("build")
                .arg(&repo)
                .arg("--output")
                .arg(layout)
                .arg("--json"),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let layout = t.path().join("layout");
    let built = build(&layout);
    let (bytes, doc) = checked_sbom(&layout, "inside", t.path());

    // The document: named by the manifest digest, created at the commit time, by kiln.
    let manifest = tagged(&layout, "inside");
    assert_eq!(built["artifacts"][0]["digest"], manifest.as_str());
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["name"], format!("inside@{manifest}"));
    assert!(
        doc["documentNamespace"]
            .as_str()
            .unwrap()
            .ends_with(&manifest)
    );
    assert_eq!(doc["creationInfo"]["created"], "2024-01-02T03:04:05Z");
    assert_eq!(
        doc["creationInfo"]["creators"][0],
        format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))
    );
    // The artifact: its digest, its oci purl (no repository_url), its source.
    let root = &doc["packages"][0];
    assert_eq!(root["SPDXID"], "SPDXRef-Artifact");
    assert_eq!(root["checksums"][0]["checksumValue"], &manifest[7..]);
    let refs = root["externalRefs"].to_string();
    assert!(
        refs.contains(&format!("pkg:oci/inside@sha256%3A{}", &manifest[7..]))
            && !refs.contains("repository_url"),
        "{refs}"
    );
    assert!(
        refs.contains(&format!("git+https://github.com/acme/inside@{sha}")),
        "{refs}"
    );
    assert!(
        doc["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["spdxElementId"] == "SPDXRef-DOCUMENT"
                && r["relationshipType"] == "DESCRIBES"
                && r["relatedSpdxElement"] == "SPDXRef-Artifact")
    );

    // Files: every regular file, with SHA-1 and SHA-256 of its bytes.
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 7, "{files:?}");
    let f = files
        .iter()
        .find(|f| f["fileName"] == "./usr/bin/true")
        .unwrap();
    assert_eq!(f["checksums"][0]["algorithm"], "SHA1");
    assert_eq!(
        f["checksums"][0]["checksumValue"],
        hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&true_bin))
    );
    assert_eq!(f["checksums"][1]["checksumValue"], sha256_hex(&true_bin));

    let pkgs = packages(&doc);
    eprintln!("{pkgs:#?}");
    let find = |purl: &str| {
        pkgs.iter()
            .find(|p| p.purl == purl)
            .unwrap_or_else(|| panic!("no {purl} in {pkgs:#?}"))
    };
    // Go: the modules exactly as `go version -m` prints them, and the Go version.
    assert_eq!(modules.len(), 3, "{modules:?}");
    for (kind, path, version) in &modules {
        let enc = version.replace('(', "%28").replace(')', "%29");
        let p = find(&format!("pkg:golang/{path}@{enc}"));
        assert_eq!((&p.name, &p.version), (path, version), "{kind}");
        assert!(p.found.contains("./usr/bin/hello"), "{}", p.found);
    }
    let std = find(&format!(
        "pkg:golang/stdlib@{}",
        go.trim_start_matches("go")
    ));
    assert_eq!(std.version, go);
    // Rust (cargo auditable), Python, node.
    find("pkg:cargo/auditable-app@0.1.0");
    find("pkg:cargo/itoa@1.0.11");
    let py = find(&format!(
        "pkg:pypi/pyyaml@{}",
        yaml.file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("PyYAML-")
            .trim_end_matches(".dist-info")
    ));
    assert_eq!(py.name, "PyYAML");
    find(&format!("pkg:npm/semver@{}", version_of(&semver)));
    let t2 = find(&format!("pkg:npm/%40types/semver@{}", version_of(&types)));
    assert_eq!(t2.name, "@types/semver");
    // Nothing guessed: not from a stripped binary, not from a file that only looks like
    // package metadata.
    assert!(
        !pkgs.iter().any(|p| p.found.contains("./usr/bin/true")),
        "{pkgs:#?}"
    );
    assert!(!pkgs.iter().any(|p| p.name == "decoy"));
    assert_eq!(pkgs.len(), 3 + 1 + 2 + 1 + 2, "{pkgs:#?}");
    // The Go main module depends on its modules and the standard library.
    let rel = doc["relationships"].as_array().unwrap();
    assert_eq!(
        rel.iter()
            .filter(|r| r["relationshipType"] == "DEPENDS_ON")
            .count(),
        3 + 1,
        "3 Go edges and 1 crate edge"
    );

    // The provenance lists the SBOM among its byproducts, by the digest of these bytes.
    let prov = provenance_statement(&layout, "inside");
    let by = prov["predicate"]["runDetails"]["byproducts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "sbom")
        .unwrap()
        .clone();
    assert_eq!(by["digest"]["sha256"], sha256_hex(&bytes));
    assert_eq!(by["mediaType"], "application/spdx+json");
    assert_eq!(
        built["artifacts"][0]["sbom"]["digest"],
        format!("sha256:{}", sha256_hex(&bytes))
    );
    assert_eq!(built["artifacts"][0]["sbom"]["packages"], 9);
    // The statement around it.
    let st = layout_statement(&layout, "inside", SPDX);
    assert_eq!(st["subject"][0]["digest"]["sha256"], &manifest[7..]);

    // The same commit built again, elsewhere: byte-identical.
    let again = t.path().join("again");
    build(&again);
    let (bytes2, _) = checked_sbom(&again, "inside", &t.path().join("again"));
    assert_eq!(bytes, bytes2, "two builds of one commit give one SBOM");
    validate(&layout);
}

#[test]
fn debian_packages_of_a_debootstrapped_tree_are_all_listed() {
    let image = builder_image("debian-gcc");
    // What dpkg itself says is installed in that tree.
    let listed = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "dpkg-query",
        "-W",
        "-f",
        "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
    ]))
    .stdout;
    let expected: BTreeSet<(String, String, String)> = String::from_utf8(listed)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ii"))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    assert!(expected.len() > 50, "{expected:?}");

    let t = tempfile::tempdir().unwrap();
    let recipe = format!(
        "[build]\nimage = \"{image}\"\nsteps = [\"mkdir -p /out/var/lib/dpkg /out/etc\", \"cp /var/lib/dpkg/status /out/var/lib/dpkg/status\", \"cp /etc/os-release /out/etc/os-release\"]\n\
         [[artifact]]\nname = \"debian\"\n"
    );
    let repo = t.path().join("debian");
    git_repo(&repo, &[("kiln.toml", recipe.as_bytes())], None);
    let layout = t.path().join("layout");
    run_ok(kiln().arg("build").arg(&repo).arg("--output").arg(&layout));
    let (_, doc) = checked_sbom(&layout, "debian", t.path());
    let pkgs = packages(&doc);
    let mut got = BTreeSet::new();
    for p in &pkgs {
        let arch = p
            .purl
            .split("arch=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let name = p
            .purl
            .strip_prefix("pkg:deb/debian/")
            .unwrap()
            .split('@')
            .next()
            .unwrap();
        assert_eq!(percent_decoded(name), p.name, "{}", p.purl);
        let version = p.purl.split('@').nth(1).unwrap().split('?').next().unwrap();
        assert_eq!(percent_decoded(version), p.version, "{}", p.purl);
        assert!(p.purl.ends_with("&distro=debian-12"), "{}", p.purl);
        assert!(p.found.contains("./var/lib/dpkg/status"), "{}", p.found);
        got.insert((p.name.clone(), p.version.clone(), arch.to_owned()));
    }
    assert_eq!(
        got, expected,
        "every installed package, with its version and arch"
    );
}

#[test]
fn a_signed_sbom_verifies_independently_and_kiln_sbom_checks_its_key() {
    let busybox = builder_image("busybox");
    let t = tempfile::tempdir().unwrap();
    let key = TestKey::generate(&t.path().join("k"), "ecdsa-p256");
    let other = TestKey::generate(&t.path().join("other"), "ed25519");
    let recipe = format!(
        "[build]\nimage = \"{busybox}\"\nsteps = [\"mkdir -p /out && echo hi > /out/hi\"]\n[[artifact]]\nname = \"signed\"\n"
    );
    let repo = t.path().join("signed");
    git_repo(&repo, &[("kiln.toml", recipe.as_bytes())], None);
    let layout = t.path().join("layout");
    run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(&layout)
            .arg("--sign-key")
            .arg(&key.private),
    );
    // The SBOM's referrer: a DSSE envelope, as the provenance's is.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.in-toto.spdx+dsse")
        .expect("a signed SBOM referrer");
    assert_eq!(entry["annotations"]["in-toto.io/predicate-type"], SPDX);
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.dsse.envelope.v1+json"
    );
    let envelope = t.path().join("sbom.dsse.json");
    std::fs::write(&envelope, blob(m["layers"][0]["digest"].as_str().unwrap())).unwrap();
    assert!(
        independently_verified(&envelope, &key, &key.keyid),
        "securesystemslib verifies the SBOM envelope"
    );
    assert!(
        !independently_verified(&envelope, &other, &key.keyid),
        "and refuses it with another key"
    );

    checked_sbom(&layout, "signed", t.path());
    // kiln sbom: with the right key it prints the document; with another it refuses.
    let out = run_ok(
        kiln()
            .args(["sbom", "signed", "--layout"])
            .arg(&layout)
            .arg("--key")
            .arg(&key.public),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let refused = kiln()
        .args(["sbom", "signed", "--layout"])
        .arg(&layout)
        .arg("--key")
        .arg(&other.public)
        .checked_output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("no SBOM signed by a --key key"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn the_sbom_travels_with_the_artifact_names_its_base_and_survives_verify() {
    require("skopeo");
    let busybox = builder_image("busybox");
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    // A base image whose filesystem holds a dpkg database: packed and pushed by kiln.
    let base_dir = t.path().join("base");
    std::fs::create_dir_all(base_dir.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(base_dir.join("etc")).unwrap();
    std::fs::write(
        base_dir.join("var/lib/dpkg/status"),
        "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n\n\
         Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u7\n",
    )
    .unwrap();
    std::fs::write(
        base_dir.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    // And a Go binary: read from the base layer's stream.
    let hello = go_binary(&t.path().join("go"));
    std::fs::create_dir_all(base_dir.join("usr/local/bin")).unwrap();
    std::fs::copy(&hello, base_dir.join("usr/local/bin/hello")).unwrap();
    let base_layout = t.path().join("base-layout");
    pack(&base_dir, &base_layout, &["--tag", "1"]);
    let base = format!("{}/base/deb:1", reg.addr);
    run_ok(
        kiln()
            .arg("push")
            .arg(format!("{}:1", base_layout.display()))
            .arg(&base),
    );
    let base_digest = kiln::Digest::of(
        &run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{base}")),
        )
        .stdout,
    )
    .to_string();

    let repo = t.path().join("onbase");
    let recipe = format!(
        "[build]\nimage = \"{busybox}\"\nsteps = [\"mkdir -p /out && echo hi > /out/hi\"]\n\
         [[artifact]]\nname = \"onbase\"\nbase = \"{base}\"\n"
    );
    let sha = git_repo(
        &repo,
        &[("kiln.toml", recipe.as_bytes())],
        Some(&format!("file://{}", repo.display())),
    );
    let layout = t.path().join("l");
    let out = run_ok(
        kiln()
            .arg("build")
            .arg(&repo)
            .arg("--output")
            .arg(&layout)
            .args(["--json", "--push", &format!("{}/acme", reg.addr)]),
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (local, doc) = checked_sbom(&layout, "onbase", t.path());

    // The base: a package with its digest, containing what was found inside it.
    let base_pkg = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Base-"))
        .expect("a package for the base");
    assert_eq!(base_pkg["versionInfo"], base_digest.as_str());
    assert_eq!(base_pkg["checksums"][0]["checksumValue"], &base_digest[7..]);
    let pkgs = packages(&doc);
    let (go, _) = go_version_m(&hello);
    let stdlib = format!("pkg:golang/stdlib@{}", go.trim_start_matches("go"));
    assert_eq!(
        pkgs.iter()
            .map(|p| p.purl.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12",
            "pkg:golang/example.com/greet@v1.2.0",
            "pkg:golang/golang.org/x/shout@v0.3.1",
            "pkg:golang/example.com/hello@%28devel%29",
            stdlib.as_str(),
        ])
    );
    assert!(
        pkgs.iter()
            .filter(|p| p.purl.starts_with("pkg:golang/"))
            .all(|p| p
                .found
                .contains("./usr/local/bin/hello (in the base image)")),
        "{pkgs:#?}"
    );
    let base_id = base_pkg["SPDXID"].as_str().unwrap();
    let contained = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["spdxElementId"] == base_id && r["relationshipType"] == "CONTAINS")
        .count();
    assert_eq!(contained, 6);
    // The artifact's own files only: not the base's.
    assert_eq!(doc["files"].as_array().unwrap().len(), 1);

    // From the registry: the same bytes, pushed as a referrer.
    let image = format!("{}/acme/onbase:{sha}", reg.addr);
    let fetched = run_ok(kiln().arg("sbom").arg(&image)).stdout;
    assert_eq!(fetched, [local.as_slice(), b"\n"].concat());

    // kiln verify rebuilds it: the same layers and the same SBOM.
    let out = kiln()
        .args(["verify", &image, "--json"])
        .checked_output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sbom"]["identical"], true, "{report}");
    assert_eq!(
        report["sbom"]["expected"],
        built["artifacts"][0]["sbom"]["digest"]
    );
    assert_eq!(report["sbom"]["kiln_bug"], false);
}

#[test]
fn a_hundred_thousand_files_give_an_sbom_within_its_cap() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("many");
    for d in 0..1000 {
        let sub = dir.join(format!("d{d:04}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let layout = t.path().join("l");
    pack(&dir, &layout, &["--tag", "many", "--sbom"]);
    let file = t.path().join("many.spdx.json");
    let bytes = sbom_in_layout(&layout, "many", "spdx-json", &file);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let files = doc["files"].as_array().unwrap();
    assert_eq!(files.len(), 10_000, "the documented cap");
    assert_eq!(files[0]["fileName"], "./d0000/f000");
    assert_eq!(
        files[9_999]["fileName"], "./d0099/f099",
        "the first in path order"
    );
    let comment = doc["packages"][0]["comment"].as_str().unwrap();
    assert!(
        comment.starts_with("100000 regular files")
            && comment.contains("the first 10000 in path order are listed"),
        "{comment}"
    );
    assert_eq!(
        doc["relationships"].as_array().unwrap().len(),
        10_001,
        "DESCRIBES, and each listed file CONTAINED_BY"
    );
    assert!(bytes.len() < 8 << 20, "{} bytes", bytes.len());
}
