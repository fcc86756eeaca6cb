//! The recipe (`kiln.toml`): parsed and checked in one pass that reports every problem, each
//! with its line and key, before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::check::{Checker, type_name};
use crate::digest::Digest;

/// A checked recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub build: BuildSection,
    pub artifacts: Vec<Artifact>,
    /// sha256 of the recipe file's bytes, recorded in every artifact.
    pub digest: Digest,
}

/// `[build]`: how to run the build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildSection {
    /// The builder image reference, as given.
    pub image: String,
    /// Absolute path in the container where the source is copied and steps run.
    pub workdir: String,
    /// Shell commands, each run with `/bin/sh -c`, in order.
    pub steps: Vec<Step>,
    pub env: BTreeMap<String, String>,
    /// Absolute path in the container collected after the steps.
    pub output: String,
    /// Every step gets the network (where the host allows it).
    pub network: bool,
    /// `cache`: absolute paths in the container kept between builds of this repository on
    /// this host (where the caller enables caches), in the recipe's order.
    pub cache: Vec<String>,
    pub timeout: Duration,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
}

/// One build step: `"make"`, or `{ run = "cargo fetch --locked", network = true }`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// The shell command, run with `/bin/sh -c`.
    pub run: String,
    /// This step (only) gets the network, where the host allows it.
    pub network: bool,
}

impl BuildSection {
    /// Whether step `i` (0-based) runs with the network.
    pub fn step_network(&self, i: usize) -> bool {
        self.network || self.steps.get(i).is_some_and(|s| s.network)
    }

    /// Whether any step asks for the network.
    pub fn wants_network(&self) -> bool {
        self.network || self.steps.iter().any(|s| s.network)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A runnable OCI image.
    Image,
    /// A generic OCI artifact holding files.
    Files,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::Image => "image",
            ArtifactKind::Files => "files",
        })
    }
}

/// One `files` entry: `from` (relative to the output directory) goes to `to` in the artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    /// Normalized relative path; `.` for the whole output directory.
    pub from: String,
    /// Normalized absolute path.
    pub to: String,
}

/// `[[artifact]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub name: String,
    pub kind: ArtifactKind,
    /// `None` for scratch.
    pub base: Option<String>,
    pub files: Vec<FileMapping>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub artifact_type: Option<String>,
}

/// The default `artifactType` of a `files` artifact.
pub const DEFAULT_FILES_ARTIFACT_TYPE: &str = "application/vnd.kiln.files.v1";

/// Every problem found in a recipe, each with its line and key.
pub type RecipeError = crate::check::CheckError;

impl Recipe {
    /// Read and check a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let bytes = std::fs::read(path).map_err(|e| RecipeError::unreadable(path, &e))?;
        Recipe::parse(&bytes, path)
    }

    /// Check recipe bytes; `path` is only for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Recipe, RecipeError> {
        let digest = Digest::of(bytes);
        crate::check::check(bytes, path, |c, doc| c.recipe(doc, digest))
    }
}

