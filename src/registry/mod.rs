//! The registry side: OCI distribution registries, read and written.
//!
//! - `client.rs`: one host, its TLS (`tls.rs`), authentication (`auth.rs`) and retries;
//!   `error.rs`: what a failed request says;
//! - `repository.rs`: one repository's manifests and blobs;
//! - `referrers.rs`: the referrers API, its fallback tag, and the statements attached to an
//!   artifact;
//! - `push.rs` and `upload.rs`: a push from a local layout (blobs, manifest, referrers, tags);
//! - `base.rs`: base images fetched into a local layout.

pub mod auth;
pub mod base;
pub mod client;
pub mod error;
pub mod push;
mod referrers;
pub mod repository;
pub mod tls;
mod upload;

pub use auth::Credential;
pub use client::{RegistryClient, RegistryOptions, RetryPolicy};
pub use error::RegistryError;
pub use push::{PushReport, Pusher};
pub use repository::{PushError, Repository, or_cancel};
