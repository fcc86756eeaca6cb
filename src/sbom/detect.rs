//! Package databases and metadata files found in a layer: which paths kiln reads, and what
//! they say. Every parser reads only what its format states; nothing is guessed from a file
//! name.

use super::{Ecosystem, Found};

/// What a captured file is, by its path in the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metadata {
    /// `var/lib/dpkg/status`, or one file of `var/lib/dpkg/status.d/` (distroless images).
    Dpkg,
    /// `lib/apk/db/installed`.
    Apk,
    /// `*.dist-info/METADATA` or `*.egg-info/PKG-INFO` (core metadata, RFC 822 headers).
    Python,
    /// `node_modules/<name>/package.json` or `node_modules/@scope/<name>/package.json`.
    Node,
    /// `etc/os-release` or `usr/lib/os-release`: names the distribution of dpkg and apk
    /// packages.
    OsRelease,
}

/// The kind of metadata file at `path` (a layer path: relative, no `./`), if kiln reads it.
pub fn classify(path: &str) -> Option<Metadata> {
    match path {
        "var/lib/dpkg/status" => return Some(Metadata::Dpkg),
        "lib/apk/db/installed" => return Some(Metadata::Apk),
        "etc/os-release" | "usr/lib/os-release" => return Some(Metadata::OsRelease),
        _ => {}
    }
    if let Some(name) = path.strip_prefix("var/lib/dpkg/status.d/") {
        return (!name.contains('/') && !name.ends_with(".md5sums") && !name.starts_with('.'))
            .then_some(Metadata::Dpkg);
    }
    let (dir, file) = path.rsplit_once('/')?;
    let parent = dir.rsplit('/').next().unwrap_or(dir);
    if (file == "METADATA" && parent.ends_with(".dist-info"))
        || (file == "PKG-INFO" && parent.ends_with(".egg-info"))
    {
        return Some(Metadata::Python);
    }
    if file == "package.json" {
        let parts: Vec<&str> = dir.split('/').collect();
        let n = parts.len();
        let direct = n >= 2 && parts[n - 2] == "node_modules" && !parts[n - 1].starts_with('@');
        let scoped = n >= 3 && parts[n - 3] == "node_modules" && parts[n - 2].starts_with('@');
        if direct || scoped {
            return Some(Metadata::Node);
        }
    }
    None
}

/// The distribution an `os-release` file names: its `ID` and `VERSION_ID`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Distro {
    pub id: String,
    pub version_id: Option<String>,
}

pub fn os_release(text: &str) -> Option<Distro> {
    let mut d = Distro::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_owned();
        match k.trim() {
            "ID" => d.id = v,
            "VERSION_ID" => d.version_id = Some(v),
            _ => {}
        }
    }
    (!d.id.is_empty()).then_some(d)
}

/// RFC 822-style stanzas (dpkg's status, Python's core metadata): each a list of fields, with
/// continuation lines folded away.
fn stanzas(text: &str) -> Vec<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim(), v.trim()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(stanza: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    stanza
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .filter(|v| !v.is_empty())
}

/// A distribution package's purl qualifiers: its architecture, and the distribution release
/// (`debian-12`) when `os-release` names one.
fn qualifiers(arch: Option<&str>, distro: Option<&Distro>) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(a) = arch {
        q.push(("arch", a.to_owned()));
    }
    if let Some(d) = distro
        && let Some(v) = &d.version_id
    {
        q.push(("distro", format!("{}-{v}", d.id)));
    }
    q
}

/// The installed packages a dpkg status file (or a `status.d` entry) lists. An entry of
/// `status.d` carries no `Status` field: it is installed by being there.
pub fn dpkg(path: &str, text: &str, distro: Option<&Distro>) -> Vec<Found> {
    let namespace = distro.map_or("debian", |d| d.id.as_str());
    let mut out = Vec::new();
    for s in stanzas(text) {
        let (Some(name), Some(version)) = (field(&s, "Package"), field(&s, "Version")) else {
            continue;
        };
        if let Some(status) = field(&s, "Status")
            && status.split_whitespace().nth(2) != Some("installed")
        {
            continue;
        }
        out.push(Found::new(
            Ecosystem::Deb,
            name,
            version,
            Some(namespace),
            &qualifiers(field(&s, "Architecture"), distro),
            path,
            "dpkg status database",
        ));
    }
    out
}

