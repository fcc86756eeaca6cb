//! `kiln pack`: a directory into a single-layer image in a local OCI layout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use kiln::events::Event;
use kiln::image::{ImageSpec, Platform, RunConfig};
use kiln::pack::{Compression, PackOptions};
use kiln::store::{ContentStore, OciLayout};

use super::{epoch_from_env, human};

#[derive(clap::Args)]
pub struct PackArgs {
    /// The directory whose contents become the layer's `/`.
    pub dir: PathBuf,
    /// The OCI image layout to write (created if missing).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Tag the image in the layout (moves the tag if it exists).
    #[arg(long)]
    pub tag: Option<String>,
    /// Timestamp for every entry and the image's `created`, in seconds since 1970 UTC.
    /// Defaults to $SOURCE_DATE_EPOCH, else 0.
    #[arg(long, value_name = "SECS")]
    pub source_date_epoch: Option<u64>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    pub compression: String,
    /// The image's platform, os/arch[/variant]. Defaults to the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// Attach an SBOM (SPDX 2.3) of the packed files to the image, as `kiln build` does.
    #[arg(long)]
    pub sbom: bool,
}

pub fn pack(a: PackArgs) -> Result<()> {
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
    let mut inventory = kiln::sbom::Inventory::new(kiln::sbom::FILE_CAP);
    let layer = if a.sbom {
        kiln::pack::pack_dir_tapped(&a.dir, &opts, &layout, &cancel, &progress, &mut inventory)
    } else {
        kiln::pack::pack_dir(&a.dir, &opts, &layout, &cancel, &progress)
    }
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
    if a.sbom {
        let sbom_started = Instant::now();
        let subject = kiln::sbom::spdx::Subject {
            // The name is the tag's when there is one: never the directory's host path.
            name: a.tag.clone().unwrap_or_else(|| "image".to_owned()),
            digest: kiln::digest::Digest::from_oci(manifest.digest())?,
            image: true,
            epoch,
            source_url: None,
            revision: None,
        };
        let contents = inventory.finish()?;
        let packages = contents.packages(None);
        let doc = kiln::sbom::spdx::document(&subject, &contents, &packages, None);
        let statement = kiln::sbom::spdx::statement(&subject, &doc);
        let made = sbom_started.elapsed();
        let referrer = kiln::attest::attach_canonical(
            &layout,
            &manifest,
            statement,
            kiln::sbom::PREDICATE_TYPE,
            epoch,
            None,
        )?;
        eprintln!(
            "sbom {} ({} packages, {} files): made in {:.1} ms, stored in {:.1} ms",
            referrer.digest(),
            packages.len(),
            contents.total_files,
            made.as_secs_f64() * 1e3,
            (sbom_started.elapsed() - made).as_secs_f64() * 1e3
        );
    }
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
