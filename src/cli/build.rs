//! `kiln build`: a project's recipe built in a container, stored in a local OCI layout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::{
    EXIT_INTERRUPTED, LimitArgs, Progress, RegistryArgs, cancel_on_signals, epoch_from_env, runtime,
};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The project directory: a git work tree (its committed HEAD is built) or a plain directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Use this recipe instead of the committed DIR/kiln.toml.
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// The OCI image layout to write (created if missing).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Print one JSON document describing the result on stdout.
    #[arg(long)]
    pub json: bool,
    /// Load image artifacts into the local Docker engine as kiln/<name>:<short sha>.
    #[arg(long)]
    pub load: bool,
    /// Build a git tree with uncommitted changes to tracked files (the result is marked dirty).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Timestamp for a plain directory (git trees use the commit time). Defaults to
    /// $SOURCE_DATE_EPOCH for plain directories.
    #[arg(long, value_name = "SECS")]
    pub source_date_epoch: Option<u64>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    pub compression: String,
    /// Push each artifact to PREFIX/<artifact name>, tagged with the full commit SHA.
    #[arg(long, value_name = "PREFIX")]
    pub push: Option<String>,
    /// An extra tag for --push (repeatable).
    #[arg(long = "tag", value_name = "TAG", requires = "push")]
    pub tags: Vec<String>,
    /// This build host's identity in provenance. Defaults to $KILN_BUILDER_ID, else
    /// kiln://<hostname>.
    #[arg(long, value_name = "URI")]
    pub builder_id: Option<String>,
    /// The source link to record in the artifacts' annotations and provenance (default: the
    /// `origin` remote's canonical https form; none for a local path).
    #[arg(long, value_name = "URL")]
    pub source_url: Option<String>,
    /// Build twice, in two fresh containers, and compare before storing or pushing anything:
    /// a difference fails the build with the paths that differ.
    #[arg(long)]
    pub verify: bool,
    /// Sign the provenance (and, with --verify, a verdict) with this private key (PKCS#8
    /// PEM, readable by its owner only).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Also attach each signed statement as a Sigstore bundle v0.3 (cosign's newer format).
    #[arg(long, requires = "sign_key")]
    pub sigstore_bundle: bool,
    /// Mount the recipe's build caches (`[build] cache`), kept between builds of this work
    /// tree on this host. Without it the build runs cold.
    #[arg(long)]
    pub cache: bool,
    /// Where --cache keeps them (default: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long, value_name = "DIR", requires = "cache")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn build(a: BuildArgs) -> Result<ExitCode> {
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
            source_url: match &a.source_url {
                Some(u) => Some(kiln::forge::source_link(u).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--source-url {u:?}: not a remote URL (a local path or file:// URL names one host's disk)"
                    )
                })?),
                None => None,
            },
        },
        compression: a.compression.parse().map_err(anyhow::Error::msg)?,
        load: a.load,
        builder_id: a.builder_id.clone().unwrap_or_else(host_identity),
        registry: a.registry.options(),
        verify: a.verify,
        limits: a.limits.limits()?,
        signer: super::key::signer(a.sign_key.as_ref(), a.sigstore_bundle)?,
        push: a.push.as_ref().map(|prefix| kiln::pipeline::PushPlan {
            prefix: prefix.clone(),
            tags: a.tags.clone(),
            options: a.registry.options(),
        }),
        caches: match a.cache {
            true => Some(super::cache::open_dir(a.cache_dir.as_ref())?),
            false => None,
        },
    };
    let rt = runtime()?;
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

/// This host's identity: $KILN_BUILDER_ID, else kiln://<hostname>.
pub fn host_identity() -> String {
    std::env::var("KILN_BUILDER_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(default_builder_id)
}

fn default_builder_id() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("kiln://{}", host.trim())
}