/// The packages an apk `installed` database lists (`P:` name, `V:` version, `A:` arch).
pub fn apk(path: &str, text: &str, distro: Option<&Distro>) -> Vec<Found> {
    let namespace = distro.map_or("alpine", |d| d.id.as_str());
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let get = |k: &str| {
            record
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let (Some(name), Some(version)) = (get("P:"), get("V:")) else {
            continue;
        };
        out.push(Found::new(
            Ecosystem::Apk,
            name,
            version,
            Some(namespace),
            &qualifiers(get("A:"), distro),
            path,
            "apk installed database",
        ));
    }
    out
}

/// A Python distribution's name and version from its core metadata.
pub fn python(path: &str, text: &str) -> Vec<Found> {
    let header = stanzas(text).into_iter().next().unwrap_or_default();
    match (field(&header, "Name"), field(&header, "Version")) {
        (Some(name), Some(version)) => vec![Found::new(
            Ecosystem::PyPi,
            name,
            version,
            None,
            &[],
            path,
            "Python core metadata",
        )],
        _ => Vec::new(),
    }
}

/// A node package's name and version from its `package.json`.
pub fn node(path: &str, bytes: &[u8]) -> Vec<Found> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let (Some(name), Some(version)) = (v["name"].as_str(), v["version"].as_str()) else {
        return Vec::new();
    };
    if name.is_empty() || version.is_empty() {
        return Vec::new();
    }
    let (namespace, short) = match name.split_once('/') {
        Some((scope, n)) if scope.starts_with('@') => (Some(scope), n),
        _ => (None, name),
    };
    let mut f = Found::new(
        Ecosystem::Npm,
        short,
        version,
        namespace,
        &[],
        path,
        "package.json in node_modules",
    );
    f.name = name.to_owned();
    vec![f]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_paths_are_read() {
        assert_eq!(classify("var/lib/dpkg/status"), Some(Metadata::Dpkg));
        assert_eq!(
            classify("var/lib/dpkg/status.d/libc6"),
            Some(Metadata::Dpkg)
        );
        assert_eq!(classify("var/lib/dpkg/status.d/libc6.md5sums"), None);
        assert_eq!(classify("var/lib/dpkg/status-old"), None);
        assert_eq!(
            classify("usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/METADATA"),
            Some(Metadata::Python)
        );
        assert_eq!(classify("a/foo.egg-info/PKG-INFO"), Some(Metadata::Python));
        assert_eq!(classify("a/METADATA"), None);
        assert_eq!(
            classify("app/node_modules/semver/package.json"),
            Some(Metadata::Node)
        );
        assert_eq!(
            classify("node_modules/@types/semver/package.json"),
            Some(Metadata::Node)
        );
        assert_eq!(classify("node_modules/semver/lib/package.json"), None);
        assert_eq!(classify("node_modules/@types/package.json"), None);
        assert_eq!(classify("package.json"), None);
        assert_eq!(classify("etc/os-release"), Some(Metadata::OsRelease));
    }

    #[test]
    fn dpkg_lists_installed_packages_only() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\nDescription: GNU C\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n";
        let d = Distro {
            id: "debian".into(),
            version_id: Some("12".into()),
        };
        let f = dpkg("var/lib/dpkg/status", status, Some(&d));
        let purls: Vec<_> = f.iter().map(|f| f.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12",
                "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12"
            ]
        );
        assert_eq!(f[0].version, "2.36-9+deb12u4");
    }

    #[test]
    fn apk_python_and_node() {
        let f = apk(
            "lib/apk/db/installed",
            "C:Q1abc\nP:musl\nV:1.2.4-r2\nA:x86_64\n\nP:busybox\nV:1.36.1-r5\nA:x86_64\n",
            None,
        );
        assert_eq!(f[0].purl, "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64");
        assert_eq!(f.len(), 2);
        let p = python(
            "x/PyYAML-6.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0\n\nLong description\nName: nope\n",
        );
        assert_eq!(p[0].purl, "pkg:pypi/pyyaml@6.0");
        assert_eq!(p[0].name, "PyYAML");
        let n = node(
            "node_modules/@types/semver/package.json",
            br#"{"name":"@types/semver","version":"7.3.9"}"#,
        );
        assert_eq!(n[0].purl, "pkg:npm/%40types/semver@7.3.9");
        assert_eq!(n[0].name, "@types/semver");
        assert!(node("node_modules/x/package.json", br#"{"name":"x"}"#).is_empty());
    }
}
