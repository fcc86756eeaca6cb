//! `kiln recipe check`: a recipe checked without building.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum RecipeCommand {
    /// Check a recipe without building: every problem, with its line.
    Check {
        /// The recipe file, or a directory holding kiln.toml.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
}

pub fn recipe(c: RecipeCommand) -> Result<ExitCode> {
    match c {
        RecipeCommand::Check { path } => {
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
    }
}
