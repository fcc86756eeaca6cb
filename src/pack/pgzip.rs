//! Deterministic parallel gzip, in the manner of pigz.
//!
//! The input is cut into fixed 128 KiB blocks. Each block is deflated independently, primed
//! with the last 32 KiB of the block before it as a preset dictionary, and ended with a sync
//! flush (the last one with a final block). The blocks are written in order behind a fixed
//! gzip header (no name, mtime 0, OS 255) and followed by the combined CRC-32 and size.
//!
//! The output depends only on the input, the level, the block size and the deflate
//! implementation (zlib-rs, pinned by Cargo.lock) — never on the number of threads or on how
//! the caller sized its writes. The `gzp` crate implements the same scheme but needs a C zlib
//! built with cmake for its dictionary support; this module keeps kiln pure Rust.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Uncompressed bytes per block. Part of the output format: changing it changes digests.
pub const BLOCK_SIZE: usize = 128 * 1024;
/// Preset dictionary size (deflate's window).
const DICT_SIZE: usize = 32 * 1024;

struct Job {
    data: Arc<Vec<u8>>,
    dict: Option<Arc<Vec<u8>>>,
    last: bool,
    reply: SyncSender<io::Result<Block>>,
}

struct Block {
    deflated: Vec<u8>,
    crc: Crc,
}

/// A `Write` that gzips with a pool of threads and writes to `W` on a writer thread.
pub struct ParGzEncoder<W: Write + Send + 'static> {
    level: u32,
    buf: Vec<u8>,
    prev: Option<Arc<Vec<u8>>>,
    jobs: Option<SyncSender<Job>>,
    order: Option<SyncSender<Receiver<io::Result<Block>>>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> ParGzEncoder<W> {
    /// `threads` compressing threads (at least one) at deflate `level` (0-9).
    pub fn new(inner: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|i| {
                let rx = Arc::clone(&job_rx);
                std::thread::Builder::new()
                    .name(format!("kiln-gzip-{i}"))
                    .spawn(move || worker(rx, level))
                    .expect("spawn a compression thread")
            })
            .collect();
        let (order_tx, order_rx) = mpsc::sync_channel(threads * 4);
        let writer = std::thread::Builder::new()
            .name("kiln-gzip-writer".into())
            .spawn(move || write_blocks(inner, level, order_rx))
            .expect("spawn the gzip writer thread");
        ParGzEncoder {
            level,
            buf: Vec::with_capacity(BLOCK_SIZE),
            prev: None,
            jobs: Some(job_tx),
            order: Some(order_tx),
            workers,
            writer: Some(writer),
        }
    }

    /// Compression level in use.
    pub fn level(&self) -> u32 {
        self.level
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(BLOCK_SIZE),
        ));
        let dict = self.prev.take();
        self.prev = (!last).then(|| Arc::clone(&data));
        let (reply, result) = mpsc::sync_channel(1);
        let (Some(jobs), Some(order)) = (&self.jobs, &self.order) else {
            return Err(io::Error::other("gzip encoder already finished"));
        };
        // The writer thread stops early only on an I/O error; finish() reports it.
        if order.send(result).is_err()
            || jobs
                .send(Job {
                    data,
                    dict,
                    last,
                    reply,
                })
                .is_err()
        {
            return Err(self
                .shutdown()
                .err()
                .unwrap_or_else(|| io::Error::other("gzip pipeline stopped unexpectedly")));
        }
        Ok(())
    }

    /// Compress what is left, write the trailer, and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<W> {
        self.jobs.take();
        self.order.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("gzip writer thread panicked")),
            None => Err(io::Error::other("gzip encoder already finished")),
        }
    }
}

impl<W: Write + Send + 'static> Write for ParGzEncoder<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.buf.len() == BLOCK_SIZE {
                self.submit(false)?;
            }
            let take = (BLOCK_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    /// Deliberately does not cut a block: the output must not depend on flush calls.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for ParGzEncoder<W> {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.shutdown();
        }
    }
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, level: u32) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let dict = job
            .dict
            .as_deref()
            .map(|d| &d[d.len() - DICT_SIZE.min(d.len())..]);
        let result = deflate_block(level, &job.data, dict, job.last);
        let _ = job.reply.send(result.map(|deflated| {
            let mut crc = Crc::new();
            crc.update(&job.data);
            Block { deflated, crc }
        }));
    }
}

fn deflate_block(level: u32, input: &[u8], dict: Option<&[u8]>, last: bool) -> io::Result<Vec<u8>> {
    // A fresh deflate state per block, never `reset()`: with zlib-rs, a reset stream's output
    // still depends on the blocks it compressed before, which would make the bytes depend on
    // which thread took which block. (Caught by `thread_count_does_not_change_the_bytes`.)
    let z = &mut Compress::new(Compression::new(level), false);
    if let Some(dict) = dict {
        z.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    let start = z.total_in();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = (z.total_in() - start) as usize;
        let status = z
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let consumed = (z.total_in() - start) as usize;
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once all input is in and deflate left output space.
            _ if !last && consumed == input.len() && out.len() < out.capacity() => return Ok(out),
            _ => {}
        }
    }
}

fn write_blocks<W: Write>(
    mut out: W,
    level: u32,
    order: Receiver<Receiver<io::Result<Block>>>,
) -> io::Result<W> {
    // XFL as gzip sets it: 2 for the slowest level, 4 for the fastest.
    let xfl = match level {
        9 => 2,
        0 | 1 => 4,
        _ => 0,
    };
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
    let mut crc = Crc::new();
    let mut total: u64 = 0;
    for pending in order {
        let block = pending
            .recv()
            .map_err(|_| io::Error::other("gzip compression thread stopped"))??;
        out.write_all(&block.deflated)?;
        total += u64::from(block.crc.amount());
        crc.combine(&block.crc);
    }
    out.write_all(&crc.sum().to_le_bytes())?;
    out.write_all(&(total as u32).to_le_bytes())?;
    out.flush()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: numbers from a xorshift generator, as text.
        let mut v = Vec::with_capacity(len);
        let mut x: u64 = 88172645463325252;
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(format!("{} ", x % 10_000).as_bytes());
        }
        v.truncate(len);
        v
    }

    fn gz(data: &[u8], threads: usize, chunk: usize) -> Vec<u8> {
        let mut e = ParGzEncoder::new(Vec::new(), 6, threads);
        for c in data.chunks(chunk.max(1)) {
            e.write_all(c).unwrap();
            e.flush().unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_and_ignores_threads_and_write_sizes() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            17 * BLOCK_SIZE + 77,
        ] {
            let data = sample(len);
            let a = gz(&data, 1, 4096);
            let b = gz(&data, 3, 1000);
            let c = gz(&data, 2, len + 1);
            assert_eq!(a, b, "len {len}");
            assert_eq!(a, c, "len {len}");
            assert_eq!(&a[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&a[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn dictionary_keeps_ratio_close_to_single_stream() {
        let data = sample(4 * 1024 * 1024);
        let par = gz(&data, 2, 65536).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(
            (par as f64) < single as f64 * 1.02,
            "parallel {par} vs single {single}"
        );
    }
}