impl Checker<'_> {
    fn abs_path(&mut self, value: Option<(String, usize)>, key: &str, default: &str) -> String {
        let Some((p, at)) = value else {
            return default.to_owned();
        };
        match normalize_abs(&p) {
            Some(n) if n != "/" => n,
            _ => {
                self.problem(
                    at,
                    key,
                    format!("{p:?} must be an absolute path other than / without .."),
                );
                default.to_owned()
            }
        }
    }

    fn recipe(&mut self, doc: &DeTable, digest: Digest) -> Option<Recipe> {
        self.unknown_keys(doc, "", &["build", "artifact"]);
        let build = match self.get(doc, "build") {
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => self.build(t, v.span().start),
                other => {
                    let t = type_name(other);
                    self.problem(
                        v.span().start,
                        "build",
                        format!("expected a [build] table, found {t}"),
                    );
                    None
                }
            },
            None => {
                self.problem(0, "build", "missing [build] section");
                None
            }
        };
        let mut artifacts = Vec::new();
        match self.get(doc, "artifact") {
            Some(v) => match v.get_ref() {
                DeValue::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(a) = self.artifact(t, i, item.span().start) {
                                    artifacts.push(a);
                                }
                            }
                            other => {
                                let t = type_name(other);
                                self.problem(
                                    item.span().start,
                                    &format!("artifact[{i}]"),
                                    format!("expected a table, found {t}"),
                                );
                            }
                        }
                    }
                }
                _ => self.problem(
                    v.span().start,
                    "artifact",
                    "expected one or more [[artifact]] tables",
                ),
            },
            None => self.problem(
                self.text.len(),
                "artifact",
                "missing: declare at least one [[artifact]]",
            ),
        }
        let mut seen = BTreeMap::new();
        for a in &artifacts {
            if seen.insert(a.name.clone(), ()).is_some() {
                self.problem(
                    0,
                    "artifact.name",
                    format!("{:?} is declared more than once", a.name),
                );
            }
        }
        Some(Recipe {
            build: build?,
            artifacts,
            digest,
        })
    }

    fn build(&mut self, t: &DeTable, at: usize) -> Option<BuildSection> {
        const KEYS: &[&str] = &[
            "image", "workdir", "steps", "env", "output", "network", "cache", "timeout", "memory",
            "cpus",
        ];
        self.unknown_keys(t, "build", KEYS);
        let image = self.string(t, "build", "image");
        if image.is_none() && self.get(t, "image").is_none() {
            self.problem(at, "build.image", "missing: the builder image is required");
        }
        if let Some((img, at)) = &image
            && img.trim().is_empty()
        {
            self.problem(*at, "build.image", "must not be empty");
        }
        let workdir = self.string(t, "build", "workdir");
        let workdir = self.abs_path(workdir, "build.workdir", "/src");
        let steps = self.steps(t);
        match &steps {
            None if self.get(t, "steps").is_none() => {
                self.problem(at, "build.steps", "missing: at least one step is required")
            }
            Some((s, at)) if s.is_empty() => {
                self.problem(*at, "build.steps", "must list at least one step")
            }
            _ => {}
        }
        let env = self.string_table(t, "build", "env", true);
        let output = self.string(t, "build", "output");
        let output = self.abs_path(output, "build.output", "/out");
        let network = self.bool(t, "build", "network").unwrap_or(false);
        let cache = self.cache(t, &workdir, &output);
        let timeout = match self.string(t, "build", "timeout") {
            None => Duration::from_secs(3600),
            Some((s, at)) => parse_duration(&s).unwrap_or_else(|| {
                self.problem(at, "build.timeout", format!("invalid duration {s:?}: use a positive number with s, m or h, like \"90s\", \"20m\" or \"1h30m\""));
                Duration::from_secs(3600)
            }),
        };
        let memory = self.get(t, "memory").and_then(|v| {
            let parsed = match v.get_ref() {
                DeValue::String(s) => parse_size(s),
                DeValue::Integer(i) => i.as_str().parse::<u64>().ok().filter(|_| i.radix() == 10),
                _ => None,
            };
            match parsed {
                Some(n) if n >= 6 * 1024 * 1024 => Some(n),
                _ => {
                    self.problem(
                        v.span().start,
                        "build.memory",
                        "expected a size of at least 6m, like \"512m\" or \"4g\"",
                    );
                    None
                }
            }
        });
        let cpus = self.get(t, "cpus").and_then(|v| {
            let parsed = match v.get_ref() {
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
                _ => None,
            };
            match parsed {
                Some(n) if n > 0.0 && n.is_finite() => Some(n),
                _ => {
                    self.problem(
                        v.span().start,
                        "build.cpus",
                        "expected a positive number of CPUs, like 2 or 1.5",
                    );
                    None
                }
            }
        });
        Some(BuildSection {
            image: image?.0,
            workdir,
            steps: steps?.0,
            env,
            output,
            network,
            cache,
            timeout,
            memory,
            cpus,
        })
    }

    /// `steps`: strings, or tables `{ run = "...", network = true }`.
    fn steps(&mut self, t: &DeTable) -> Option<(Vec<Step>, usize)> {
        let v = self.get(t, "steps")?;
        let DeValue::Array(items) = v.get_ref() else {
            let found = type_name(v.get_ref());
            self.problem(
                v.span().start,
                "build.steps",
                format!("expected an array of steps (strings or {{ run, network }} tables), found {found}"),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("build.steps[{i}]");
            match item.get_ref() {
                DeValue::String(s) => out.push(Step {
                    run: s.to_string(),
                    network: false,
                }),
                DeValue::Table(st) => {
                    self.unknown_keys(st, &key, &["run", "network"]);
                    let network = self.bool(st, &key, "network").unwrap_or(false);
                    match self.string(st, &key, "run") {
                        Some((run, _)) if !run.trim().is_empty() => out.push(Step { run, network }),
                        Some((_, at)) => {
                            self.problem(at, &format!("{key}.run"), "must not be empty")
                        }
                        None if self.get(st, "run").is_none() => self.problem(
                            item.span().start,
                            &format!("{key}.run"),
                            "missing: a step table needs the command to run",
                        ),
                        None => {}
                    }
                }
                other => {
                    let found = type_name(other);
                    self.problem(
                        item.span().start,
                        &key,
                        format!("expected a string or a {{ run, network }} table, found {found}"),
                    );
                }
            }
        }
        Some((out, v.span().start))
    }

    /// `cache`: absolute paths, not `/`, not overlapping the output, the workdir's parents,
    /// or each other.
    fn cache(&mut self, t: &DeTable, workdir: &str, output: &str) -> Vec<String> {
        let Some((paths, at)) = self.strings(t, "build", "cache") else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let key = format!("build.cache[{i}]");
            let Some(n) = normalize_abs(p) else {
                self.problem(
                    at,
                    &key,
                    format!("{p:?} must be an absolute path without .."),
                );
                continue;
            };
            let why = if n == "/" {
                Some("must not be / (the whole container)".to_owned())
            } else if overlaps(&n, output) {
                Some(format!(
                    "overlaps the output directory {output}: a cache must never be collected as output"
                ))
            } else if under(workdir, &n) {
                Some(format!(
                    "holds the workdir {workdir}: the source would mix with what earlier builds left"
                ))
            } else {
                out.iter()
                    .find(|o| overlaps(o, &n))
                    .map(|o| format!("overlaps the cache path {o}"))
            };
            match why {
                Some(why) => self.problem(at, &key, format!("{p:?} {why}")),
                None => out.push(n),
            }
        }
        out
    }

    fn artifact(&mut self, t: &DeTable, i: usize, at: usize) -> Option<Artifact> {
        let p = format!("artifact[{i}]");
        const KEYS: &[&str] = &[
            "name",
            "kind",
            "base",
            "files",
            "entrypoint",
            "cmd",
            "env",
            "user",
            "workdir",
            "labels",
            "artifact_type",
        ];
        self.unknown_keys(t, &p, KEYS);
        let name = self.string(t, &p, "name");
        match &name {
            None if self.get(t, "name").is_none() => self.problem(
                at,
                &format!("{p}.name"),
                "missing: every artifact needs a name",
            ),
            Some((n, a)) if !valid_name(n) => self.problem(
                *a,
                &format!("{p}.name"),
                format!("invalid name {n:?}: use [a-z0-9][a-z0-9._-]*"),
            ),
            _ => {}
        }
        let kind = match self.string(t, &p, "kind") {
            None => ArtifactKind::Image,
            Some((k, a)) => match k.as_str() {
                "image" => ArtifactKind::Image,
                "files" => ArtifactKind::Files,
                other => {
                    self.problem(
                        a,
                        &format!("{p}.kind"),
                        format!("unknown kind {other:?}: expected \"image\" or \"files\""),
                    );
                    ArtifactKind::Image
                }
            },
        };
        let base = match self.string(t, &p, "base") {
            None => None,
            Some((b, _)) if b == "scratch" => None,
            Some((b, a)) => match b.parse::<crate::reference::Reference>() {
                Ok(_) => Some(b),
                Err(e) => {
                    self.problem(a, &format!("{p}.base"), e.to_string());
                    None
                }
            },
        };
        let files = self.files(t, &p);
        let entrypoint = self.strings(t, &p, "entrypoint").map(|v| v.0);
        let cmd = self.strings(t, &p, "cmd").map(|v| v.0);
        let env = self.string_table(t, &p, "env", true);
        let user = self.string(t, &p, "user").map(|v| v.0);
        let workdir = self.string(t, &p, "workdir").map(|(w, a)| {
            normalize_abs(&w).unwrap_or_else(|| {
                self.problem(
                    a,
                    &format!("{p}.workdir"),
                    format!("{w:?} must be an absolute path without .."),
                );
                w
            })
        });
        let labels = self.string_table(t, &p, "labels", false);
        let artifact_type = self.string(t, &p, "artifact_type");
        if kind == ArtifactKind::Files {
            for key in [
                "base",
                "entrypoint",
                "cmd",
                "env",
                "user",
                "workdir",
                "labels",
            ] {
                if let Some(v) = self.get(t, key) {
                    self.problem(
                        v.span().start,
                        &format!("{p}.{key}"),
                        "only applies to kind = \"image\"",
                    );
                }
            }
        }
        let artifact_type = match (kind, artifact_type) {
            (ArtifactKind::Image, Some((_, a))) => {
                self.problem(
                    a,
                    &format!("{p}.artifact_type"),
                    "only applies to kind = \"files\"",
                );
                None
            }
            (ArtifactKind::Files, Some((m, a))) => {
                if !valid_media_type(&m) {
                    self.problem(
                        a,
                        &format!("{p}.artifact_type"),
                        format!("{m:?} is not a media type like application/vnd.acme.app.v1"),
                    );
                }
                Some(m)
            }
            (ArtifactKind::Files, None) => Some(DEFAULT_FILES_ARTIFACT_TYPE.to_owned()),
            (ArtifactKind::Image, None) => None,
        };
        Some(Artifact {
            name: name?.0,
            kind,
            base,
            files,
            entrypoint,
            cmd,
            env,
            user,
            workdir,
            labels,
            artifact_type,
        })
    }

    fn files(&mut self, t: &DeTable, p: &str) -> Vec<FileMapping> {
        let whole = vec![FileMapping {
            from: ".".into(),
            to: "/".into(),
        }];
        let Some(v) = self.get(t, "files") else {
            return whole;
        };
        let key = format!("{p}.files");
        let DeValue::Array(items) = v.get_ref() else {
            self.problem(
                v.span().start,
                &key,
                "expected an array of { from, to } tables",
            );
            return whole;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ik = format!("{key}[{i}]");
            let DeValue::Table(m) = item.get_ref() else {
                self.problem(
                    item.span().start,
                    &ik,
                    "expected a { from = ..., to = ... } table",
                );
                continue;
            };
            self.unknown_keys(m, &ik, &["from", "to"]);
            let from = self.string(m, &ik, "from");
            let to = self.string(m, &ik, "to");
            let (Some((from, fa)), Some((to, ta))) = (from, to) else {
                self.problem(item.span().start, &ik, "needs both from and to");
                continue;
            };
            let Some(from_n) = normalize_rel(&from) else {
                self.problem(fa, &format!("{ik}.from"), format!("{from:?} leaves the output directory: use a path relative to it, without .."));
                continue;
            };
            let Some(to_n) = normalize_abs(&to) else {
                self.problem(
                    ta,
                    &format!("{ik}.to"),
                    format!("{to:?} must be an absolute path without .."),
                );
                continue;
            };
            out.push(FileMapping {
                from: from_n,
                to: to_n,
            });
        }
        if out.is_empty() && items.is_empty() {
            self.problem(
                v.span().start,
                &key,
                "must list at least one { from, to } mapping (or be left out)",
            );
        }
        out
    }
}

