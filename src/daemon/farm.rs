//! The farm's roles: this host's heartbeat, and the poller role (one host of a farm polls the
//! forges at a time).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::sync::lock;

/// The farm role whose holder polls the forges.
pub const ROLE_POLLER: &str = "poller";

impl Daemon {
    /// Whether this host polls now: it holds the poller role, and its lease on it has not run
    /// out even if the last renewal still hangs.
    pub fn polls(&self) -> bool {
        self.poller.load(Ordering::SeqCst)
            && lock(&self.poller_until).is_some_and(|t| std::time::Instant::now() < t)
    }
}

/// Record this host's heartbeat, and take or keep the poller role (another host takes it
/// once this one stops renewing).
pub(super) async fn farm_beat(d: &Daemon) {
    // A database call that hangs (a partition) must not keep a stale role: each call gets a
    // third of the lease, and the role counts only until its lease would run out.
    let limit = d.lease / 3;
    let running = d.running().len() as u32;
    let beat = d.store.heartbeat(
        &d.host_id,
        &d.instance,
        env!("CARGO_PKG_VERSION"),
        d.started_at,
        running,
    );
    match tokio::time::timeout(limit, beat).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this host's heartbeat"),
        Err(_) => tracing::warn!("the database did not record this host's heartbeat in time"),
    }
    let asked = std::time::Instant::now();
    let leads = match tokio::time::timeout(limit, d.store.lead(ROLE_POLLER, &d.host_id, d.lease))
        .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot renew the poller role; not polling until the database answers");
            false
        }
        Err(_) => {
            tracing::warn!("the database did not answer the poller role in time; not polling");
            false
        }
    };
    *lock(&d.poller_until) = leads.then(|| asked + d.lease - limit);
    if d.poller.swap(leads, Ordering::SeqCst) != leads {
        if leads {
            tracing::info!("this host polls the forges for the farm now");
        } else {
            tracing::info!("another host polls the forges now");
        }
    }
}

/// [`farm_beat`] every third of the lease; on stop, resign the role and record the stop.
pub(super) async fn farm(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(d.lease / 3) => {}
            _ = stop.cancelled() => break,
        }
        farm_beat(&d).await;
    }
    d.poller.store(false, Ordering::SeqCst);
    *lock(&d.poller_until) = None;
    let _ = d.store.resign(ROLE_POLLER, &d.host_id).await;
    let _ = d.store.host_stopped(&d.host_id).await;
}
