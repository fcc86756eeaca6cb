//! The status outbox: commit statuses recorded in the state (fenced, in order per context),
//! sent to the repositories' forges, spaced and retried by the forges' clients.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::forge::{Forge, ForgeError};
use crate::metrics::Metrics;
use crate::state::StatusRow;

/// Send queued commit statuses, oldest first, until `stop`.
pub(super) async fn send_statuses(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        let batch = match d
            .store
            .claim_statuses(&d.host_id, Duration::from_secs(120), 20)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the status outbox");
                Vec::new()
            }
        };
        let idle = batch.is_empty();
        for s in batch {
            if stop.is_cancelled() {
                return;
            }
            let (ok, retry_in) = match d.forge_of(&s.repo) {
                // Its forge may come back with a reload.
                None if crate::forge::kind_claiming(&s.repo).is_some() => {
                    (false, Duration::from_secs(60))
                }
                // No forge could ever take it.
                None => (true, Duration::ZERO),
                Some(f) if !f.has_statuses() => (true, Duration::ZERO),
                Some(f) => match send(&d, f.as_ref(), &s, &stop).await {
                    Some(sent) => sent,
                    None => return,
                },
            };
            let _ = d.store.status_sent(s.id, ok, retry_in).await;
        }
        if idle {
            tokio::select! {
                _ = d.wake_outbox.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Send one status: whether it is done with (sent, or refused for good), and when to try
/// again if not. `None` if `stop` came first.
async fn send(
    d: &Daemon,
    forge: &dyn Forge,
    s: &StatusRow,
    stop: &CancellationToken,
) -> Option<(bool, Duration)> {
    // Claimed before by a sender that died: it may be on the forge already. Look first, so a
    // crash never makes a second terminal status.
    if s.claims > 1 {
        let already = forge
            .has_status(&s.repo, &s.commit, &s.status)
            .await
            .unwrap_or(false);
        if already {
            tracing::info!(context = %s.status.context, state = %s.status.state, "commit status already on the forge (sent before a restart)");
            return Some((true, Duration::ZERO));
        }
    }
    let sent = tokio::select! {
        r = forge.post_status(&s.repo, &s.commit, &s.status) => r,
        _ = stop.cancelled() => return None,
    };
    let count = |result: &str| {
        d.metrics
            .statuses
            .get_or_create(&Metrics::label(result))
            .inc()
    };
    Some(match sent {
        Ok(()) => {
            tracing::info!(repo = %s.repo, commit = %s.commit, context = %s.status.context, state = %s.status.state, "commit status sent");
            count("sent");
            (true, Duration::ZERO)
        }
        Err(e) if e.is_retryable() => {
            let wait = match &e {
                ForgeError::RateLimited { until, .. } => {
                    until.saturating_duration_since(std::time::Instant::now())
                }
                _ => Duration::from_secs(5 << s.attempts.min(7)),
            };
            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "commit status not sent; will retry");
            count("failed");
            (false, wait)
        }
        Err(e) => {
            tracing::error!(error = %e, context = %s.status.context, "the forge refused a commit status; dropping it");
            count("failed");
            (true, Duration::ZERO)
        }
    })
}