/// `[a-z0-9][a-z0-9._-]*`: a valid registry repository component.
pub fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
        && n.len() <= 128
}

fn valid_media_type(m: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    matches!(m.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// Whether `path` is `dir` or below it (both normalized absolute paths).
fn under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether one of two normalized absolute paths holds the other.
fn overlaps(a: &str, b: &str) -> bool {
    under(a, b) || under(b, a)
}

/// `/a/./b/` -> `/a/b`; `None` if relative or if `..` is used.
pub fn normalize_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// `./a/b/` -> `a/b`, `.` -> `.`; `None` if absolute or if it climbs out with `..`.
pub fn normalize_rel(p: &str) -> Option<String> {
    if p.starts_with('/') || p.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// `"90s"`, `"20m"`, `"1h30m"`: a positive duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            let mult = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return None,
            };
            total = total.checked_add(n.checked_mul(mult)?)?;
            any = true;
        }
    }
    (num.is_empty() && any && total > 0).then(|| Duration::from_secs(total))
}

/// `"512m"`, `"4g"`, `"1048576"` (bytes), `"64k"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(s.as_bytes(), Path::new("kiln.toml"))
    }

    const FULL: &str = r#"
[build]
image = "golang:1.23@sha256:0000000000000000000000000000000000000000000000000000000000000000"
workdir = "/src/"
steps = ["go build -o /out/app ./cmd/app"]
env = { CGO_ENABLED = "0" }
output = "/out"
network = false
timeout = "30m"
memory = "4g"
cpus = 2.0

