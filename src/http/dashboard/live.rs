//! A build's log, live: `GET /builds/{id}/events` as Server-Sent Events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::http::{App, error, no_such_build};
use crate::state::BuildState;

/// Live logs streamed at once by one daemon; one more is refused (503) until one ends.
pub const MAX_LIVE_LOGS: usize = 256;
/// How often a live log looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(400);

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
}

/// `GET /builds/{id}/events`: the log as Server-Sent Events, one per line, its `id` the
/// line's number and its data the line as a JSON string (so empty lines and any text
/// survive); a `state` event when the build's state changes; an `end` event once the build
/// finished and every line was sent. Starts after `Last-Event-ID` (a reconnect) or `?after=`.
pub async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    // The cap first: a refusal costs no read of the state.
    let Ok(permit) = app.live_logs.clone().try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_LIVE_LOGS} live logs are open already; try again later"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    };
    if let Some(r) = no_such_build(&app.d, &id).await {
        return r;
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = resume.or(q.after).unwrap_or(0);
    let follow = Follow {
        app,
        id,
        after,
        queue: VecDeque::from([Event::default().retry(Duration::from_millis(1000))]),
        state: None,
        done: false,
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok::<_, Infallible>(e), f))
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A live log's position.
struct Follow {
    app: Arc<App>,
    id: String,
    after: u64,
    queue: VecDeque<Event>,
    state: Option<BuildState>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follow {
    /// One read of the state per tick while nothing happens: the build's state and how far
    /// its log goes, together; lines are read only when there are new ones.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done || self.app.stop.is_cancelled() {
                return None;
            }
            let (state, end) = match self.app.d.store.progress(&self.id).await {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(_) => {
                    self.pause().await;
                    continue;
                }
            };
            // Lines first (up to the end read with the state), then the state.
            if end > self.after + 1 {
                if !matches!(self.read_lines().await, Ok(true)) {
                    self.pause().await;
                }
                continue;
            }
            if self.state != Some(state) {
                self.state = Some(state);
                self.queue
                    .push_back(Event::default().event("state").data(state.as_str()));
            }
            if state.is_terminal() {
                // Lines are stored before the end is recorded, and `end` was read with the
                // final state: every line has been sent.
                self.queue
                    .push_back(Event::default().event("end").data(state.as_str()));
                self.done = true;
                continue;
            }
            if self.queue.is_empty() {
                self.pause().await;
            }
        }
    }

    /// Wait a little, or until the server stops.
    async fn pause(&self) {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = self.app.stop.cancelled() => {}
        }
    }

    /// Queue the lines after `self.after`: whether there were any.
    async fn read_lines(&mut self) -> Result<bool, ()> {
        let lines = self
            .app
            .d
            .store
            .log_lines(&self.id, self.after, 1000)
            .await
            .map_err(|_| ())?;
        let any = !lines.is_empty();
        for (n, line) in lines {
            self.after = n;
            let data = serde_json::to_string(&line).unwrap_or_default();
            self.queue
                .push_back(Event::default().id(n.to_string()).data(data));
        }
        Ok(any)
    }
}
