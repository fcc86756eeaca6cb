//! The house's walls, checked on the source: the library's import graph has no cycles (between
//! top-level modules, and between the sibling modules of every directory), GitHub is named only
//! where the forge seam says, the Docker runner only inside the runner, and no function takes
//! its arguments past clippy's limit.
//!
//! The graph is read from the code (comments and string literals left out): every
//! `crate::a::b` and `super::` path (`super` of an inline module is its file's module), every
//! `use` group, followed through re-exports (`pub use`, the crate root's too) and through glob
//! imports of them, and cut to the deepest module that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The library's module path of a source file (`daemon::worker` for
/// `src/daemon/worker/mod.rs`), or `None` for the binary's files and non-Rust files.
fn module_of(path: &Path) -> Option<Vec<String>> {
    let rel = path.strip_prefix(src()).ok()?;
    if rel.extension()? != "rs" {
        return None;
    }
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        Some("main") | Some("cli") => None,
        Some("lib") if parts.len() == 1 => Some(Vec::new()),
        _ => Some(parts),
    }
}

/// Rust source without its comments and with every string and char literal emptied.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
                && (i == 0
                    || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
                    || b[i - 1] == b'b') =>
            {
                // A raw string: r"..." or r#"..."#, any number of hashes.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&c| c == b'#') {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), else a lifetime.
                let rest = &text[i + 1..];
                let len = if rest.starts_with('\\') {
                    rest.find('\'').map(|n| n + 1)
                } else {
                    rest.chars()
                        .next()
                        .filter(|c| rest[c.len_utf8()..].starts_with('\''))
                        .map(|c| c.len_utf8() + 1)
                };
                match len {
                    Some(n) => {
                        out.push_str("' '");
                        i += 1 + n;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The inline modules of `code` (`mod tests { ... }`): each one's name and the span of its
/// body.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("mod ").map(|n| at + n) {
        at = found + "mod ".len();
        if found > 0 && code[..found].ends_with(ident) {
            continue;
        }
        let rest = &code[at..];
        let len = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        let Some(body) = rest[len..].trim_start().strip_prefix('{') else {
            continue;
        };
        let open = code.len() - body.len();
        let mut depth = 1;
        let close = code[open..]
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(code.len(), |(n, _)| open + n);
        out.push((rest[..len].to_owned(), open..close));
    }
    out
}

/// The module path at byte `at` of `module`'s code: the file's module and the inline
/// modules around `at`.
fn scope_at(
    module: &[String],
    inline: &[(String, std::ops::Range<usize>)],
    at: usize,
) -> Vec<String> {
    let mut scope = module.to_vec();
    scope.extend(
        inline
            .iter()
            .filter(|(_, body)| body.contains(&at))
            .map(|(name, _)| name.clone()),
    );
    scope
}

/// A leaf of a `use` declaration.
struct Use {
    /// Re-exported (`pub`, `pub(crate)`, ...).
    public: bool,
    /// The module it is written in (a file's module, or an inline module in it).
    scope: Vec<String>,
    /// What it names, absolute.
    path: Vec<String>,
    /// The name it binds there (`*` for a glob).
    name: String,
}

/// The leaves of `module`'s `use` declarations.
fn use_leaves(module: &[String], code: &str) -> Vec<Use> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let inline = inline_modules(code);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("use ").map(|n| at + n) {
        at = found + "use ".len();
        if found > 0 && code[..found].ends_with(ident) {
            continue;
        }
        let head = code[..found].trim_end();
        let public = head.ends_with("pub") || head.ends_with(')') && head.contains("pub(");
        let end = code[at..].find(';').map_or(code.len(), |n| at + n);
        let tree: String = code[at..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let scope = scope_at(module, &inline, found);
        for (path, name) in tree_leaves(&tree, Vec::new()) {
            let mut abs = match path.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("self") => scope.clone(),
                Some("super") => {
                    let mut base = scope.clone();
                    for _ in path.iter().take_while(|p| *p == "super") {
                        base.pop();
                    }
                    base
                }
                // A child of the scope (or another crate, which names no module here).
                _ => scope.clone(),
            };
            abs.extend(
                path.iter()
                    .skip_while(|p| matches!(p.as_str(), "crate" | "self" | "super"))
                    .cloned(),
            );
            out.push(Use {
                public,
                scope: scope.clone(),
                path: abs,
                name,
            });
        }
    }
    out
}

