//! `kiln daemon`: the long-running worker, or `--check` of its config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{EXIT_CONFIG, runtime};

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The daemon config.
    #[arg(long, value_name = "FILE", default_value = kiln::daemon::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Check the config and exit: every problem, with its line.
    #[arg(long)]
    pub check: bool,
}

pub fn daemon(a: DaemonArgs) -> Result<ExitCode> {
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
    let rt = runtime()?;
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
