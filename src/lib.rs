//! kiln: reproducible builds packed into deterministic, content-addressed OCI images.
//!
//! One pipeline, a module per stage, each a library call behind a narrow interface:
//! - [`source`]: the exact tree to build (a work tree's committed HEAD, or a commit fetched
//!   into a bare mirror), its revision, commit time and URL;
//! - [`runner`]: the recipe's steps in a container, behind the [`runner::Runner`] trait (the
//!   Docker engine); it runs, it never publishes;
//! - [`pack`]: a directory tree or tar stream into a deterministic layer blob;
//! - [`image`]: config and manifest around layers (on base layers given as values), as
//!   byte-stable JSON; [`attest`] adds statements (the SLSA provenance, rebuild verdicts)
//!   as referrers, signed as DSSE envelopes when a key is configured, and [`trust`] decides
//!   from them whether a deployment may run an artifact;
//! - [`store`]: the local OCI layout every build writes to; [`publish`]: where artifacts go
//!   from there, behind [`publish::Target`] (local layouts, a [`registry`]);
//! - [`pipeline`]: the stages as separate calls, composed once by [`pipeline::Plan`].
//!
//! The CLI (`kiln build`, `pack`, `push`, `inspect`, `verify`, `trust`, `key`, `validate`) and the
//! [`daemon`] only compose them. The daemon hears of commits through [`forge`]s, keeps its
//! [`state`] behind a trait and serves [`http`].
//!
//! Every stage that can take long (source and fetches, the container run, packing, pushes,
//! base fetches, inspect, docker load) takes a cancellation token and stops promptly, removing
//! what it started. Stages report progress as [`events`] and return typed errors whose
//! `is_retryable()` says whether running them again could help. No stage keeps
//! process-global state: even the state's ordered build ids come from an [`ids::Sequence`]
//! each store owns.

pub mod artifact;
pub mod attest;
pub mod body;
pub mod check;
pub mod compare;
pub mod daemon;
pub mod digest;
pub mod errors;
pub mod events;
pub mod forge;
pub mod http;
pub mod ids;
pub mod image;
pub mod inspect;
pub mod json;
pub mod metrics;
pub mod pack;
pub mod pipeline;
pub mod publish;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod retry;
pub mod runner;
pub mod sbom;
pub mod secret;
pub mod source;
pub mod state;
pub mod store;
pub mod sync;
pub mod text;
pub mod trust;
pub mod validate;
pub mod verify;

pub use digest::Digest;