[[artifact]]
name = "app"
kind = "image"
base = "scratch"
files = [{ from = "./bin", to = "/usr/local/bin/" }]
entrypoint = ["/usr/local/bin/app"]
env = { MODE = "prod" }
labels = { team = "infra" }

[[artifact]]
name = "docs"
kind = "files"
artifact_type = "application/vnd.acme.docs.v1"
"#;

    #[test]
    fn full_recipe_parses_with_normalized_values() {
        let r = parse(FULL).unwrap();
        assert_eq!(r.build.workdir, "/src");
        assert_eq!(r.build.timeout, Duration::from_secs(1800));
        assert_eq!(r.build.memory, Some(4 << 30));
        assert_eq!(r.build.cpus, Some(2.0));
        assert_eq!(
            r.artifacts[0].files,
            vec![FileMapping {
                from: "bin".into(),
                to: "/usr/local/bin".into()
            }]
        );
        assert_eq!(r.artifacts[1].kind, ArtifactKind::Files);
        assert_eq!(
            r.artifacts[1].files,
            vec![FileMapping {
                from: ".".into(),
                to: "/".into()
            }]
        );
        assert_eq!(
            r.artifacts[1].artifact_type.as_deref(),
            Some("application/vnd.acme.docs.v1")
        );
        assert_eq!(r.digest, Digest::of(FULL.as_bytes()));
    }

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = parse("[build]\nimage = \"b\"\nsteps = [\"true\"]\n[[artifact]]\nname = \"a\"\n")
            .unwrap();
        assert_eq!(
            (r.build.workdir.as_str(), r.build.output.as_str()),
            ("/src", "/out")
        );
        assert!(!r.build.network);
        assert_eq!(r.build.timeout, Duration::from_secs(3600));
        assert_eq!(r.artifacts[0].kind, ArtifactKind::Image);
    }

    #[test]
    fn steps_may_be_tables_that_ask_for_the_network() {
        let r = parse(
            "[build]\nimage = \"b\"\nsteps = [{ run = \"cargo fetch --locked\", network = true }, \"make\", { run = \"test\" }]\n[[artifact]]\nname = \"a\"\n",
        )
        .unwrap();
        let s = &r.build.steps;
        assert_eq!(
            (s[0].run.as_str(), s[0].network),
            ("cargo fetch --locked", true)
        );
        assert_eq!((s[1].run.as_str(), s[1].network), ("make", false));
        assert_eq!((s[2].run.as_str(), s[2].network), ("test", false));
        assert!(r.build.wants_network() && !r.build.network);
        assert!(r.build.step_network(0) && !r.build.step_network(1));
        let e = parse(
            "[build]\nimage = \"b\"\nsteps = [{ network = true }, { run = \"x\", net = 1 }, 5]\n[[artifact]]\nname = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "build.steps[0].run: missing",
            "build.steps[1].net: unknown key",
            "build.steps[2]: expected a string or a { run, network } table, found an integer",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
    }

    #[test]
    fn cache_paths_are_absolute_and_keep_clear_of_output_and_source() {
        let ok = parse("[build]\nimage = \"b\"\nsteps = [\"x\"]\ncache = [\"/root/.cargo/registry/\", \"/src/target\"]\n[[artifact]]\nname = \"a\"\n").unwrap();
        assert_eq!(ok.build.cache, ["/root/.cargo/registry", "/src/target"]);
        let e = parse("[build]\nimage = \"b\"\nsteps = [\"x\"]\ncache = [\"/\", \"rel\", \"/out/c\", \"/\", \"/src\", \"/a\", \"/a/b\", \"/o\"]\n[[artifact]]\nname = \"a\"\n").unwrap_err().to_string();
        for want in [
            "build.cache[0]: \"/\" must not be /",
            "build.cache[1]: \"rel\" must be an absolute path",
            "build.cache[2]: \"/out/c\" overlaps the output directory /out",
            "build.cache[4]: \"/src\" holds the workdir /src",
            "build.cache[6]: \"/a/b\" overlaps the cache path /a",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
        assert!(!e.contains("build.cache[7]"), "{e}");
        assert!(under("/a/b", "/a") && !under("/ab", "/a") && overlaps("/a", "/a/b"));
    }

    #[test]
    fn every_problem_is_reported_with_line_and_key() {
        let bad = r#"[build]
image = 5
steps = ["make"]
timeout = "10 minutes"
colour = "blue"
env = { SOURCE_DATE_EPOCH = "1" }

[[artifact]]
name = "App!"
files = [{ from = "../etc", to = "/" }]

[[artifact]]
name = "x"
kind = "files"
entrypoint = ["/x"]
"#;
        let err = parse(bad).unwrap_err();
        let got: Vec<(usize, &str)> = err
            .problems
            .iter()
            .map(|p| (p.line, p.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "build.image"),
                (4, "build.timeout"),
                (5, "build.colour"),
                (6, "build.env.SOURCE_DATE_EPOCH"),
                (9, "artifact[0].name"),
                (10, "artifact[0].files[0].from"),
                (15, "artifact[1].entrypoint"),
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("kiln.toml:5: build.colour: unknown key"),
            "{text}"
        );
        assert!(text.contains("leaves the output directory"), "{text}");
    }

    #[test]
    fn missing_pieces_and_syntax_errors() {
        let err = parse("[build]\nsteps = []\n").unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["build.image", "build.steps", "artifact"], "{err}");
        let err = parse("[build\nimage = 1").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].line, 1);
    }

    #[test]
    fn durations_sizes_paths() {
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        for bad in ["", "0s", "5", "1x", "m", "-1s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("4gb"), Some(4 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(normalize_rel("a/../b"), Some("b".into()));
        assert_eq!(normalize_rel("a/../../b"), None);
        assert_eq!(normalize_rel("/etc"), None);
        assert_eq!(normalize_abs("/a/./b/"), Some("/a/b".into()));
        assert_eq!(normalize_abs("/a/../b"), None);
        assert!(
            valid_name("app-1.2_x") && !valid_name("App") && !valid_name("-a") && !valid_name("")
        );
    }
}
