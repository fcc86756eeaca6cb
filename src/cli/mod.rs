//! The command line: the arguments, one file per subcommand, and the progress display. It
//! parses, calls the library, prints and picks the exit code; nothing else.

mod build;
mod cache;
mod daemon;
mod inspect;
mod key;
mod pack;
mod progress;
mod push;
mod recipe;
mod sbom;
mod trust;
mod validate;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use progress::{Progress, human};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Reproducible builds packed into deterministic OCI images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a directory into a single-layer image in a local OCI layout, deterministically.
    Pack(pack::PackArgs),
    /// Build a project's recipe in a container and store its artifacts in a local OCI layout.
    Build(Box<build::BuildArgs>),
    /// Push an image or artifact from a local OCI layout to a registry.
    Push(push::PushArgs),
    /// Show what a pushed artifact records: source, revision, created, base, recipe, provenance.
    Inspect(inspect::InspectArgs),
    /// Print what an artifact holds: its SBOM (SPDX 2.3 JSON, or CycloneDX 1.5 JSON).
    Sbom(sbom::SbomArgs),
    /// Recipe tools.
    #[command(subcommand)]
    Recipe(recipe::RecipeCommand),
    /// Check every blob, digest, size and diff_id in a local OCI layout.
    Validate {
        /// The OCI image layout directory.
        layout: PathBuf,
    },
    /// Run the build daemon: watch repositories, build each new commit once, publish, report.
    Daemon(daemon::DaemonArgs),
    /// Rebuild a pushed artifact from its provenance alone and compare, byte for byte.
    /// Exit 0: identical; 1: different (the paths are listed); 2: it could not be verified.
    Verify(verify::VerifyArgs),
    /// Decide, without rebuilding, whether an artifact's signed attestations satisfy a
    /// deployment's policy. Exit 0: trusted; 1: not (why, one line per reason); 2: undecided.
    Trust(trust::TrustArgs),
    /// Signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// This host's build caches: list them, prune them.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// What this host allows a build; a recipe may ask for less, never more.
#[derive(clap::Args, Clone)]
pub struct LimitArgs {
    /// Honour a recipe's `network = true` (builds are offline otherwise; such a recipe fails).
    #[arg(long)]
    pub allow_network: bool,
    /// Memory for the build container, like 4g (default: half the host's memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub limit_memory: Option<u64>,
    /// CPUs for the build container (default: the host's count).
    #[arg(long, value_name = "N")]
    pub limit_cpus: Option<f64>,
    /// Processes and threads in the build container (default: 4096).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<i64>,
    /// Bytes of output collected from the build, like 10g (default: 10 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub limit_output: Option<u64>,
    /// Bytes of step output kept in the build log, like 64m (default: 64 MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub limit_log: Option<u64>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    kiln::recipe::parse_size(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size, like 512m or 4g"))
}

impl LimitArgs {
    fn limits(&self) -> Result<kiln::runner::Limits> {
        let mut l = kiln::runner::Limits::host_defaults();
        l.allow_network = self.allow_network;
        if let Some(m) = self.limit_memory {
            if m < 6 << 20 {
                bail!("--limit-memory must be at least 6m");
            }
            l.memory = m;
        }
        if let Some(c) = self.limit_cpus {
            if !(c > 0.0 && c.is_finite()) {
                bail!("--limit-cpus must be a positive number");
            }
            l.cpus = c;
        }
        if let Some(p) = self.limit_pids {
            if p < 1 {
                bail!("--limit-pids must be at least 1");
            }
            l.pids = p;
        }
        if let Some(o) = self.limit_output {
            l.output = o;
        }
        if let Some(g) = self.limit_log {
            l.log = g;
        }
        Ok(l)
    }
}

/// How to reach registries.
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// An extra CA certificate (PEM) to trust for the registry, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
    /// Use plain HTTP (allowed without this only for loopback registries).
    #[arg(long)]
    pub insecure: bool,
    /// Keep retrying a registry that fails or cannot be reached for this long, like 2m
    /// (default: give up on an unreachable registry after a few seconds, on failing requests
    /// after two minutes).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub retry_for: Option<std::time::Duration>,
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    kiln::recipe::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration, like 30s, 2m or 1h"))
}

impl RegistryArgs {
    fn options(&self) -> kiln::registry::RegistryOptions {
        kiln::registry::RegistryOptions {
            ca_file: self.registry_ca.clone(),
            insecure: self.insecure,
            retry: Some(kiln::registry::RetryPolicy::interactive(self.retry_for)),
        }
    }
}

/// An error and its causes, each said once: a cause whose text the message already holds is
/// not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// A token cancelled on Ctrl-C or SIGTERM (saying `what` is being stopped), and whether that
/// happened. Call inside the runtime.
fn cancel_on_signals(what: &'static str) -> (CancellationToken, Arc<AtomicBool>) {
    let cancel = CancellationToken::new();
    let interrupted = Arc::new(AtomicBool::new(false));
    let (c, i) = (cancel.clone(), interrupted.clone());
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        i.store(true, Ordering::SeqCst);
        eprintln!("kiln: interrupted; {what}");
        c.cancel();
    });
    (cancel, interrupted)
}

/// Exit status after Ctrl-C, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;
/// Exit status for a config that does not check.
const EXIT_CONFIG: u8 = 2;
/// `kiln verify`: the rebuild differs.
const EXIT_DIFFERENT: u8 = 1;
/// `kiln verify`: it could not be verified (no provenance, no source, another builder, ...).
const EXIT_UNVERIFIABLE: u8 = 2;

/// A multi-threaded runtime for one command.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon tells what it does at info; one-shot commands only warn.
    let default = match cli.command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Pack(a) => pack::pack(a).map(|()| ExitCode::SUCCESS),
        Command::Build(a) => build::build(*a),
        Command::Push(a) => push::push(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Sbom(a) => sbom::sbom(a),
        Command::Recipe(c) => recipe::recipe(c),
        Command::Daemon(a) => daemon::daemon(a),
        Command::Verify(a) => verify::verify(a),
        Command::Trust(a) => trust::trust(a),
        Command::Key(c) => key::key(c),
        Command::Cache(c) => cache::cache(c),
        Command::Validate { layout } => validate::validate(&layout),
    }
}

fn epoch_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a non-negative integer of seconds")
        }),
        _ => Ok(0),
    }
}
