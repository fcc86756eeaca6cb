//! The daemon's HTTP side: health, metrics, the build API, build logs, the GitHub webhook
//! and the dashboard. It reads the state and pokes triggers; it never runs a build itself.

pub mod dashboard;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::daemon::metrics::Metrics;
use crate::state::{BuildDetail, BuildQuery, BuildRow, BuildState, HostRow};

/// The routes, over the daemon's shared state.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/builds/{id}", get(dashboard::build_page))
        .route("/builds/{id}/events", get(dashboard::events))
        .route("/assets/kiln.css", get(dashboard::css))
        .route("/assets/kiln.js", get(dashboard::js))
        .route("/favicon.ico", get(dashboard::favicon))
        .route("/api/builds/{id}/cancel", post(dashboard::cancel))
        .route("/api/builds/{id}/rebuild", post(dashboard::rebuild))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/builds", get(builds))
        .route("/api/builds/{id}", get(build))
        .route("/api/hosts", get(hosts))
        .route("/badges/local.svg", get(local_badge))
        .route("/badges/{owner}/{repo}/{*branch}", get(github_badge))
        .route("/builds/{id}/log", get(log))
        .route("/hooks/github", post(github_hook))
        .with_state(d)
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
fn time(ms: Option<i64>) -> Value {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

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

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    match d.store.queue_depth().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("state: {e}")),
    }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
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
struct ListQuery {
    repo: Option<String>,
    state: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

async fn builds(State(d): State<Arc<Daemon>>, Query(q): Query<ListQuery>) -> Response {
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
async fn hosts(State(d): State<Arc<Daemon>>) -> Response {
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

async fn build(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match d.store.build(&id).await {
        Ok(Some(x)) => axum::Json(detail_json(&x)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no build {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The answer when build `id` is not there (404) or the state cannot say (503): one indexed
/// read, for endpoints that need only to know the build exists.
pub(crate) async fn no_such_build(d: &Daemon, id: &str) -> Option<Response> {
    match d.store.build_state(id).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(error(StatusCode::NOT_FOUND, format!("no build {id}"))),
        Err(e) => Some(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn log(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    if let Some(r) = no_such_build(&d, &id).await {
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

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    use hmac::Mac;
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn count(d: &Daemon, what: &str) {
    d.metrics
        .webhooks
        .get_or_create(&Metrics::status(what))
        .inc();
}

async fn github_hook(State(d): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = d.config();
    let Some(secret) = cfg.github.as_ref().and_then(|g| g.webhook_secret.clone()) else {
        count(&d, "disabled");
        return error(
            StatusCode::NOT_FOUND,
            "webhooks are off: set github.webhook_secret_file",
        );
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !signature_ok(secret.expose().as_bytes(), &body, h("x-hub-signature-256")) {
        count(&d, "rejected");
        tracing::warn!("webhook delivery with a missing or wrong signature refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "bad or missing X-Hub-Signature-256",
        );
    }
    let event = h("x-github-event").to_owned();
    let delivery = h("x-github-delivery").to_owned();
    if !delivery.is_empty() {
        match d.store.record_delivery(&delivery).await {
            Ok(true) => {}
            Ok(false) => {
                count(&d, "replayed");
                tracing::info!(delivery, "webhook delivery seen before; ignored");
                return (
                    StatusCode::OK,
                    axum::Json(json!({"ok": true, "duplicate": true})),
                )
                    .into_response();
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    if event == "ping" {
        count(&d, "ping");
        return axum::Json(json!({"ok": true, "pong": true})).into_response();
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            count(&d, "malformed");
            return error(StatusCode::BAD_REQUEST, format!("payload is not JSON: {e}"));
        }
    };
    let repo = payload["repository"]["full_name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let watched = cfg
        .repos
        .iter()
        .any(|r| r.name().eq_ignore_ascii_case(&repo));
    if !watched || !matches!(event.as_str(), "push" | "create") {
        count(&d, "ignored");
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"ok": true, "ignored": true})),
        )
            .into_response();
    }
    count(&d, "accepted");
    tracing::info!(
        repo,
        event,
        delivery,
        "webhook: checking the repository now"
    );
    let _ = d.pokes.send(repo);
    axum::Json(json!({"ok": true})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        // From GitHub's documentation on validating webhook deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok(secret, body, good));
        assert!(!signature_ok(secret, b"Hello, World?", good));
        assert!(!signature_ok(b"other", body, good));
        assert!(!signature_ok(secret, body, "sha1=abc"));
        assert!(!signature_ok(secret, body, "sha256=zz"));
        assert!(!signature_ok(secret, body, ""));
    }
}

/// `GET /badges/{owner}/{repo}/{branch}.svg`: the status badge of a GitHub repository's
/// branch (the branch may hold slashes).
async fn github_badge(
    State(d): State<Arc<Daemon>>,
    Path((owner, repo, branch)): Path<(String, String, String)>,
) -> Response {
    let Some(branch) = branch.strip_suffix(".svg") else {
        return error(StatusCode::NOT_FOUND, "badges end in .svg");
    };
    badge(&d, &format!("{owner}/{repo}"), branch).await
}

#[derive(Deserialize)]
struct LocalBadge {
    path: String,
    branch: Option<String>,
}

/// `GET /badges/local.svg?path=/srv/git/widget.git&branch=main`: the badge of a local
/// repository (`path = ...` in the config; `branch` defaults to `main`).
async fn local_badge(State(d): State<Arc<Daemon>>, Query(q): Query<LocalBadge>) -> Response {
    badge(&d, &q.path, q.branch.as_deref().unwrap_or("main")).await
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
