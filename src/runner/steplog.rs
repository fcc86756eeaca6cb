//! What a build's steps print, whatever the engine: kept in the build log up to the host's
//! limit, and the last lines kept for a failing step's error.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{BuildError, io};
use crate::events::{Event, Observer};

/// A step's output on its way to the build log, against the host's limit: past it, output is
/// dropped (once said so) and the build goes on.
pub(super) struct StepLog<'a> {
    file: File,
    path: &'a Path,
    limit: u64,
    logged: u64,
    full: bool,
}

impl<'a> StepLog<'a> {
    pub(super) fn open(path: &'a Path, limit: u64) -> Result<Self, BuildError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("open the build log", path))?;
        Ok(StepLog {
            file,
            path,
            limit,
            logged: 0,
            full: false,
        })
    }

    pub(super) fn line(&mut self, line: &str) -> Result<(), BuildError> {
        writeln!(self.file, "{line}").map_err(io("write", self.path))
    }

    /// Keep what fits of `bytes`, and tell the observer what was kept.
    pub(super) fn output(
        &mut self,
        bytes: &[u8],
        observer: &(dyn Observer + Send + Sync),
    ) -> Result<(), BuildError> {
        let room = self.limit.saturating_sub(self.logged);
        if room > 0 {
            let keep = &bytes[..bytes.len().min(room as usize)];
            self.file.write_all(keep).map_err(io("write", self.path))?;
            self.logged += keep.len() as u64;
            observer.event(&Event::StepOutput {
                bytes: keep.to_vec(),
            });
        } else if !self.full {
            self.full = true;
            let note = format!(
                "\nkiln: the log reached its limit of {} bytes; further output is not kept\n",
                self.limit
            );
            self.file
                .write_all(note.as_bytes())
                .map_err(io("write", self.path))?;
            observer.event(&Event::StepOutput {
                bytes: note.into_bytes(),
            });
        }
        Ok(())
    }
}

/// The last bytes of a step's output, for its error message.
#[derive(Default)]
pub(super) struct Tail(Vec<u8>);

impl Tail {
    const KEEP: usize = 16 * 1024;

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * Self::KEEP {
            self.0.drain(..self.0.len() - Self::KEEP);
        }
    }

    pub(super) fn lines(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
