//! The publish side: OCI distribution registries (and fetching base images from them).

pub mod base;
pub mod client;
pub mod push;
pub mod tls;

pub use client::{Credential, RegistryClient, RegistryError, RegistryOptions, RetryPolicy};
pub use push::{PushError, PushReport, Pusher, Repository};
