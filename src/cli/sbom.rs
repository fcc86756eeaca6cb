//! `kiln sbom`: an artifact's SBOM, as SPDX 2.3 JSON or converted to CycloneDX 1.5.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{RegistryArgs, cancel_on_signals, runtime};

#[derive(clap::Args)]
pub struct SbomArgs {
    /// host[:port]/repository[:tag|@digest]; with --layout, a tag or digest in the layout.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The document's format.
    #[arg(long, default_value = "spdx-json", value_parser = ["spdx-json", "cyclonedx-json"])]
    pub format: String,
    /// Write it to FILE (atomically) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Read it from this local OCI layout instead of a registry.
    #[arg(long, value_name = "DIR")]
    pub layout: Option<PathBuf>,
    /// Accept only an SBOM signed by one of these public keys (repeatable).
    #[arg(long = "key", value_name = "FILE", num_args = 1..)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn sbom(a: SbomArgs) -> Result<ExitCode> {
    let keys = super::key::public_keys(&a.keys, "--key")?;
    let got = match &a.layout {
        Some(dir) => {
            let layout = kiln::store::OciLayout::open(dir)
                .with_context(|| format!("opening the layout {}", dir.display()))?;
            kiln::sbom::fetch::from_layout(&layout, &a.reference, &keys)?
        }
        None => {
            let reference: kiln::reference::Reference = a.reference.parse()?;
            let options = a.registry.options();
            let rt = runtime()?;
            rt.block_on(async {
                let (cancel, _) = cancel_on_signals("stopping");
                tokio::select! {
                    r = kiln::sbom::fetch::from_registry(&reference, &options, &keys) => r,
                    _ = cancel.cancelled() => Err(kiln::registry::PushError::Cancelled.into()),
                }
            })?
        }
    };
    let bytes = match a.format.as_str() {
        "cyclonedx-json" => {
            let doc: serde_json::Value =
                serde_json::from_slice(&got.document).context("reading the SPDX document")?;
            let bom = kiln::sbom::cyclonedx::from_spdx(&doc).map_err(anyhow::Error::msg)?;
            kiln::json::to_canonical_vec(&bom)?
        }
        _ => got.document,
    };
    match &a.output {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)
                .with_context(|| format!("writing into {}", dir.display()))?;
            tmp.write_all(&bytes)?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} of {} ({}) written to {}",
                a.format,
                got.subject,
                got.signature.describe(),
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
