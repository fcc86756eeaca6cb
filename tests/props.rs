//! Hostile input, generated: the recipe and config parsers, the tar normalizer and untar fed
//! arbitrary tar streams (`..`, absolute paths, a symlink then a file of the same name,
//! hardlinks out), the `WWW-Authenticate` parser, and GitHub's JSON and webhook signatures.
//! Zero panics, nothing written outside its directory. `PROPTEST_CASES` sets how many cases
//! (256 by default, for CI; `benches/fuzz.sh` runs a long session). Failures proptest finds
//! are kept in `tests/props.proptest-regressions` and replayed first.

mod common;

use std::path::Path;

use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

/// TOML-ish text from pieces that a recipe or config might hold, shuffled.
fn tomlish() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "[build]",
        "[[artifact]]",
        "[github]",
        "[registry]",
        "[[repo]]",
        "[limits]",
        "image",
        "steps",
        "name",
        "kind",
        "files",
        "base",
        "entrypoint",
        "timeout",
        "memory",
        "cpus",
        "network",
        "env",
        "state_dir",
        "listen",
        "concurrency",
        "path",
        "branches",
        "tags",
        "verify",
        "lease",
        "url",
        "dir",
        "from",
        "to",
        "output",
        "workdir",
    ]);
    let values = prop::sample::select(vec![
        "\"x\"",
        "\"\"",
        "1",
        "-1",
        "0.5",
        "true",
        "[]",
        "[\"a\", 1]",
        "{}",
        "{ a = \"b\" }",
        "\"../..\"",
        "\"/\"",
        "\"9999999999999999999g\"",
        "\"1h30m\"",
        "\"\\u0000\"",
        "[{ from = \"..\", to = \"/x\" }]",
        "\"never\"",
        "2e308",
        "\"v*[\"",
        "inf",
        "nan",
    ]);
    prop::collection::vec((keys, values, any::<bool>()), 0..24).prop_map(|items| {
        items
            .into_iter()
            .map(|(k, v, table)| {
                if k.starts_with('[') || table {
                    format!("{k}\n")
                } else {
                    format!("{k} = {v}\n")
                }
            })
            .collect()
    })
}

/// One entry of a hostile tar.
#[derive(Clone, Debug)]
enum TarEntry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

fn path_piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "..", ".", "", "/", "/etc", "x/../..", "deep/er", "a\nb", "\u{00e9}", "c",
    ])
    .prop_map(str::to_owned)
}

fn tar_path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 1..4).prop_map(|p| p.join("/"))
}

fn tar_entry() -> impl Strategy<Value = TarEntry> {
    prop_oneof![
        (tar_path(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(p, c)| TarEntry::File(p, c)),
        tar_path().prop_map(TarEntry::Dir),
        (tar_path(), tar_path()).prop_map(|(p, t)| TarEntry::Symlink(p, t)),
        (tar_path(), tar_path()).prop_map(|(p, t)| TarEntry::Hardlink(p, t)),
    ]
}

/// Raw tar bytes for `entries`, written header by header (no path checks: hostile on purpose).
fn hostile_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match e {
            TarEntry::File(p, c) => (p, c, tar::EntryType::Regular, None),
            TarEntry::Dir(p) => (p, b"", tar::EntryType::Directory, None),
            TarEntry::Symlink(p, t) => (p, b"", tar::EntryType::Symlink, Some(t)),
            TarEntry::Hardlink(p, t) => (p, b"", tar::EntryType::Link, Some(t)),
        };
        let name = path.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = link {
            let l = l.as_bytes();
            let m = l.len().min(99);
            h.as_old_mut().linkname[..m].copy_from_slice(&l[..m]);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every file under `dir`, to show nothing outside changed.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(listing(&e.path()));
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #[test]
    fn recipes_never_panic(text in tomlish(), raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = kiln::recipe::Recipe::parse(text.as_bytes(), Path::new("kiln.toml"));
        let _ = kiln::recipe::Recipe::parse(&raw, Path::new("kiln.toml"));
    }

    #[test]
    fn configs_never_panic(text in tomlish(), raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = kiln::daemon::config::Config::parse(text.as_bytes(), Path::new("kiln.toml"));
        let _ = kiln::daemon::config::Config::parse(&raw, Path::new("kiln.toml"));
    }

    #[test]
    fn untar_and_the_normalizer_stay_inside(entries in prop::collection::vec(tar_entry(), 0..12),
                                            noise in prop::collection::vec(any::<u8>(), 0..2048)) {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
        let inside = t.path().join("a/b/inside");
        std::fs::create_dir_all(&inside).unwrap();
        let prefix = inside.display().to_string();
        let others = || -> Vec<String> {
            listing(t.path()).into_iter().filter(|p| !p.starts_with(&prefix)).collect()
        };
        let before = others();
        let cancel = CancellationToken::new();
        let bytes = hostile_tar(&entries);
        let _ = kiln::pack::unpack_tar(&bytes[..], &inside, &cancel);
        let _ = kiln::pack::unpack_tar(&noise[..], &inside, &cancel);
        // Nothing outside the target changed.
        prop_assert_eq!(others(), before);
        prop_assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"untouched".to_vec());

        // The normalizer (a tar stream into a layer) never panics either.
        let layout = kiln::store::OciLayout::open_or_create(t.path().join("layout")).unwrap();
        let scratch = layout.scratch().unwrap();
        let opts = kiln::pack::PackOptions::new(1_700_000_000);
        let _ = kiln::pack::pack_tar(&bytes[..], &scratch, &opts, &layout, &cancel, &kiln::events::Quiet);
    }

    #[test]
    fn auth_challenges_never_panic(h in ".{0,200}", key in "[a-z]{1,8}", v in "[^\"]{0,20}") {
        let _ = kiln::registry::auth::parse_challenge(&h);
        let (scheme, p) = kiln::registry::auth::parse_challenge(&format!("Bearer {key}=\"{v}\",service=x"));
        prop_assert_eq!(scheme, "Bearer");
        prop_assert_eq!(p.get(&key).map(String::as_str), Some(v.as_str()));
    }

    #[test]
    fn github_answers_and_webhooks_never_panic(body in ".{0,300}",
                                               sig in ".{0,80}",
                                               secret in prop::collection::vec(any::<u8>(), 0..40),
                                               payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = kiln::forge::github::parse_tags(&body);
        let _ = kiln::forge::github::next_link(&body, "https://api.github.com");
        prop_assert!(!kiln::forge::github::signature_ok(&secret, &payload, &sig) || sig.starts_with("sha256="));
        // A signature made with the secret always verifies; any other change never does.
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&payload);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        prop_assert!(kiln::forge::github::signature_ok(&secret, &payload, &good));
        let mut other = payload.clone();
        other.push(b'!');
        prop_assert!(!kiln::forge::github::signature_ok(&secret, &other, &good));
    }
}
