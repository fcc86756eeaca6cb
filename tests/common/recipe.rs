//! Recipes and repositories the suites build: one builder for every `kiln.toml` a test
//! writes, and the hello example as a repository.

use std::path::Path;

/// The busybox builder image every test build runs in (made by [`super::builder_image`]).
pub const BUSYBOX: &str = "kiln-builder/busybox:latest";

pub const HELLO_SH: &[u8] = include_bytes!("../../examples/hello/hello.sh");
pub const HELLO_TOML: &[u8] = include_bytes!("../../examples/hello/kiln.toml");

/// A `kiln.toml`, built up: its steps, more keys of `[build]`, and what follows (the
/// `[[artifact]]` tables).
#[derive(Clone, Debug)]
pub struct Recipe {
    image: String,
    steps: Vec<String>,
    build: Vec<String>,
    after: Vec<String>,
}

impl Recipe {
    /// `steps` on the busybox builder, with no artifact yet.
    pub fn steps(steps: &[&str]) -> Recipe {
        Recipe {
            image: BUSYBOX.to_owned(),
            steps: steps.iter().map(|s| s.to_string()).collect(),
            build: Vec::new(),
            after: Vec::new(),
        }
    }

    /// On another builder image.
    pub fn image(mut self, image: &str) -> Recipe {
        self.image = image.to_owned();
        self
    }

    /// More of `[build]`: `timeout = "15m"`, `network = true`, ...
    pub fn build(mut self, lines: &str) -> Recipe {
        self.build.push(lines.trim_end().to_owned());
        self
    }

    /// TOML after `[build]`: an `[[artifact]]` table, as written.
    pub fn then(mut self, toml: &str) -> Recipe {
        self.after.push(toml.to_owned());
        self
    }

    /// A files artifact of the whole output.
    pub fn files(self, name: &str) -> Recipe {
        self.then(&format!(
            "[[artifact]]\nname = {name:?}\nkind = \"files\"\n"
        ))
    }

    /// An image artifact of the whole output.
    pub fn image_artifact(self, name: &str) -> Recipe {
        self.then(&format!("[[artifact]]\nname = {name:?}\n"))
    }

    pub fn bytes(&self) -> Vec<u8> {
        let steps: Vec<String> = self.steps.iter().map(|s| format!("  {s:?},")).collect();
        let mut text = format!(
            "[build]\nimage = {:?}\nsteps = [\n{}\n]\n",
            self.image,
            steps.join("\n")
        );
        for b in &self.build {
            text.push_str(b);
            text.push('\n');
        }
        for a in &self.after {
            text.push('\n');
            text.push_str(a);
        }
        text.into_bytes()
    }
}

/// The hello example's recipe as the daemon tests build it, with `first` as an extra first
/// step (say, a sleep) when it is not empty.
pub fn hello_recipe(first: &str) -> Vec<u8> {
    let mut steps: Vec<&str> = Vec::new();
    if !first.is_empty() {
        steps.push(first);
    }
    steps.extend([
        "mkdir -p /out/bin",
        "cp /bin/busybox /out/bin/busybox && ln -s busybox /out/bin/sh",
        "sed \"s/@EPOCH@/$SOURCE_DATE_EPOCH/\" hello.sh > /out/bin/hello && chmod 755 /out/bin/hello",
    ]);
    Recipe::steps(&steps)
        .build("timeout = \"5m\"")
        .then("[[artifact]]\nname = \"hello\"\nkind = \"image\"\nentrypoint = [\"/bin/hello\"]\n")
        .bytes()
}

/// The files of a hello project whose marker makes its commits unique to one test (so
/// leftover-container checks see only that test's builds).
fn hello_files(marker: &str, recipe: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello.sh", HELLO_SH.to_vec()),
        ("kiln.toml", recipe.to_vec()),
        ("marker.txt", marker.as_bytes().to_vec()),
    ]
}

/// A git repository at `dir` holding the hello project with `recipe`, its `origin` set to
/// `remote` when given; the commit's SHA. The busybox builder is made if missing.
pub fn hello_repo(dir: &Path, marker: &str, recipe: &[u8], remote: Option<&str>) -> String {
    super::builder_image("busybox");
    let files = hello_files(marker, recipe);
    super::git_repo(dir, &refs(&files), remote)
}

/// Files as `git_repo` takes them.
pub fn refs<'a>(files: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(p, c)| (*p, c.as_slice())).collect()
}

/// A repository at `t/name` holding `recipe` and a marker file named after it (so its commit
/// is its own); the busybox builder is made if missing.
pub fn recipe_repo(t: &Path, name: &str, recipe: &[u8]) -> std::path::PathBuf {
    super::builder_image("busybox");
    let dir = t.join(name);
    super::git_repo(
        &dir,
        &[("kiln.toml", recipe), ("marker", name.as_bytes())],
        None,
    );
    dir
}

/// Files of a hello project whose marker makes its commits unique to one test, with
/// `first_step` as an extra first step of its recipe (say, a sleep).
pub fn hello(marker: &str, first_step: &str) -> Vec<(&'static str, Vec<u8>)> {
    hello_files(marker, &hello_recipe(first_step))
}