/// The leaves of a use tree (`a::{b, c::d as e, f::*}`): each path and the name it binds.
fn tree_leaves(tree: &str, prefix: Vec<String>) -> Vec<(Vec<String>, String)> {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(group) = tree.strip_prefix('{') {
        let inner = group.strip_suffix('}').unwrap_or(group);
        let (mut depth, mut start, mut out) = (0, 0, Vec::new());
        for (n, c) in inner.char_indices().chain([(inner.len(), ',')]) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    if !inner[start..n].trim().is_empty() {
                        out.extend(tree_leaves(&inner[start..n], prefix.clone()));
                    }
                    start = n + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    match tree.split_once("::") {
        Some((first, rest)) => {
            let mut p = prefix;
            p.push(first.trim().to_owned());
            tree_leaves(rest, p)
        }
        None => {
            let (seg, alias) = match tree.split_once(" as ") {
                Some((seg, alias)) => (seg.trim(), Some(alias.trim())),
                None => (tree, None),
            };
            let mut p = prefix;
            if seg == "self" {
                // `a::{self}` binds `a`.
                let name = alias.map(str::to_owned).or_else(|| p.last().cloned());
                return name.map(|n| (p, n)).into_iter().collect();
            }
            if seg != "*" {
                p.push(seg.to_owned());
            }
            vec![(p, alias.unwrap_or(seg).to_owned())]
        }
    }
}

/// The paths a module's code names: `crate::...` and `super::...` (made absolute), and the
/// members of `use crate::{...}` groups.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let inline = inline_modules(code);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("crate::").map(|n| at + n) {
        at = found + "crate::".len();
        if found > 0 && code[..found].ends_with(|c: char| ident(c) || c == '$') {
            continue;
        }
        out.extend(path_at(&code[at..], Vec::new()));
    }
    // `super::` paths, made absolute from this module (a file's `super` is its parent).
    let mut at = 0;
    while let Some(found) = code[at..].find("super::").map(|n| at + n) {
        at = found + "super::".len();
        if found > 0 && code[..found].ends_with(|c: char| ident(c) || c == ':') {
            continue;
        }
        let mut base = scope_at(module, &inline, found);
        base.pop();
        let mut rest = &code[at..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        out.extend(path_at(rest, base));
    }
    out
}

/// The path (or, for a `{...}` group, the paths) starting at `s`, after `prefix`.
fn path_at(s: &str, prefix: Vec<String>) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut path = prefix;
    let mut rest = s;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level members, each a path of its own.
            let mut depth = 0;
            let mut end = group.len();
            for (n, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = n;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let inner = &group[..end];
            let mut members = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (n, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        members.push(&inner[start..n]);
                        start = n + 1;
                    }
                    _ => {}
                }
            }
            members.push(&inner[start..]);
            return members
                .into_iter()
                .flat_map(|m| path_at(m.trim(), path.clone()))
                .collect();
        }
        let len = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        path.push(rest[..len].to_owned());
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    vec![path]
}

/// Module `from` depends on module `to`: every edge of the library, between modules that
/// exist.
fn graph() -> BTreeSet<(Vec<String>, Vec<String>)> {
    let sources: Vec<(Vec<String>, String)> = files(&src())
        .into_iter()
        .filter_map(|p| {
            let m = module_of(&p)?;
            Some((m, code_only(&std::fs::read_to_string(&p).unwrap())))
        })
        .collect();
    graph_of(&sources)
}

/// The edges between `sources` (each a module and its code). A path through a re-export
/// (`pub use`) counts as a path to where the item is defined, and a glob import of a module
/// (`use super::*`) as a path to each of its re-exports that the code names. A path is then
/// cut to the deepest module it names.
fn graph_of(sources: &[(Vec<String>, String)]) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut exports: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (m, code) in sources {
        for u in use_leaves(m, code) {
            if u.public && u.name != "*" {
                let mut key = u.scope;
                key.push(u.name);
                exports.insert(key, u.path);
            }
        }
    }
    let resolve = |mut path: Vec<String>| {
        for _ in 0..8 {
            let Some(k) = (1..=path.len())
                .rev()
                .find(|&k| exports.contains_key(&path[..k]))
            else {
                break;
            };
            let mut to = exports[&path[..k]].clone();
            to.extend_from_slice(&path[k..]);
            if to == path {
                break;
            }
            path = to;
        }
        path
    };
    let mut edges = BTreeSet::new();
    for (m, code) in sources {
        let mut refs = references(m, code);
        let words: BTreeSet<&str> = code
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for u in use_leaves(m, code).into_iter().filter(|u| u.name == "*") {
            let from = resolve(u.path);
            refs.extend(
                exports
                    .keys()
                    .filter(|k| k.len() == from.len() + 1 && k.starts_with(&from))
                    .filter(|k| words.contains(k[from.len()].as_str()))
                    .cloned(),
            );
        }
        for r in refs {
            let mut to = resolve(r);
            while !to.is_empty() && !modules.contains(&to) {
                to.pop();
            }
            if !to.is_empty() && &to != m {
                edges.insert((m.clone(), to));
            }
        }
    }
    edges
}

