//! Shipping a build's log into the state while it runs, so every host of a farm can show and
//! stream it. The worker's pipeline writes the log file on the host running the build; a
//! shipper follows that file and appends whole lines, numbered from where the state's copy
//! ends, fenced by the build's lease (a host that lost the lease adds nothing).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{Lease, Store};

/// How often the file is read while the build runs.
const EVERY: Duration = Duration::from_millis(300);
/// A line longer than this is cut (the rest follows as the next line).
const MAX_LINE: usize = 16 * 1024;
/// At most this many bytes of lines go in one stored run.
const MAX_RUN: usize = 256 * 1024;

/// Follows one build log file from the offset it had when the attempt began.
pub struct LogShipper {
    store: Arc<dyn Store>,
    lease: Lease,
    path: PathBuf,
    offset: u64,
    next_line: u64,
    partial: Vec<u8>,
    lost: bool,
}

impl LogShipper {
    /// Start at the file's current end (earlier attempts on this host were shipped by their
    /// own shippers) and at the state's next line number.
    pub async fn new(
        store: Arc<dyn Store>,
        lease: Lease,
        path: PathBuf,
    ) -> crate::state::Result<LogShipper> {
        let next_line = store.log_end(&lease.build_id).await?;
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(LogShipper {
            store,
            lease,
            path,
            offset,
            next_line,
            partial: Vec::new(),
            lost: false,
        })
    }

    /// Append what the file gained since the last call. With `last`, a final line without a
    /// newline goes too. A failed write is tried again on the next call (the lines are kept).
    pub async fn ship(&mut self, last: bool) {
        if self.lost {
            return;
        }
        let path = self.path.clone();
        let offset = self.offset;
        // Off the runtime: a plain file read.
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(4 * 1024 * 1024).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await;
        let Ok(Ok(bytes)) = read else { return };
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let mut lines = split_lines(&mut self.partial, last);
        while !lines.is_empty() {
            let mut size = 0;
            let n = lines
                .iter()
                .take_while(|l| {
                    size += l.len() + 1;
                    size <= MAX_RUN
                })
                .count()
                .max(1);
            let run: Vec<String> = lines.drain(..n).collect();
            match self
                .store
                .append_log(&self.lease, self.next_line, &run)
                .await
            {
                Ok(true) => self.next_line += run.len() as u64,
                Ok(false) => {
                    tracing::debug!("log lines not stored: the lease is gone");
                    self.lost = true;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "log lines not stored yet; trying again");
                    // Keep the unsent lines for the next call.
                    let mut rest = Vec::new();
                    for l in run.into_iter().chain(lines) {
                        rest.extend_from_slice(l.as_bytes());
                        rest.push(b'\n');
                    }
                    rest.append(&mut self.partial);
                    self.partial = rest;
                    return;
                }
            }
        }
    }

    /// Ship every `EVERY` until `stop` fires, then once more with the last partial line.
    pub async fn follow(mut self, stop: tokio_util::sync::CancellationToken) -> LogShipper {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => self.ship(false).await,
            }
        }
        self
    }
}

/// Take the whole lines out of `buf` as text (invalid UTF-8 and NUL made visible, only the
/// text after a line's last carriage return kept, over-long lines cut); with `last`, the
/// unterminated rest too.
pub fn split_lines(buf: &mut Vec<u8>, last: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let (end, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_LINE => (start + i, start + i + 1),
            _ if rest.len() > MAX_LINE => (start + MAX_LINE, start + MAX_LINE),
            _ if last && !rest.is_empty() => (buf.len(), buf.len()),
            _ => break,
        };
        let mut line = &buf[start..end];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        // A carriage return rewrites the line (progress bars): keep what a terminal shows.
        if let Some(cr) = line.iter().rposition(|&b| b == b'\r') {
            line = &line[cr + 1..];
        }
        lines.push(String::from_utf8_lossy(line).replace('\0', "\u{fffd}"));
        start = next;
    }
    buf.drain(..start);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_only_until_the_last_call() {
        let mut b = b"one\r\n10%\r50%\rtwo\n\nthr".to_vec();
        assert_eq!(split_lines(&mut b, false), ["one", "two", ""]);
        assert_eq!(b, b"thr");
        b.extend_from_slice(b"ee\0\xff");
        assert_eq!(split_lines(&mut b, false), Vec::<String>::new());
        assert_eq!(split_lines(&mut b, true), ["three\u{fffd}\u{fffd}"]);
        assert!(b.is_empty());
    }

    #[test]
    fn long_lines_are_cut() {
        let mut b = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split_lines(&mut b, false);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(b.len(), 5);
    }
}
