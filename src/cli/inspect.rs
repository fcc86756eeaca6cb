//! `kiln inspect`: what a pushed artifact records.

use std::process::ExitCode;

use anyhow::Result;

use super::{RegistryArgs, cancel_on_signals, runtime};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// host[:port]/repository[:tag|@digest]
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check the attestations' signatures against these public keys (repeatable).
    #[arg(long = "key", value_name = "FILE", num_args = 1..)]
    pub keys: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let reference: kiln::reference::Reference = a.reference.parse()?;
    let keys = super::key::public_keys(&a.keys, "--key")?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let (cancel, _) = cancel_on_signals("stopping");
        kiln::inspect::inspect(&reference, &a.registry.options(), &keys, &cancel).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(ExitCode::SUCCESS)
}
