//! The daemon's commit-status policy: one context per artifact (`kiln/<name>`), `pending` once
//! the recipe is read, then exactly one terminal status per commit and context.

use crate::artifact::ArtifactResult;
use crate::state::{BuildState, NewStatus};

/// The context of an artifact, or of a recipe whose artifacts are not known (`kiln/<name>`).
pub fn context(name: &str) -> String {
    format!("kiln/{name}")
}

/// `pending` on each context while `commit` builds.
pub fn pending(contexts: &[String], commit: &str, target_url: Option<String>) -> Vec<NewStatus> {
    contexts
        .iter()
        .map(|c| NewStatus {
            context: c.clone(),
            state: "pending".into(),
            description: format!("building {}", crate::text::short(commit)),
            target_url: target_url.clone(),
        })
        .collect()
}

/// `success` on each artifact's context, its manifest digest as the description.
pub fn succeeded(artifacts: &[ArtifactResult], target_url: Option<String>) -> Vec<NewStatus> {
    artifacts
        .iter()
        .map(|a| NewStatus {
            context: context(&a.name),
            state: "success".into(),
            description: a.digest.clone(),
            target_url: target_url.clone(),
        })
        .collect()
}

/// The terminal status of a build that ended in `state` with `error`, on each context: a
/// `failure` is the build's own fault, anything else is an `error`. The description is the
/// error's first line.
pub fn failed(
    state: BuildState,
    error: &str,
    contexts: Vec<String>,
    target_url: Option<String>,
) -> Vec<NewStatus> {
    let status_state = match state {
        BuildState::Failure => "failure",
        _ => "error",
    };
    let first_line = error.lines().next().unwrap_or("");
    contexts
        .into_iter()
        .map(|c| NewStatus {
            context: c,
            state: status_state.into(),
            description: crate::text::truncate(first_line, 140),
            target_url: target_url.clone(),
        })
        .collect()
}
