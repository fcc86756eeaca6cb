//! The daemon's HTTP side: health, metrics, the build API and its actions (`api.rs`),
//! webhooks (`hooks.rs`), badges (`badges.rs`) and the dashboard (`dashboard/`). It reads the
//! state, pokes triggers and queues or cancels builds; it never runs a build itself.

mod api;
mod badges;
pub mod dashboard;
mod hooks;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use api::host_state;

use crate::daemon::Daemon;

/// What every handler shares: the daemon it reads, and what the HTTP side keeps itself.
pub struct App {
    pub d: Arc<Daemon>,
    /// Fires when the server stops: long-lived answers (a live log) end then, so the
    /// graceful shutdown does not wait on an open browser tab.
    pub stop: CancellationToken,
    /// Live logs being streamed: each holds a permit, so open tabs cannot load the state
    /// without bound.
    pub live_logs: Arc<tokio::sync::Semaphore>,
}

/// The routes, over the daemon's shared state; long answers end when `stop` fires.
pub fn router(d: Arc<Daemon>, stop: CancellationToken) -> Router {
    let app = Arc::new(App {
        d,
        stop,
        live_logs: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_LIVE_LOGS)),
    });
    Router::new()
        .route("/", get(dashboard::index))
        .route("/builds/{id}", get(dashboard::build_page))
        .route("/builds/{id}/events", get(dashboard::events))
        .route("/assets/kiln.css", get(dashboard::css))
        .route("/assets/kiln.js", get(dashboard::js))
        .route("/favicon.ico", get(dashboard::favicon))
        .route("/api/builds/{id}/cancel", post(api::cancel))
        .route("/api/builds/{id}/rebuild", post(api::rebuild))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/api/builds", get(api::builds))
        .route("/api/builds/{id}", get(api::build))
        .route("/api/hosts", get(api::hosts))
        .route("/badges/local.svg", get(badges::local))
        .route("/badges/{owner}/{repo}/{*branch}", get(badges::repo))
        .route("/builds/{id}/log", get(api::log))
        .route("/api/builds/{id}/sbom/{artifact}", get(api::sbom))
        .route("/hooks/github", hooks::route("github"))
        .with_state(app)
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
pub(crate) fn time(ms: Option<i64>) -> Value {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
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
