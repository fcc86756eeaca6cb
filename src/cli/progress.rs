//! Progress on stderr while a long command runs.

use std::sync::Arc;

use kiln::events::Event;

/// Progress on stderr while a long command runs: the current build step (with its output)
/// and bytes and rate per uploaded blob. Only when stderr is a terminal and the output is not
/// `--json`; otherwise it stays quiet.
pub struct Progress {
    on: bool,
    /// Put before step headers (`rebuilding: `).
    label: &'static str,
    multi: indicatif::MultiProgress,
    step: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    blobs: std::sync::Mutex<std::collections::HashMap<kiln::Digest, indicatif::ProgressBar>>,
}

impl Progress {
    pub fn new(json: bool, label: &'static str) -> Arc<Progress> {
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
                network,
            } => {
                if let Some(pb) = lock(&self.step) {
                    pb.finish_and_clear();
                }
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let net = if *network { " (network)" } else { "" };
                pb.set_message(format!(
                    "{}step {index}/{total}{net}: {command}",
                    self.label
                ));
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

pub fn human(n: u64) -> String {
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
