//! Status badges: `GET /badges/{owner}/{repo}/{branch}.svg` and `/badges/local.svg`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{App, error};
use crate::daemon::Daemon;
use crate::state::BuildState;

/// `GET /badges/{owner}/{repo}/{branch}.svg`: the status badge of a hosted repository's
/// branch (the branch may hold slashes).
pub async fn repo(
    State(app): State<Arc<App>>,
    Path((owner, repo, branch)): Path<(String, String, String)>,
) -> Response {
    let Some(branch) = branch.strip_suffix(".svg") else {
        return error(StatusCode::NOT_FOUND, "badges end in .svg");
    };
    badge(&app.d, &format!("{owner}/{repo}"), branch).await
}

#[derive(Deserialize)]
pub struct LocalBadge {
    path: String,
    branch: Option<String>,
}

/// `GET /badges/local.svg?path=/srv/git/widget.git&branch=main`: the badge of a local
/// repository (`path = ...` in the config; `branch` defaults to `main`).
pub async fn local(State(app): State<Arc<App>>, Query(q): Query<LocalBadge>) -> Response {
    badge(&app.d, &q.path, q.branch.as_deref().unwrap_or("main")).await
}

async fn badge(d: &Daemon, repo: &str, branch: &str) -> Response {
    let (label, color) = match d
        .store
        .last_finished(repo, &format!("refs/heads/{branch}"))
        .await
    {
        Ok(Some(BuildState::Success)) => ("passing", "#2e7d32"),
        Ok(Some(BuildState::Failure)) => ("failing", "#c62828"),
        Ok(Some(_)) => ("error", "#ef6c00"),
        Ok(None) | Err(_) => ("unknown", "#757575"),
    };
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            // Short: a badge follows the branch within a minute.
            (header::CACHE_CONTROL, "max-age=30, must-revalidate"),
        ],
        badge_svg(label, color),
    )
        .into_response()
}

/// A flat two-part badge, "kiln | <label>", as text in the SVG. Both parts are fixed
/// strings: nothing user-controlled reaches the markup.
fn badge_svg(label: &str, color: &str) -> String {
    // About 6.5 px per character at 11 px Verdana, plus padding.
    let w = |s: &str| 10 + (s.len() as u32 * 13).div_ceil(2);
    let (lw, rw) = (w("kiln"), w(label));
    let total = lw + rw;
    let (lx, rx) = (lw * 5, lw * 10 + rw * 5);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="kiln: {label}"><title>kiln: {label}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{color}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="110" transform="scale(.1)"><text x="{lx}" y="140">kiln</text><text x="{rx}" y="140">{label}</text></g></svg>"##
    )
}
