//! The publish side: OCI distribution registries.

pub mod client;
pub mod push;
mod reference;

pub use client::{Credential, RegistryClient, RegistryError, RegistryOptions, RetryPolicy, Secret};
pub use push::{PushError, PushReport, Pusher, Repository};
pub use reference::{Reference, ReferenceError, is_loopback_host};
