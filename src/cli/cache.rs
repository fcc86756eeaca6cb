//! `kiln cache list` and `kiln cache prune`: the build caches of this host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{EXIT_CONFIG, runtime};
use kiln::runner::cache::{CacheMetrics, Caches};

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// List the build caches: repository, path, size, last use, and whether a build holds one.
    List {
        #[command(flatten)]
        at: CacheAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove build caches no build holds: every one (--all) or one repository's (--repo).
    Prune {
        #[command(flatten)]
        at: CacheAt,
        /// Remove every cache not in use.
        #[arg(long, conflicts_with = "repo", required_unless_present = "repo")]
        all: bool,
        /// Remove this repository's caches (as `kiln cache list` names it).
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
    },
}

/// Whose caches: the daemon's (its config's `state_dir/cache`), or, with `--cache-dir`, those
/// of `kiln build --cache`.
#[derive(clap::Args)]
pub struct CacheAt {
    /// The daemon config whose caches these are (`state_dir/cache`, budget `[limits] cache`).
    #[arg(long, value_name = "FILE", default_value = kiln::daemon::config::DEFAULT_PATH, conflicts_with = "cache_dir")]
    pub config: PathBuf,
    /// Instead, the cache directory of `kiln build --cache` (its default is
    /// $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// The user's default cache directory for `kiln build --cache`.
pub fn default_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither $XDG_CACHE_HOME nor $HOME is set: pass --cache-dir")?;
    Ok(PathBuf::from(home).join(".cache").join("kiln"))
}

/// The caches in `dir` (or the default), with the default budget.
pub fn open_dir(dir: Option<&PathBuf>) -> Result<Caches> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    Ok(Caches::open(
        &dir.join("cache"),
        kiln::runner::cache::DEFAULT_BUDGET,
        Arc::new(CacheMetrics::default()),
    )?)
}

fn open(at: &CacheAt) -> Result<std::result::Result<Caches, ExitCode>> {
    match &at.cache_dir {
        None => {
            let path = &at.config;
            let config = match kiln::daemon::config::Config::load(path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kiln: error: {e}");
                    return Ok(Err(ExitCode::from(EXIT_CONFIG)));
                }
            };
            Ok(Ok(Caches::open(
                &config.state_dir.join("cache"),
                config.cache_budget,
                Arc::new(CacheMetrics::default()),
            )?))
        }
        Some(dir) => Ok(Ok(open_dir(Some(dir))?)),
    }
}

pub fn cache(c: CacheCommand) -> Result<ExitCode> {
    match c {
        CacheCommand::List { at, json } => {
            let caches = match open(&at)? {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let listed = caches.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(ExitCode::SUCCESS);
            }
            let total: u64 = listed.iter().map(|l| l.record.bytes).sum();
            println!(
                "{} cache{} in {}: {} of a budget of {}",
                listed.len(),
                if listed.len() == 1 { "" } else { "s" },
                caches.dir().display(),
                super::progress::human(total),
                super::progress::human(caches.budget())
            );
            for l in &listed {
                let r = &l.record;
                println!(
                    "{}  {:>10}  {}  {}  {}  last used {}{}",
                    &r.id[..19],
                    super::progress::human(r.bytes),
                    r.key.repo,
                    r.key.path,
                    r.key.recipe,
                    kiln::image::rfc3339(r.last_used).unwrap_or_default(),
                    match (l.busy, r.state) {
                        (true, _) => "  (in use)".to_owned(),
                        (false, kiln::runner::cache::State::InUse) =>
                            "  (damaged: discarded at next use)".to_owned(),
                        _ => String::new(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { at, all, repo } => {
            let caches = match open(&at)? {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = runtime()?;
            rt.block_on(async move {
                let runner = kiln::runner::connect().await?;
                let removed = caches
                    .prune(runner.as_ref(), |r| {
                        all || repo.as_deref() == Some(&r.key.repo)
                    })
                    .await?;
                let freed: u64 = removed.iter().map(|r| r.bytes).sum();
                for r in &removed {
                    eprintln!(
                        "removed {} ({} {}, {})",
                        r.volume,
                        r.key.repo,
                        r.key.path,
                        super::progress::human(r.bytes)
                    );
                }
                eprintln!(
                    "{} cache{} removed, {} freed",
                    removed.len(),
                    if removed.len() == 1 { "" } else { "s" },
                    super::progress::human(freed)
                );
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}
