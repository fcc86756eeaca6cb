//! Webhooks: `POST /hooks/<forge>`. The forge checks the delivery's signature and reads it; a
//! delivery seen before is dropped, a push to a watched repository starts an immediate check.
//! The answer comes at once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::json;

use super::{App, error};
use crate::daemon::Daemon;
use crate::forge::{HookEvent, WebhookError};
use crate::metrics::Metrics;

fn count(d: &Daemon, what: &str) {
    d.metrics
        .webhooks
        .get_or_create(&Metrics::status(what))
        .inc();
}

/// The webhook of the forges of `kind`, to mount at `/hooks/<kind>`.
pub fn route(kind: &'static str) -> MethodRouter<Arc<App>> {
    post(
        move |State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes| {
            receive(app, kind, headers, body)
        },
    )
}

/// A delivery to the webhook of the forge of `kind`.
async fn receive(app: Arc<App>, kind: &'static str, headers: HeaderMap, body: Bytes) -> Response {
    let d = &app.d;
    let Some(forge) = d.forge_of_kind(kind) else {
        count(d, "disabled");
        return error(
            StatusCode::NOT_FOUND,
            format!("webhooks are off: set {kind}.webhook_secret_file"),
        );
    };
    let delivery = match forge.webhook(&headers, &body) {
        Ok(delivery) => delivery,
        Err(WebhookError::Off(message)) => {
            count(d, "disabled");
            return error(StatusCode::NOT_FOUND, message);
        }
        Err(WebhookError::Rejected(message)) => {
            count(d, "rejected");
            tracing::warn!("webhook delivery with a missing or wrong signature refused");
            return error(StatusCode::UNAUTHORIZED, message);
        }
    };
    if let Some(id) = &delivery.id {
        match d.store.record_delivery(id).await {
            Ok(true) => {}
            Ok(false) => {
                count(d, "replayed");
                tracing::info!(delivery = %id, "webhook delivery seen before; ignored");
                return (
                    StatusCode::OK,
                    axum::Json(json!({"ok": true, "duplicate": true})),
                )
                    .into_response();
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    let (repo, event) = match delivery.event {
        HookEvent::Ping => {
            count(d, "ping");
            return axum::Json(json!({"ok": true, "pong": true})).into_response();
        }
        HookEvent::Malformed(message) => {
            count(d, "malformed");
            return error(StatusCode::BAD_REQUEST, message);
        }
        HookEvent::Other { .. } => return ignored(d),
        HookEvent::Push { repo, event } => (repo, event),
    };
    let watched = d
        .config()
        .repos
        .iter()
        .any(|r| r.name().eq_ignore_ascii_case(&repo));
    if !watched {
        return ignored(d);
    }
    count(d, "accepted");
    tracing::info!(
        repo,
        event,
        delivery = delivery.id.as_deref().unwrap_or(""),
        "webhook: checking the repository now"
    );
    let _ = d.pokes.send(repo);
    axum::Json(json!({"ok": true})).into_response()
}

/// A delivery about nothing kiln watches.
fn ignored(d: &Daemon) -> Response {
    count(d, "ignored");
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"ok": true, "ignored": true})),
    )
        .into_response()
}
