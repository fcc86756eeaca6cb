//! kiln: reproducible builds packed into deterministic, content-addressed OCI images.
//!
//! The pipeline is a set of stages, each a library call behind a narrow interface:
//! - [`pack`]: a directory tree or tar stream into a deterministic layer blob;
//! - [`image`]: config and manifest around layers, as byte-stable JSON;
//! - [`store`]: where blobs, manifests and tags go (the local OCI layout by default);
//! - [`validate`]: re-checks every digest, size and diff_id of a layout.
//!
//! The CLI and the daemon only compose them. Stages take a cancellation token, report
//! progress as [`events`], and return typed errors that say whether a retry can help.

pub mod check;
pub mod daemon;
pub mod digest;
pub mod events;
pub mod http;
pub mod image;
pub mod inspect;
pub mod json;
pub mod pack;
pub mod pipeline;
pub mod provenance;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod runner;
pub mod source;
pub mod state;
pub mod store;
pub mod validate;

pub use digest::Digest;

/// Whether an I/O error is the kind that can go away on its own (an interrupted call, a reset
/// connection, a timeout), as opposed to one that repeats until someone acts (no space, no
/// permission, a missing file).
pub fn io_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        Interrupted
            | WouldBlock
            | TimedOut
            | ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | UnexpectedEof
            | NotConnected
    )
}
