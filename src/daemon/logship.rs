//! Shipping a build's log into the state while it runs, so every host of a farm can show and
//! stream it. The worker's pipeline writes the log file on the host running the build; a
//! shipper follows that file and appends whole lines, numbered from where the state's copy
//! ends, fenced by the build's lease (a host that lost the lease adds nothing).

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{JobStore, Lease};

/// How often the file is read while the build runs.
const EVERY: Duration = Duration::from_millis(300);
/// A line longer than this is cut (the rest follows as the next line).
const MAX_LINE: usize = 16 * 1024;
/// At most this many bytes of lines go in one stored run.
const MAX_RUN: usize = 256 * 1024;
/// At most this much of the file is read at a time.
const READ: u64 = 4 * 1024 * 1024;
/// Tries of the final flush when the state does not answer.
const FINAL_TRIES: u32 = 5;

/// Follows one build log file from the offset it had when the attempt began.
pub struct LogShipper {
    store: Arc<dyn JobStore>,
    lease: Lease,
    path: PathBuf,
    offset: u64,
    next_line: u64,
    /// Bytes read after the last whole line.
    partial: Vec<u8>,
    /// Whole lines read but not stored yet (kept across a failed write).
    pending: VecDeque<String>,
    lost: bool,
}

impl LogShipper {
    /// Start at the file's current end (earlier attempts on this host were shipped by their
    /// own shippers) and at the state's next line number.
    pub async fn new(
        store: Arc<dyn JobStore>,
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
            pending: VecDeque::new(),
            lost: false,
        })
    }

    /// The number the next stored line gets.
    pub fn next_line(&self) -> u64 {
        self.next_line
    }

    /// Store what the file gained since the last call, reading on to its end. With `last`, a
    /// final line without a newline goes too. On an error the unstored lines are kept for
    /// the next call.
    pub async fn ship(&mut self, last: bool) -> Result<(), String> {
        loop {
            if self.lost {
                return Ok(());
            }
            let more = self.read_more().await?;
            let lines = split_lines(&mut self.partial, last && !more);
            self.pending.extend(lines);
            self.send_pending().await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Read the next part of the file; true if it was a full part (more may follow).
    async fn read_more(&mut self) -> Result<bool, String> {
        let (path, offset) = (self.path.clone(), self.offset);
        // Off the runtime: a plain file read.
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(READ).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        Ok(bytes.len() as u64 == READ)
    }

    async fn send_pending(&mut self) -> Result<(), String> {
        while !self.pending.is_empty() {
            let mut size = 0;
            let n = self
                .pending
                .iter()
                .take_while(|l| {
                    size += l.len() + 1;
                    size <= MAX_RUN
                })
                .count()
                .max(1);
            let run: Vec<String> = self.pending.iter().take(n).cloned().collect();
            match self
                .store
                .append_log(&self.lease, self.next_line, &run)
                .await
            {
                Ok(true) => {
                    self.pending.drain(..n);
                    self.next_line += n as u64;
                }
                // Not stored: the lease is gone, or these line numbers are taken. While the
                // lease is held only this shipper writes, so taken lines are its own (a write
                // that landed though its answer was lost): skip them.
                Ok(false) => {
                    let id = &self.lease.build_id;
                    let end = self.store.log_end(id).await.map_err(|e| e.to_string())?;
                    let held = self
                        .store
                        .holds(&self.lease, Duration::ZERO)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !held {
                        tracing::debug!("log lines not stored: the lease is gone");
                        self.lost = true;
                        self.pending.clear();
                        return Ok(());
                    }
                    if end <= self.next_line {
                        return Err(format!("line {} was refused", self.next_line));
                    }
                    let stored = ((end - self.next_line) as usize).min(self.pending.len());
                    self.pending.drain(..stored);
                    self.next_line = end;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Ship every `EVERY` until `stop` fires.
    pub async fn follow(mut self, stop: tokio_util::sync::CancellationToken) -> LogShipper {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(EVERY) => {
                    if let Err(e) = self.ship(false).await {
                        tracing::debug!(error = %e, "log lines not stored yet; trying again");
                    }
                }
            }
        }
        self
    }

    /// The last flush, with the final unterminated line: everything the file holds, tried a
    /// few times if the state does not answer (the end of the build is recorded after it).
    pub async fn finish(&mut self) {
        for i in 1..=FINAL_TRIES {
            match self.ship(true).await {
                Ok(()) => return,
                Err(e) if i == FINAL_TRIES => {
                    tracing::warn!(error = %e, "the end of the build log did not reach the state")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300 * u64::from(i))).await,
            }
        }
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

    /// A claimed job, a log file path (not written yet) and a shipper following it.
    async fn claimed() -> (
        Arc<dyn JobStore>,
        Lease,
        tempfile::TempDir,
        PathBuf,
        LogShipper,
    ) {
        let store: Arc<dyn JobStore> = Arc::new(crate::state::SqliteStore::memory().await.unwrap());
        store
            .enqueue(&crate::state::NewJob {
                repo: "acme/widget".into(),
                commit: "c1".into(),
                recipe: "kiln.toml".into(),
                git_ref: "refs/heads/main".into(),
            })
            .await
            .unwrap();
        let c = store
            .claim("h", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let shipper = LogShipper::new(store.clone(), c.lease.clone(), path.clone())
            .await
            .unwrap();
        (store, c.lease, dir, path, shipper)
    }

    #[tokio::test]
    async fn the_final_flush_stores_a_log_larger_than_one_read() {
        let (store, lease, _dir, path, mut shipper) = claimed().await;
        // 10 MiB of lines, the last one unterminated.
        let mut text = String::new();
        let n = 160_000;
        for i in 1..=n {
            text.push_str(&format!("line {i:08} {}\n", "x".repeat(50)));
        }
        text.push_str("tail");
        std::fs::write(&path, &text).unwrap();
        assert!(text.len() as u64 > 2 * READ);
        shipper.finish().await;
        assert_eq!(store.log_end(&lease.build_id).await.unwrap(), n + 2);
        let last = store.log_lines(&lease.build_id, n - 1, 10).await.unwrap();
        assert_eq!(last[1].0, n + 1);
        assert_eq!(last[1].1, "tail");
        assert!(last[0].1.starts_with(&format!("line {n:08} ")));
    }

    #[tokio::test]
    async fn lines_stored_by_a_write_whose_answer_was_lost_are_not_stored_twice() {
        let (store, lease, _dir, path, mut shipper) = claimed().await;
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        // The first two landed, though the shipper never heard so.
        let landed = vec!["one".to_owned(), "two".to_owned()];
        assert!(store.append_log(&lease, 1, &landed).await.unwrap());
        shipper.ship(false).await.unwrap();
        assert_eq!(shipper.next_line(), 4);
        let all = store.log_lines(&lease.build_id, 0, 10).await.unwrap();
        let text: Vec<&str> = all.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(text, ["one", "two", "three"]);
        // A lost lease stops the shipping without an error.
        let stale = Lease {
            fence: lease.fence + 1,
            ..lease.clone()
        };
        let mut late = LogShipper::new(store.clone(), stale, path.clone())
            .await
            .unwrap();
        std::fs::write(&path, "one\ntwo\nthree\nfour\n").unwrap();
        late.offset = 14;
        late.ship(true).await.unwrap();
        assert_eq!(store.log_end(&lease.build_id).await.unwrap(), 4);
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