/// A cycle among the nodes of `edges`, if there is one.
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // 0: not seen, 1: on the path, 2: done.
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        mark: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut c: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_owned());
                return Some(c);
            }
            _ => {}
        }
        mark.insert(n, 1);
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, mark, path) {
                return Some(c);
            }
        }
        path.pop();
        mark.insert(n, 2);
        None
    }
    let mut mark = BTreeMap::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut mark, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_source_reader_sees_what_the_compiler_sees() {
    let code = code_only(
        "use crate::a::{b, c::{d, e}}; // crate::x::y\nlet s = \"crate::q::r\"; let c = '\"'; let l: &'a str = r#\"crate::z\"#;\n/* crate::w */ super::super::f::g(); 'x'",
    );
    assert!(!code.contains("crate::x") && !code.contains("crate::q"));
    assert!(!code.contains("crate::z") && !code.contains("crate::w"));
    let m = vec!["h".to_owned(), "i".to_owned(), "j".to_owned()];
    let refs: Vec<String> = references(&m, &code).iter().map(|p| p.join("::")).collect();
    assert_eq!(refs, ["a::b", "a::c::d", "a::c::e", "h::f::g"], "{code}");
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn the_graph_follows_re_exports_globs_and_inline_modules() {
    let m = |s: &str| -> Vec<String> {
        s.split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let sources: Vec<(Vec<String>, String)> = [
        ("", "pub use digest::Digest;"),
        ("digest", "pub struct Digest;"),
        ("runner", "fn f(d: crate::Digest) {}"),
        // `p::a` reaches `p::b` only through `p`'s re-export.
        ("p", "mod a; mod b; pub use b::{X, Y as Z};"),
        ("p::a", "use super::Z; fn f() { Z::new(); }"),
        ("p::b", "fn g() { crate::p::a::f(); }"),
        // A glob of `s`'s re-exports, and a name it uses.
        ("s", "pub use sqlite::Store; pub(crate) use other::Unused;"),
        ("s::sqlite", ""),
        ("s::other", ""),
        ("s::sql", "use super::*; fn f(x: Store) {}"),
        // `super` inside an inline module is the file's module.
        ("h::i", "mod tests { use super::super::f::g; }"),
        ("h::f", ""),
    ]
    .iter()
    .map(|(a, b)| (m(a), code_only(b)))
    .collect();
    let edges: BTreeSet<(String, String)> = graph_of(&sources)
        .into_iter()
        .map(|(a, b)| (a.join("::"), b.join("::")))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("p::a", "p::b"),
        ("p::b", "p::a"),
        ("runner", "digest"),
        ("s::sql", "s"),
        ("s::sql", "s::sqlite"),
        ("h::i", "h::f"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(edges, want);
    let siblings: BTreeSet<(String, String)> = edges
        .into_iter()
        .filter(|(a, b)| a.starts_with("p::") && b.starts_with("p::"))
        .collect();
    assert_eq!(cycle(&siblings).unwrap(), ["p::a", "p::b", "p::a"]);
}

#[test]
fn the_import_graph_has_no_cycles() {
    let edges = graph();
    assert!(edges.len() > 100, "the graph was not read: {edges:?}");
    // Edges the reader must see: a plain path, one through a directory's re-exports and one
    // through the crate root's.
    for (a, b) in [
        ("pipeline::plan", "runner"),
        ("registry::base", "registry::client"),
        ("runner", "digest"),
    ] {
        let path = |m: &str| m.split("::").map(str::to_owned).collect::<Vec<_>>();
        assert!(edges.contains(&(path(a), path(b))), "no edge {a} -> {b}");
    }
    // Between top-level modules.
    // `lib.rs` (the root, the front door) is none of them.
    let top: BTreeSet<(String, String)> = edges
        .iter()
        .filter_map(|(a, b)| Some((a.first()?.clone(), b.first()?.clone())))
        .filter(|(a, b)| a != b)
        .collect();
    if std::env::var_os("KILN_GRAPH").is_some() {
        // `KILN_GRAPH=1 cargo test --test architecture -- --nocapture`: what imports what.
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in &top {
            by.entry(a).or_default().push(b);
        }
        for (a, bs) in by {
            eprintln!("{a} -> {}", bs.join(", "));
        }
    }
    if let Some(c) = cycle(&top) {
        panic!(
            "the top-level modules import each other: {}",
            c.join(" -> ")
        );
    }
    // Between the children of every module: edges between descendants of two different
    // children count as edges between those children. A module's own file (its `mod.rs`,
    // the front door its children may use) is not one of them.
    let parents: BTreeSet<Vec<String>> = edges
        .iter()
        .flat_map(|(a, b)| [a, b])
        .flat_map(|m| (1..m.len()).map(|n| m[..n].to_vec()))
        .collect();
    for p in &parents {
        let child =
            |m: &Vec<String>| (m.len() > p.len() && m.starts_with(p)).then(|| m[p.len()].clone());
        let siblings: BTreeSet<(String, String)> = edges
            .iter()
            .filter_map(|(a, b)| Some((child(a)?, child(b)?)))
            .filter(|(a, b)| a != b)
            .collect();
        if let Some(c) = cycle(&siblings) {
            panic!(
                "the modules of {} import each other: {}",
                p.join("::"),
                c.join(" -> ")
            );
        }
    }
}

/// Where the word may stand, and why.
fn github_allowed(rel: &str, line: &str) -> bool {
    // The forge itself, its declaration and its entry in the table of forge kinds.
    rel.starts_with("forge/github/")
        || (rel == "forge/mod.rs" && (line.trim() == "pub mod github;" || line.contains("&github::KIND")))
        // The config's GitHub section: `[github]`, `github = "owner/name"` and their checks.
        || rel.starts_with("daemon/config/")
        // The route that mounts the GitHub webhook.
        || (rel == "http/mod.rs" && line.contains(".route(\"/hooks/github\""))
        // Migrations are checksummed by the databases that ran them: never edited.
        || rel.starts_with("state/migrations/")
        // kiln's buildType URI: a name in every statement ever written, not a forge.
        || (rel == "attest/provenance.rs" && line.contains("pub const BUILD_TYPE"))
        // kiln's rebuild policy URI, likewise written into every verdict.
        || (rel == "attest/vsa.rs" && line.contains("pub const POLICY"))
        // kiln's SPDX document namespace, likewise written into every SBOM.
        || (rel == "sbom/spdx.rs" && line.contains("pub const NAMESPACE"))
}

/// The lines of `src/` (text files: Rust, SQL, the dashboard's assets) for which `hit` holds,
/// as `src/<path>:<line>: <text>`.
fn src_lines(hit: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for p in files(&src()) {
        let rel = p
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if hit(&rel, line) {
                found.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn github_is_named_only_behind_the_forge_seam() {
    let found = src_lines(|rel, line| {
        line.to_ascii_lowercase().contains("github") && !github_allowed(rel, line)
    });
    assert!(
        found.is_empty(),
        "GitHub outside its seam:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_docker_runner_stays_in_the_runner() {
    let found = src_lines(|rel, line| {
        !rel.starts_with("runner/") && (line.contains("DockerRunner") || line.contains("bollard"))
    });
    assert!(
        found.is_empty(),
        "Docker (DockerRunner, bollard) named outside runner/:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_function_is_allowed_too_many_arguments() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        if !root.join(dir).is_dir() {
            continue;
        }
        for p in files(&root.join(dir)) {
            if p.extension().is_none_or(|e| e != "rs") || p.ends_with("architecture.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // The lint by name, or a blanket allowance of its group.
            if [
                "too_many_arguments",
                "allow(clippy::complexity",
                "allow(clippy::all",
            ]
            .iter()
            .any(|w| text.contains(w))
            {
                found.push(p.display().to_string());
            }
        }
    }
    // Nor a crate-wide allowance or a raised limit.
    for file in ["Cargo.toml", "clippy.toml", ".clippy.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        if text.contains("too_many_arguments") || text.contains("too-many-arguments") {
            found.push(file.to_owned());
        }
    }
    assert!(
        found.is_empty(),
        "allowances of too_many_arguments: {found:?}"
    );
}
