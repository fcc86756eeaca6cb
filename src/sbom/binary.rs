//! What compiled binaries say about themselves: Go's module build info (the
//! `.go.buildinfo` section, what `go version -m` prints) and the dependency list
//! `cargo auditable` embeds (the `.dep-v0` section). ELF only; sections are read through a
//! cache over the file, never the whole binary into memory.

use std::io::Read;

use object::{Object, ObjectSection};

use super::{Ecosystem, Found};

/// The largest `.dep-v0` section kiln reads (compressed).
const MAX_AUDIT_SECTION: u64 = 8 << 20;
/// The most a `.dep-v0` section may inflate to (its JSON).
const MAX_AUDIT_JSON: u64 = 16 << 20;
/// The most of a `.go.buildinfo` section kiln reads.
const MAX_GO_BUILDINFO: u64 = 4 << 20;

/// The packages a binary records, or none (a stripped C binary, an unknown format, a Go
/// binary older than Go 1.18, whose build info is not inline: not guessed).
pub fn detect(path: &str, file: &std::fs::File) -> Vec<Found> {
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(s) = obj.section_by_name(".go.buildinfo")
        && s.size() <= MAX_GO_BUILDINFO
        && let Ok(data) = s.data()
        && let Some(info) = go_buildinfo(data)
    {
        out.extend(go_packages(path, &info));
    }
    if let Some(s) = obj.section_by_name(".dep-v0")
        && s.size() <= MAX_AUDIT_SECTION
        && let Ok(data) = s.data()
    {
        out.extend(cargo_auditable(path, data));
    }
    out
}

/// Go's build info: the toolchain version and the module lines.
#[derive(Debug, PartialEq, Eq)]
pub struct GoBuildInfo {
    pub go_version: String,
    pub modinfo: String,
}

const GO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Parse a `.go.buildinfo` section (Go 1.18 and later: strings inline after a 32-byte header).
pub fn go_buildinfo(data: &[u8]) -> Option<GoBuildInfo> {
    if data.len() < 32 || !data.starts_with(GO_MAGIC) {
        return None;
    }
    let flags = data[15];
    if flags & 2 == 0 {
        return None; // pointer-based (before Go 1.18): not read
    }
    let mut rest = &data[32..];
    let mut bytes = || {
        let (len, n) = uvarint(rest)?;
        let len = usize::try_from(len).ok()?;
        let s = rest.get(n..n.checked_add(len)?)?;
        rest = &rest[n + len..];
        Some(s)
    };
    let go_version = String::from_utf8_lossy(bytes()?).into_owned();
    let mut modinfo = bytes()?;
    // The module info is framed by 16-byte sentinels (not UTF-8): cut them off the raw
    // bytes, as Go's debug/buildinfo does.
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        modinfo = &modinfo[16..modinfo.len() - 16];
    }
    Some(GoBuildInfo {
        go_version,
        modinfo: String::from_utf8_lossy(modinfo).into_owned(),
    })
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((x, i + 1));
        }
    }
    None
}

/// One module line of Go's build info: `mod`/`dep` path, version and sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    pub sum: Option<String>,
    /// A `=>` replacement: path, version (may be empty for a directory) and sum.
    pub replaced_by: Option<(String, String, Option<String>)>,
}

/// The main module and dependencies, as `go version -m` prints them.
pub fn go_modules(modinfo: &str) -> (Option<GoModule>, Vec<GoModule>) {
    let (mut main, mut deps): (Option<GoModule>, Vec<GoModule>) = (None, Vec::new());
    let mut last_dep = false;
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let module = || GoModule {
            path: f.get(1).copied().unwrap_or("").to_owned(),
            version: f.get(2).copied().unwrap_or("").to_owned(),
            sum: f.get(3).filter(|s| !s.is_empty()).map(|s| (*s).to_owned()),
            replaced_by: None,
        };
        match f[0] {
            "mod" => {
                main = Some(module());
                last_dep = false;
            }
            "dep" => {
                deps.push(module());
                last_dep = true;
            }
            "=>" => {
                let target = if last_dep {
                    deps.last_mut()
                } else {
                    main.as_mut()
                };
                if let Some(m) = target {
                    let r = module();
                    m.replaced_by = Some((r.path, r.version, r.sum));
                }
            }
            _ => {}
        }
    }
    (main.filter(|m| !m.path.is_empty()), deps)
}

