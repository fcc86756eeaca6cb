//! The JSON API and the plain-text log: builds, hosts, health and metrics, and the admin
//! actions (rebuild, cancel) behind the admin token.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{App, error, no_such_build, time};
use crate::daemon::Daemon;
use crate::state::{BuildDetail, BuildQuery, BuildRow, BuildState, HostRow};

/// A build as the API shows it.
pub fn build_json(b: &BuildRow) -> Value {
    json!({
        "id": b.id,
        "repo": b.repo,
        "ref": b.git_ref,
        "commit": b.commit,
        "recipe": b.recipe,
        "state": b.state.as_str(),
        "host": b.host,
        "attempts": b.attempts,
        "queued_at": time(Some(b.queued_at)),
        "started_at": time(b.started_at),
        "finished_at": time(b.finished_at),
        "error": b.error,
        "artifacts": b.artifacts.iter().map(|a| json!({
            "name": a.name,
            "kind": a.kind,
            "digest": a.digest,
            "pushed_to": a.pushed_to,
            "provenance": a.provenance,
            "sbom": a.sbom,
        })).collect::<Vec<_>>(),
    })
}

fn detail_json(x: &BuildDetail) -> Value {
    let mut v = build_json(&x.build);
    v["refs"] = json!(x.refs);
    v["stages"] = x
        .stages
        .iter()
        .map(|s| {
            json!({
                "attempt": s.attempt,
                "name": s.name,
                "started_at": time(Some(s.started_at)),
                "finished_at": time(s.finished_at),
                "outcome": s.outcome,
                "detail": s.detail,
            })
        })
        .collect();
    v["steps"] = json!(x.steps);
    v
}

pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    let d = &app.d;
    match d.store.queue_depth().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("state: {e}")),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let d = &app.d;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct ListQuery {
    repo: Option<String>,
    state: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

pub async fn builds(State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> Response {
    let d = &app.d;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => match BuildState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown state {s:?}: queued, running, success, failure, error or cancelled"
                    ),
                );
            }
        },
    };
    let query = BuildQuery {
        repo: q.repo.filter(|r| !r.is_empty()),
        state,
        before: q.before.filter(|b| !b.is_empty()),
        limit: q.limit.unwrap_or(50),
    };
    match d.store.builds(&query).await {
        Ok(rows) => axum::Json(json!({
            "builds": rows.iter().map(build_json).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The farm's hosts: `{"hosts": [{id, version, started_at, last_heartbeat, running, state,
/// stopped_at}]}`. `state` is `up` (a heartbeat within two leases), `stopped` (a clean stop) or
/// `lost` (silent: dead, or cut off from the database).
pub async fn hosts(State(app): State<Arc<App>>) -> Response {
    let d = &app.d;
    match d.store.hosts().await {
        Ok(rows) => {
            let now = d.store.clock_ms();
            let hosts: Vec<Value> = rows
                .iter()
                .map(|h| {
                    let state = host_state(h, now, d.lease);
                    json!({
                        "id": h.id,
                        "version": h.version,
                        "started_at": time(Some(h.started_at)),
                        "last_heartbeat": time(Some(h.heartbeat_at)),
                        "running": h.running,
                        "state": state,
                        "stopped_at": time(h.stopped_at),
                    })
                })
                .collect();
            axum::Json(json!({ "hosts": hosts })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `up` (a heartbeat within two leases), `stopped` (a clean stop) or `lost` (silent: dead,
/// or cut off from the database).
pub fn host_state(h: &HostRow, now: i64, lease: std::time::Duration) -> &'static str {
    if h.stopped_at.is_some() {
        "stopped"
    } else if now - h.heartbeat_at <= 2 * lease.as_millis() as i64 {
        "up"
    } else {
        "lost"
    }
}

pub async fn build(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let d = &app.d;
    match d.store.build(&id).await {
        Ok(Some(x)) => axum::Json(detail_json(&x)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no build {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/builds/{id}/sbom/{artifact}`: the artifact's SBOM, SPDX 2.3 JSON, as recorded.
pub async fn sbom(
    State(app): State<Arc<App>>,
    Path((id, artifact)): Path<(String, String)>,
) -> Response {
    let d = &app.d;
    if let Some(r) = no_such_build(d, &id).await {
        return r;
    }
    match d.store.sbom(&id, &artifact).await {
        Ok(Some(body)) => (
            [
                (header::CONTENT_TYPE, crate::sbom::MEDIA_TYPE),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; sandbox",
                ),
            ],
            body,
        )
            .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("build {id} recorded no SBOM for an artifact named {artifact:?}"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub async fn log(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let d = &app.d;
    if let Some(r) = no_such_build(d, &id).await {
        return r;
    }
    // The state's copy: every attempt, wherever it ran, numbered as the dashboard shows it.
    let mut text = Vec::new();
    let mut after = 0;
    loop {
        match d.store.log_lines(&id, after, 10_000).await {
            Ok(lines) if lines.is_empty() => break,
            Ok(lines) => {
                for (n, l) in lines {
                    text.extend_from_slice(l.as_bytes());
                    text.push(b'\n');
                    after = n;
                }
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    // A build logged before the state kept logs: this host's file, if it ran it. The id came
    // from the state, so it names a file of ours (no path tricks).
    if after == 0 {
        match tokio::fs::read(d.log_path(&id)).await {
            Ok(b) => text = b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Build output: never sniffed as anything else, never scripted.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox",
            ),
        ],
        text,
    )
        .into_response()
}

/// The admin token check: actions are off without `admin_token_file`, and need the token as
/// a bearer token with it (compared in constant time). The refusal, if any.
fn unauthorized(d: &Daemon, headers: &HeaderMap) -> Option<Response> {
    let cfg = d.config();
    let Some(token) = cfg.admin_token.as_ref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "actions are off: set admin_token_file in the daemon's config",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    use sha2::Digest;
    let (a, b) = (
        sha2::Sha256::digest(given.as_bytes()),
        sha2::Sha256::digest(token.expose().as_bytes()),
    );
    let same = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    if given.is_empty() || !same {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this action needs the admin token as a bearer token",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kiln\""),
        );
        return Some(r);
    }
    None
}

/// The answer to an action: 202 when the store did it; else why not: no such build (404) or
/// the wrong state for it (409).
async fn answer(
    d: &Daemon,
    id: &str,
    verb: &str,
    done: crate::state::Result<bool>,
    refusal: &str,
) -> Response {
    match done {
        Ok(true) => {
            tracing::info!(build = %id, "{verb} requested through the API");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"ok": true, "id": id})),
            )
                .into_response()
        }
        Ok(false) => match d.store.build_state(id).await {
            Ok(Some(state)) => error(
                StatusCode::CONFLICT,
                format!("build {id} is {}: {refusal}", state.as_str()),
            ),
            Ok(None) => error(StatusCode::NOT_FOUND, format!("no build {id}")),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /api/builds/{id}/cancel`: a queued build is cancelled at once; a running one is
/// stopped by the host running it (at its next lease renewal).
pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let d = &app.d;
    if let Some(r) = unauthorized(d, &headers) {
        return r;
    }
    let done = d.store.cancel(&id).await;
    let refusal = "only a queued or running build can be cancelled";
    answer(d, &id, "cancel", done, refusal).await
}

/// `POST /api/builds/{id}/rebuild`: a finished build runs again (same id, a new attempt;
/// its steps run again and its artifacts are published again when it succeeds).
pub async fn rebuild(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let d = &app.d;
    if let Some(r) = unauthorized(d, &headers) {
        return r;
    }
    let done = d.store.rebuild(&id).await;
    if matches!(done, Ok(true)) {
        d.wake_scheduler.notify_one();
    }
    let refusal = "only a finished build can be rebuilt";
    answer(d, &id, "rebuild", done, refusal).await
}
