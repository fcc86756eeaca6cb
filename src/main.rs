//! The `kiln` command: parses arguments and composes library stages. No logic lives here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kiln::events::Event;
use kiln::image::{ImageSpec, Platform, RunConfig};
use kiln::pack::{Compression, PackOptions};
use kiln::store::{OciLayout, Store};

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
    /// Check every blob, digest, size and diff_id in a local OCI layout.
    Validate {
        /// The OCI image layout directory.
        layout: PathBuf,
    },
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pack(a) => pack(a),
        Command::Validate { layout } => {
            let r = kiln::validate::validate_layout(&layout)?;
            eprintln!(
                "ok: {} manifests, {} layers, {} blobs",
                r.manifests, r.layers, r.blobs
            );
            Ok(())
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