fn go_packages(path: &str, info: &GoBuildInfo) -> Vec<Found> {
    let how = format!("Go module build info ({})", info.go_version);
    let (main, deps) = go_modules(&info.modinfo);
    let mut out = Vec::new();
    let found = |m: &GoModule| {
        // What is compiled in is the replacement, when it is a module with a version.
        let (name, version, sum) = match &m.replaced_by {
            Some((p, v, s)) if !v.is_empty() => (p.as_str(), v.as_str(), s.clone()),
            _ => (m.path.as_str(), m.version.as_str(), m.sum.clone()),
        };
        let (ns, short) = match name.rsplit_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, name),
        };
        let mut f = Found::new(Ecosystem::Go, short, version, ns, &[], path, &how);
        f.name = name.to_owned();
        let mut notes = Vec::new();
        if let Some(s) = sum {
            notes.push(format!("go.sum {s}"));
        }
        if let Some((p, v, _)) = &m.replaced_by {
            notes.push(format!("{} {} replaced by {p} {v}", m.path, m.version));
        }
        f.comment = (!notes.is_empty()).then(|| notes.join("; "));
        f
    };
    let Some(main) = main else {
        return out;
    };
    let mut root = found(&main);
    let version = info
        .go_version
        .strip_prefix("go")
        .unwrap_or(&info.go_version);
    let mut stdlib = Found::new(Ecosystem::Go, "stdlib", version, None, &[], path, &how);
    stdlib.version = info.go_version.clone();
    for d in &deps {
        let f = found(d);
        root.depends_on.push(f.key());
        out.push(f);
    }
    root.depends_on.push(stdlib.key());
    out.push(stdlib);
    out.push(root);
    out
}

/// The packages of a `cargo auditable` binary: its zlib-compressed JSON dependency list.
fn cargo_auditable(path: &str, compressed: &[u8]) -> Vec<Found> {
    let mut json = Vec::new();
    let inflated = flate2::read::ZlibDecoder::new(compressed)
        .take(MAX_AUDIT_JSON)
        .read_to_end(&mut json);
    if inflated.is_err() {
        return Vec::new();
    }
    cargo_packages(path, &json)
}

pub fn cargo_packages(path: &str, json: &[u8]) -> Vec<Found> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(pkgs) = v["packages"].as_array() else {
        return Vec::new();
    };
    let mut found: Vec<Option<Found>> = pkgs
        .iter()
        .map(|p| {
            let (name, version) = (p["name"].as_str()?, p["version"].as_str()?);
            let source = p["source"].as_str().unwrap_or("crates.io");
            let kind = p["kind"].as_str().unwrap_or("runtime");
            let mut f = Found::new(
                Ecosystem::Cargo,
                name,
                version,
                None,
                &[],
                path,
                "cargo auditable dependency list (.dep-v0)",
            );
            f.comment = Some(format!("source {source}, {kind} dependency"));
            Some(f)
        })
        .collect();
    for (i, p) in pkgs.iter().enumerate() {
        let deps: Vec<String> = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_u64())
            .filter_map(|d| found.get(d as usize)?.as_ref().map(Found::key))
            .collect();
        if let Some(Some(f)) = found.get_mut(i) {
            f.depends_on = deps;
        }
    }
    found.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_build_info_inline_strings() {
        let mut data = GO_MAGIC.to_vec();
        data.extend([8u8, 2]);
        data.resize(32, 0);
        let version = b"go1.19.8";
        // Framed by Go's own sentinels, which are not UTF-8.
        let mut modinfo =
            b"\x30\x77\xaf\x0c\x92\x74\x08\x02\x41\xe1\xc1\x07\xe6\xd6\x18\xe6".to_vec();
        modinfo.extend_from_slice(b"path\texample.com/hello\nmod\texample.com/hello\t(devel)\t\ndep\texample.com/a\tv1.2.0\th1:abc=\ndep\texample.com/b\tv0.1.0\t\n=>\texample.com/c\tv0.2.0\th1:def=\nbuild\t-compiler=gc\n");
        modinfo
            .extend_from_slice(b"\xf9\x32\x43\x31\x86\x18\x20\x72\x00\x82\x42\x10\x41\x16\xd8\xf2");
        data.push(version.len() as u8);
        data.extend(version);
        let len = modinfo.len();
        data.extend([(len as u8 & 0x7f) | 0x80, (len >> 7) as u8]);
        data.extend(&modinfo);
        let info = go_buildinfo(&data).unwrap();
        assert_eq!(info.go_version, "go1.19.8");
        assert!(info.modinfo.starts_with("path\texample.com/hello\n"));
        assert!(
            info.modinfo.ends_with("build\t-compiler=gc\n"),
            "{:?}",
            info.modinfo
        );
        let found = go_packages("usr/bin/hello", &info);
        let purls: Vec<_> = found.iter().map(|f| f.purl.as_str()).collect();
        assert_eq!(
            purls,
            [
                "pkg:golang/example.com/a@v1.2.0",
                "pkg:golang/example.com/c@v0.2.0",
                "pkg:golang/stdlib@1.19.8",
                "pkg:golang/example.com/hello@%28devel%29",
            ]
        );
        assert_eq!(found[0].comment.as_deref(), Some("go.sum h1:abc="));
        assert_eq!(found[3].depends_on.len(), 3);
        // Pre-1.18 (pointer) build info is not read.
        data[15] = 0;
        assert!(go_buildinfo(&data).is_none());
    }

    #[test]
    fn cargo_auditable_dependency_graph() {
        let json = br#"{"packages":[{"name":"app","version":"0.1.0","source":"local","dependencies":[1],"root":true},{"name":"serde","version":"1.0.200","source":"crates.io"}]}"#;
        let f = cargo_packages("usr/bin/app", json);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].purl, "pkg:cargo/app@0.1.0");
        assert_eq!(f[0].depends_on, vec![f[1].key()]);
        assert_eq!(
            f[1].comment.as_deref(),
            Some("source crates.io, runtime dependency")
        );
    }
}
