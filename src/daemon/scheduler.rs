//! Claiming jobs while there are free slots, and running each.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Daemon;
use super::lease::StopReason;
use super::worker;
use crate::runner::Runner;
use crate::state::Claim;

/// Claim jobs while there are free slots, and run each.
pub(super) async fn schedule(d: Arc<Daemon>, stop: CancellationToken, builds: TaskTracker) {
    let Some(runner) = engine(&d, &stop).await else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(d.config().concurrency));
    publish_warm_caches(&d).await;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let Some(claim) = next(&d, &stop).await else {
            return;
        };
        if stop.is_cancelled() {
            // Claimed while stopping: give it straight back.
            let _ = d.store.release(&claim.lease).await;
            return;
        }
        let cancel = CancellationToken::new();
        let why = StopReason::default();
        let id = (claim.lease.build_id.clone(), claim.lease.fence);
        d.running()
            .insert(id.clone(), (cancel.clone(), why.clone()));
        let (d2, runner) = (d.clone(), runner.clone());
        builds.spawn(async move {
            worker::run(d2.clone(), claim, runner, cancel, why).await;
            publish_warm_caches(&d2).await;
            d2.running().remove(&id);
            drop(permit);
        });
    }
}

/// The build engine, once it answers, with the containers of this state directory's runs
/// that died with an earlier process removed. `None` if `stop` came first.
async fn engine(d: &Daemon, stop: &CancellationToken) -> Option<Arc<dyn Runner>> {
    let runner = loop {
        match crate::runner::connect().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the build engine; no builds until it answers (retrying every 10s)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    };
    match runner
        .remove_labelled(worker::LABEL_INSTANCE, &d.instance)
        .await
    {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(containers = %gone.join(", "), "removed containers left by an earlier run")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot look for leftover containers"),
    }
    Some(runner)
}

/// The next job this host claims: at once when one is queued, else when woken or a second
/// later. `None` if `stop` came first.
async fn next(d: &Daemon, stop: &CancellationToken) -> Option<Claim> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let affinity = d.config().cache_affinity;
        match d.store.claim_near(&d.host_id, d.lease, affinity).await {
            Ok(Some(c)) => return Some(c),
            Ok(None) => {
                tokio::select! {
                    _ = d.wake_scheduler.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim jobs; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// Tell the farm which repositories this host holds warm build caches for, so their jobs
/// wait a moment for it (`cache_affinity`).
async fn publish_warm_caches(d: &Daemon) {
    let _one = d.warm_lock.lock().await;
    let dir = d.state_dir.join("cache");
    let metrics = crate::runner::cache::CacheMetrics::registered(&d.metrics);
    let repos = tokio::task::spawn_blocking(move || {
        let caches = crate::runner::cache::Caches::open(&dir, u64::MAX, metrics.clone())?;
        // The gauge from the records, also after a restart or a `kiln cache prune`.
        let bytes: u64 = caches.list()?.iter().map(|l| l.record.bytes).sum();
        metrics.bytes.set(bytes as i64);
        Ok::<_, crate::runner::cache::CacheError>(caches.warm_repos())
    })
    .await;
    let repos = match repos {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read the build caches");
            return;
        }
        Err(_) => return,
    };
    let slots = d.config().concurrency as u32;
    if let Err(e) = d.store.set_warm_caches(&d.host_id, slots, &repos).await {
        tracing::warn!(error = %e, "cannot record this host's warm caches");
    }
}

/// Keep the gauges that come from the state current.
pub(super) async fn gauges(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        if let Ok(n) = d.store.queue_depth().await {
            d.metrics.queue_depth.set(n as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
