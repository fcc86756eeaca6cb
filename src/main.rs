//! The `kiln` command: parses arguments and composes library stages. No logic lives here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kiln::events::Event;
use kiln::image::{ImageSpec, Platform, RunConfig};
use kiln::pack::{Compression, PackOptions};
use kiln::store::{ContentStore, OciLayout};

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
    Pack(PackArgs),
    /// Build a project's recipe in a container and store its artifacts in a local OCI layout.
    Build(BuildArgs),
    /// Push an image or artifact from a local OCI layout to a registry.
    Push(PushArgs),
    /// Show what a pushed artifact records: source, revision, created, base, recipe, provenance.
    Inspect(InspectArgs),
    /// Recipe tools.
    #[command(subcommand)]
    Recipe(RecipeCommand),
    /// Check every blob, digest, size and diff_id in a local OCI layout.
    Validate {
        /// The OCI image layout directory.
        layout: PathBuf,
    },
    /// Run the build daemon: watch repositories, build each new commit once, publish, report.
    Daemon(DaemonArgs),
    /// Rebuild a pushed artifact from its provenance alone and compare, byte for byte.
    /// Exit 0: identical; 1: different (the paths are listed); 2: it could not be verified.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// host[:port]/repository[:tag|@digest]
    #[arg(value_name = "REF")]
    reference: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Keep both unpacked trees in DIR/expected and DIR/rebuilt.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Honour the recipe's `network = true` in the rebuild.
    #[arg(long)]
    allow_network: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon config.
    #[arg(long, value_name = "FILE", default_value = kiln::daemon::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the config and exit: every problem, with its line.
    #[arg(long)]
    check: bool,
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Check a recipe without building: every problem, with its line.
    Check {
        /// The recipe file, or a directory holding kiln.toml.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The project directory: a git work tree (its committed HEAD is built) or a plain directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Use this recipe instead of the committed DIR/kiln.toml.
    #[arg(long, value_name = "FILE")]
    recipe: Option<PathBuf>,
    /// The OCI image layout to write (created if missing).
    #[arg(long, short)]
    output: PathBuf,
    /// Print one JSON document describing the result on stdout.
    #[arg(long)]
    json: bool,
    /// Load image artifacts into the local Docker engine as kiln/<name>:<short sha>.
    #[arg(long)]
    load: bool,
    /// Build a git tree with uncommitted changes to tracked files (the result is marked dirty).
    #[arg(long)]
    allow_dirty: bool,
    /// Timestamp for a plain directory (git trees use the commit time). Defaults to
    /// $SOURCE_DATE_EPOCH for plain directories.
    #[arg(long, value_name = "SECS")]
    source_date_epoch: Option<u64>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    compression: String,
    /// Push each artifact to PREFIX/<artifact name>, tagged with the full commit SHA.
    #[arg(long, value_name = "PREFIX")]
    push: Option<String>,
    /// An extra tag for --push (repeatable).
    #[arg(long = "tag", value_name = "TAG", requires = "push")]
    tags: Vec<String>,
    /// This build host's identity in provenance. Defaults to $KILN_BUILDER_ID, else
    /// kiln://<hostname>.
    #[arg(long, value_name = "URI")]
    builder_id: Option<String>,
    /// Build twice, in two fresh containers, and compare before storing or pushing anything:
    /// a difference fails the build with the paths that differ.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// host[:port]/repository[:tag|@digest]
    #[arg(value_name = "REF")]
    reference: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// What this host allows a build; a recipe may ask for less, never more.
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Honour a recipe's `network = true` (builds are offline otherwise; such a recipe fails).
    #[arg(long)]
    allow_network: bool,
    /// Memory for the build container, like 4g (default: half the host's memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    limit_memory: Option<u64>,
    /// CPUs for the build container (default: the host's count).
    #[arg(long, value_name = "N")]
    limit_cpus: Option<f64>,
    /// Processes and threads in the build container (default: 4096).
    #[arg(long, value_name = "N")]
    limit_pids: Option<i64>,
    /// Bytes of output collected from the build, like 10g (default: 10 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    limit_output: Option<u64>,
    /// Bytes of step output kept in the build log, like 64m (default: 64 MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    limit_log: Option<u64>,
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
struct RegistryArgs {
    /// An extra CA certificate (PEM) to trust for the registry, besides the system roots.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
    /// Use plain HTTP (allowed without this only for loopback registries).
    #[arg(long)]
    insecure: bool,
    /// Keep retrying a registry that fails or cannot be reached for this long, like 2m
    /// (default: give up on an unreachable registry after a few seconds, on failing requests
    /// after two minutes).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    retry_for: Option<std::time::Duration>,
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

#[derive(clap::Args)]
struct PushArgs {
    /// The local layout, with the tag to push if it holds more than one image.
    #[arg(value_name = "LAYOUT[:TAG]")]
    source: String,
    /// Where to push: host[:port]/repository[:tag]. Without a tag, the layout's tag is used.
    #[arg(value_name = "REF")]
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
struct PackArgs {
    /// The directory whose contents become the layer's `/`.
    dir: PathBuf,
    /// The OCI image layout to write (created if missing).
    #[arg(long, short)]
    output: PathBuf,
    /// Tag the image in the layout (moves the tag if it exists).
    #[arg(long)]
    tag: Option<String>,
    /// Timestamp for every entry and the image's `created`, in seconds since 1970 UTC.
    /// Defaults to $SOURCE_DATE_EPOCH, else 0.
    #[arg(long, value_name = "SECS")]
    source_date_epoch: Option<u64>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    compression: String,
    /// The image's platform, os/arch[/variant]. Defaults to the host's.
    #[arg(long)]
    platform: Option<String>,
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

/// Exit status after Ctrl-C, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

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

fn main() -> ExitCode {
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
        Command::Pack(a) => pack(a).map(|()| ExitCode::SUCCESS),
        Command::Build(a) => build(a),
        Command::Push(a) => push(a),
        Command::Inspect(a) => inspect(a),
        Command::Recipe(RecipeCommand::Check { path }) => {
            let file = if path.is_dir() {
                path.join("kiln.toml")
            } else {
                path
            };
            let r = kiln::recipe::Recipe::load(&file)?;
            eprintln!(
                "{}: ok ({} step{}, artifacts: {})",
                file.display(),
                r.build.steps.len(),
                if r.build.steps.len() == 1 { "" } else { "s" },
                r.artifacts
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(a) => daemon(a),
        Command::Verify(a) => verify(a),
        Command::Validate { layout } => {
            let r = kiln::validate::validate_layout(&layout)?;
            eprintln!(
                "ok: {} manifests, {} layers, {} blobs",
                r.manifests, r.layers, r.blobs
            );
            Ok(ExitCode::SUCCESS)
        }
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

fn pack(a: PackArgs) -> Result<()> {
    let epoch = match a.source_date_epoch {
        Some(e) => e,
        None => epoch_from_env()?,
    };
    let compression: Compression = a.compression.parse().map_err(anyhow::Error::msg)?;
    let platform = match &a.platform {
        Some(p) => p.parse().map_err(anyhow::Error::msg)?,
        None => Platform::host(),
    };
    if let Some(t) = &a.tag {
        kiln::store::validate_tag(t)?;
    }
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let layout = OciLayout::open_or_create(&a.output)?;
    let mut opts = PackOptions::new(epoch);
    opts.compression = compression;
    let started = Instant::now();
    let progress = |e: &Event| match e {
        Event::PackScanned { entries, bytes } => {
            eprintln!(
                "packing {} ({entries} entries, {})",
                a.dir.display(),
                human(*bytes)
            )
        }
        Event::LayerWritten { digest, size, .. } => eprintln!("layer {digest} ({})", human(*size)),
        _ => {}
    };
    let cancel = CancellationToken::new();
    let layer = kiln::pack::pack_dir(&a.dir, &opts, &layout, &cancel, &progress)
        .with_context(|| format!("packing {}", a.dir.display()))?;
    let spec = ImageSpec {
        platform,
        epoch,
        run: RunConfig::default(),
        annotations: BTreeMap::new(),
        base: None,
        created_by: format!(
            "kiln pack ({})",
            compression.describe(opts.level.unwrap_or(compression.default_level()))
        ),
    };
    let manifest = kiln::image::write_image(&layout, std::slice::from_ref(&layer), &spec)?;
    layout.tag(a.tag.as_deref(), &manifest)?;
    eprintln!(
        "packed {} entries, {} -> {} ({compression}) in {:.2}s",
        layer.entries,
        human(layer.uncompressed_size),
        human(layer.size),
        started.elapsed().as_secs_f64()
    );
    println!("{}", manifest.digest());
    Ok(())
}

fn build(a: BuildArgs) -> Result<ExitCode> {
    let plain_epoch = match std::env::var_os("SOURCE_DATE_EPOCH") {
        Some(_) => Some(epoch_from_env()?),
        None => None,
    };
    let plan = kiln::pipeline::BuildPlan {
        dir: a.dir.clone(),
        recipe: a.recipe.clone(),
        layout: a.output.clone(),
        source: kiln::source::SourceOptions {
            allow_dirty: a.allow_dirty,
            epoch: a.source_date_epoch,
            plain_epoch,
        },
        compression: a.compression.parse().map_err(anyhow::Error::msg)?,
        load: a.load,
        builder_id: a
            .builder_id
            .clone()
            .or_else(|| {
                std::env::var("KILN_BUILDER_ID")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(default_builder_id),
        registry: a.registry.options(),
        verify: a.verify,
        limits: a.limits.limits()?,
        push: a.push.as_ref().map(|prefix| kiln::pipeline::PushPlan {
            prefix: prefix.clone(),
            tags: a.tags.clone(),
            options: a.registry.options(),
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (cancel, interrupted) =
            cancel_on_signals("stopping the build and removing its container");
        let runner = kiln::runner::connect().await?;
        let observer: Arc<dyn kiln::events::Observer + Send + Sync> = Progress::new(a.json, "");
        match kiln::pipeline::build(&plan, runner.as_ref(), &cancel, observer).await {
            Ok(result) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&result)?);
                } else {
                    for art in &result.artifacts {
                        if let Some(p) = &art.pushed_to {
                            eprintln!("==> pushed {} to {p}", art.name);
                        }
                        match &art.loaded_as {
                            Some(t) => {
                                println!("{} {} {} (loaded as {t})", art.name, art.kind, art.digest)
                            }
                            None => println!("{} {} {}", art.name, art.kind, art.digest),
                        }
                    }
                }
                eprintln!("build log: {}", result.log.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.is_cancelled() || interrupted.load(Ordering::SeqCst) => {
                eprintln!("kiln: build interrupted");
                Ok(ExitCode::from(EXIT_INTERRUPTED))
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Exit status for a config that does not check.
const EXIT_CONFIG: u8 = 2;
/// `kiln verify`: the rebuild differs.
const EXIT_DIFFERENT: u8 = 1;
/// `kiln verify`: it could not be verified (no provenance, no source, another builder, ...).
const EXIT_UNVERIFIABLE: u8 = 2;

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let json = a.json;
    let unverifiable = |msg: String| {
        eprintln!("kiln: cannot verify: {msg}");
        if json {
            println!("{}", serde_json::json!({"verified": false, "error": msg}));
        }
        Ok(ExitCode::from(EXIT_UNVERIFIABLE))
    };
    let reference: kiln::reference::Reference = match a.reference.parse() {
        Ok(r) => r,
        Err(e) => return unverifiable(format!("{e}")),
    };
    let work = match tempfile::Builder::new().prefix("kiln-verify-").tempdir() {
        Ok(w) => w,
        Err(e) => return unverifiable(format!("creating a scratch directory: {e}")),
    };
    let opts = kiln::verify::VerifyOptions {
        registry: a.registry.options(),
        keep: a.keep.clone(),
        tokens: kiln::forge::Tokens::from_env(),
        work: work.path().to_owned(),
        allow_network: a.allow_network,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return unverifiable(format!("starting the async runtime: {e}")),
    };
    let result = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping the verification");
        let runner = match kiln::runner::connect().await {
            Ok(r) => r,
            Err(e) => {
                return Err(kiln::verify::VerifyError::BuilderMissing {
                    image: "(any)".into(),
                    reason: e.to_string(),
                });
            }
        };
        let observer: Arc<dyn kiln::events::Observer + Send + Sync> =
            Progress::new(json, "rebuilding: ");
        kiln::verify::verify(&reference, &opts, runner.as_ref(), &cancel, observer).await
    });
    match result {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
            }
            Ok(if report.identical {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DIFFERENT)
            })
        }
        Err(e) => {
            // A failed rebuild's log is worth keeping: the scratch directory stays.
            if matches!(e, kiln::verify::VerifyError::Rebuild(_)) {
                let kept = work.keep();
                eprintln!(
                    "kiln: the rebuild's scratch directory (and its log) is kept in {}",
                    kept.display()
                );
            }
            unverifiable(e.to_string())
        }
    }
}

fn daemon(a: DaemonArgs) -> Result<ExitCode> {
    use kiln::daemon::config::Config;
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if a.check {
        eprintln!(
            "{}: ok (host {}, state in {}, listening on {}, {} build{} at once)",
            a.config.display(),
            config.host_id,
            config.state_dir.display(),
            config.listen,
            config.concurrency,
            if config.concurrency == 1 { "" } else { "s" }
        );
        for r in &config.repos {
            let kind = r.source_key();
            eprintln!(
                "  {kind} {} (recipe {}; branches {}{})",
                r.name(),
                r.recipe_key(),
                r.branches.join(", "),
                r.tags
                    .as_deref()
                    .map(|t| format!("; tags {t}"))
                    .unwrap_or_default()
            );
        }
        match &config.registry {
            Some(r) => eprintln!("  artifacts go to {}/<artifact>", r.url),
            None => eprintln!(
                "  artifacts go to the local layouts in {}/layout/<artifact>",
                config.state_dir.display()
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        kiln::daemon::run(config, &a.config, shutdown, kiln::http::router).await
    });
    // Blocking work still running (a credential helper, a git process being killed) gets a
    // moment, never a hang.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `LAYOUT[:TAG]`: a tag only when what follows the last ':' is one and the rest is a layout.
fn split_layout_tag(s: &str) -> (PathBuf, Option<String>) {
    if let Some((path, tag)) = s.rsplit_once(':')
        && kiln::store::validate_tag(tag).is_ok()
        && !tag.contains('/')
        && std::path::Path::new(path).join("oci-layout").is_file()
    {
        return (PathBuf::from(path), Some(tag.to_owned()));
    }
    (PathBuf::from(s), None)
}

/// The manifest a `LAYOUT[:TAG]` names: the tag's, or the only one.
fn resolve_in_layout(
    layout: &OciLayout,
    tag: Option<&str>,
) -> Result<(oci_spec::image::Descriptor, Option<String>)> {
    match tag {
        Some(t) => {
            let d = layout
                .resolve(t)?
                .with_context(|| format!("no tag {t:?} in {}", layout.root().display()))?;
            Ok((d, Some(t.to_owned())))
        }
        None => {
            let index = layout.index()?;
            let tagged: Vec<_> = index
                .manifests()
                .iter()
                .filter(|d| {
                    d.annotations()
                        .as_ref()
                        .is_some_and(|a| a.contains_key(kiln::store::REF_NAME))
                })
                .collect();
            match tagged.as_slice() {
                [one] => {
                    let t = one
                        .annotations()
                        .as_ref()
                        .and_then(|a| a.get(kiln::store::REF_NAME))
                        .cloned();
                    Ok(((*one).clone(), t))
                }
                [] => bail!("{} has no tagged image", layout.root().display()),
                _ => bail!(
                    "{} holds several images: name one as LAYOUT:TAG",
                    layout.root().display()
                ),
            }
        }
    }
}

fn push(a: PushArgs) -> Result<ExitCode> {
    let (path, tag) = split_layout_tag(&a.source);
    let layout = OciLayout::open(&path)?;
    let (desc, layout_tag) = resolve_in_layout(&layout, tag.as_deref())?;
    let reference: kiln::reference::Reference = a.reference.parse()?;
    if reference.digest.is_some() {
        bail!("push to a tag, not a digest: {reference}");
    }
    let tag = reference
        .tag
        .clone()
        .or(layout_tag)
        .unwrap_or_else(|| "latest".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let progress = Progress::new(false, "");
    let report = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping the push (no tag was moved)");
        let client =
            kiln::registry::RegistryClient::for_reference(&reference, &a.registry.options())?;
        let mut pusher = kiln::registry::Pusher::new(&client, &layout, &reference.repository);
        pusher.observer = progress.as_ref();
        pusher.cancel = cancel;
        anyhow::Ok(pusher.push(&desc, std::slice::from_ref(&tag)).await?)
    })?;
    eprintln!(
        "pushed {}:{tag} in {:.2}s: {} blobs uploaded ({}), {} mounted, {} already there",
        format_args!("{}/{}", reference.registry, reference.repository),
        started.elapsed().as_secs_f64(),
        report.uploaded.len(),
        human(report.bytes_uploaded),
        report.mounted.len(),
        report.skipped.len()
    );
    println!("{}", desc.digest());
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr while a long command runs: the current build step (with its output)
/// and bytes and rate per uploaded blob. Only when stderr is a terminal and the output is not
/// `--json`; otherwise it stays quiet.
struct Progress {
    on: bool,
    /// Put before step headers (`rebuilding: `).
    label: &'static str,
    multi: indicatif::MultiProgress,
    step: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    blobs: std::sync::Mutex<std::collections::HashMap<kiln::Digest, indicatif::ProgressBar>>,
}

impl Progress {
    fn new(json: bool, label: &'static str) -> Arc<Progress> {
        use std::io::IsTerminal;
        Arc::new(Progress {
            on: !json && std::io::stderr().is_terminal(),
            label,
            multi: indicatif::MultiProgress::new(),
            step: std::sync::Mutex::new(None),
            blobs: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn line(&self, s: String) {
        let _ = self.multi.println(s);
    }
}

impl kiln::events::Observer for Progress {
    fn event(&self, e: &Event) {
        use indicatif::{ProgressBar, ProgressStyle};
        if !self.on {
            return;
        }
        let lock = |m: &std::sync::Mutex<Option<ProgressBar>>| kiln::sync::lock(m).take();
        match e {
            Event::StepStarted {
                index,
                total,
                command,
            } => {
                if let Some(pb) = lock(&self.step) {
                    pb.finish_and_clear();
                }
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(format!("{}step {index}/{total}: {command}", self.label));
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                *kiln::sync::lock(&self.step) = Some(pb);
            }
            Event::StepFinished {
                index,
                exit_code,
                millis,
            } => {
                if let Some(pb) = lock(&self.step) {
                    pb.finish_and_clear();
                }
                self.line(format!(
                    "==> {}step {index} exited {exit_code} after {:.1}s",
                    self.label,
                    *millis as f64 / 1000.0
                ));
            }
            Event::StepOutput { bytes } => {
                use std::io::Write;
                self.multi.suspend(|| {
                    let _ = std::io::stderr().write_all(bytes);
                });
            }
            Event::UploadProgress {
                digest,
                done,
                total,
            } => {
                let mut blobs = kiln::sync::lock(&self.blobs);
                let pb = blobs.entry(*digest).or_insert_with(|| {
                    let pb = self.multi.add(ProgressBar::new(*total));
                    pb.set_style(
                        ProgressStyle::with_template(
                            "  {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_bar}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    pb.set_message(digest.to_string()[..19].to_owned());
                    pb
                });
                pb.set_position(*done);
            }
            Event::BlobPushed { digest, size, how } => {
                if let Some(pb) = kiln::sync::lock(&self.blobs).remove(digest) {
                    pb.finish_and_clear();
                }
                if *how != "present" {
                    self.line(format!("  {how} {digest} ({})", human(*size)));
                }
            }
            Event::ImageWritten { digest, tag } => self.line(format!(
                "==> stored {} {digest}",
                tag.as_deref().unwrap_or("")
            )),
            _ => {}
        }
    }
}

fn default_builder_id() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("kiln://{}", host.trim())
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let reference: kiln::reference::Reference = a.reference.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping");
        kiln::inspect::inspect(&reference, &a.registry.options(), &cancel).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(ExitCode::SUCCESS)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
