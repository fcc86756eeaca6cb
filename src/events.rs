//! Progress as events: library stages report what they do; the CLI prints, the daemon logs.

use crate::digest::Digest;

/// Something a stage did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The tree was walked: how many entries and file bytes will be packed.
    PackScanned { entries: u64, bytes: u64 },
    /// File bytes packed so far, of `total`.
    PackProgress { bytes: u64, total: u64 },
    /// A layer blob was committed to the store.
    LayerWritten {
        digest: Digest,
        size: u64,
        diff_id: Digest,
    },
    /// A build step started (1-based `index` of `total`).
    StepStarted {
        index: usize,
        total: usize,
        command: String,
        /// The step runs with the network.
        network: bool,
    },
    /// A build step finished with `exit_code` after `millis`.
    StepFinished {
        index: usize,
        exit_code: i64,
        millis: u64,
    },
    /// Output from the running step, as it arrives.
    StepOutput { bytes: Vec<u8> },
    /// A blob is in the registry: `how` is "uploaded", "mounted" or "present".
    BlobPushed {
        digest: Digest,
        size: u64,
        how: &'static str,
    },
    /// Bytes of a large blob uploaded so far.
    UploadProgress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// An image manifest was written (and tagged, if a tag was given).
    ImageWritten { digest: Digest, tag: Option<String> },
}

/// Receives events. Must be cheap: it is called on the stage's own thread.
pub trait Observer: Sync {
    fn event(&self, event: &Event);
}

impl<F: Fn(&Event) + Sync> Observer for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// Discards events.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}
