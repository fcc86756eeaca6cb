//! Keeping leases alive, on a thread and runtime of their own.
//!
//! A busy build must never starve its own heartbeat (a lesson from actions/runner and
//! buildkite-agent): the keeper renews every held lease every third of its duration from a
//! dedicated OS thread with its own single-threaded runtime, so neither the build's blocking
//! work nor a crowded async runtime can delay it. It keeps renewing through a graceful stop.
//! When a lease is lost, or cannot be renewed before it expires (the database is away), the
//! build is cancelled: a host that cannot prove its lease publishes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::state::{JobStore, Lease, Renewal};

/// Why a job's token was cancelled.
pub const STOP_SHUTDOWN: u8 = 1;
pub const STOP_LEASE_LOST: u8 = 2;
pub const STOP_CANCEL_REQUESTED: u8 = 3;

/// Why a running job was stopped, set before its token is cancelled.
#[derive(Clone, Default)]
pub struct StopReason(Arc<AtomicU8>);

impl StopReason {
    /// Record `why` unless a reason is already set; returns the reason that stands.
    pub fn set(&self, why: u8) -> u8 {
        match self
            .0
            .compare_exchange(0, why, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => why,
            Err(existing) => existing,
        }
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Hold {
    lease: Lease,
    cancel: CancellationToken,
    why: StopReason,
    /// Cancelled when the job ends: stop renewing.
    done: CancellationToken,
    last_ok: Instant,
}

/// Renews leases from its own thread.
#[derive(Clone)]
pub struct LeaseKeeper {
    tx: tokio::sync::mpsc::UnboundedSender<Hold>,
}

/// Stops renewing its lease when dropped.
pub struct HoldGuard {
    done: CancellationToken,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl LeaseKeeper {
    /// Start the keeper thread. `duration` is the lease length; renewals happen every third.
    /// Start the keeper on a thread and runtime of its own, with a store `open` makes there
    /// (its own connection); returns once that store is open.
    pub async fn start<F>(open: F, duration: Duration) -> Result<LeaseKeeper, DaemonError>
    where
        F: FnOnce() -> futures_util::future::BoxFuture<
                'static,
                Result<Arc<dyn JobStore>, DaemonError>,
            > + Send
            + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Hold>();
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| DaemonError::LeaseKeeper {
                op: "runtime",
                source,
            })?;
        std::thread::Builder::new()
            .name("kiln-lease".into())
            .spawn(move || {
                rt.block_on(async move {
                    let store = match open().await {
                        Ok(s) => {
                            let _ = opened_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    let mut holds: Vec<Hold> = Vec::new();
                    let mut tick = tokio::time::interval(duration / 3);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            h = rx.recv() => match h {
                                Some(h) => holds.push(h),
                                None if holds.is_empty() => return,
                                None => {}
                            },
                            _ = tick.tick() => {
                                holds.retain(|h| !h.done.is_cancelled());
                                for h in &mut holds {
                                    renew(store.as_ref(), h, duration).await;
                                }
                                holds.retain(|h| !h.done.is_cancelled() && h.why.get() != STOP_LEASE_LOST);
                            }
                        }
                    }
                })
            })
            .map_err(|source| DaemonError::LeaseKeeper {
                op: "thread",
                source,
            })?;
        match opened.await {
            Ok(Ok(())) => Ok(LeaseKeeper { tx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DaemonError::LeaseKeeper {
                op: "thread",
                source: std::io::Error::other("it ended before opening its store"),
            }),
        }
    }

    /// Keep `lease` alive until the guard drops; cancel `cancel` (with `why` set) when it is
    /// lost or a cancellation of the build was asked for.
    pub fn hold(&self, lease: Lease, cancel: CancellationToken, why: StopReason) -> HoldGuard {
        let done = CancellationToken::new();
        let _ = self.tx.send(Hold {
            lease,
            cancel,
            why,
            done: done.clone(),
            last_ok: Instant::now(),
        });
        HoldGuard { done }
    }
}

async fn renew(store: &dyn JobStore, h: &mut Hold, duration: Duration) {
    // A renewal that hangs (a partition) counts as failed after a third of the lease, so a
    // build whose lease ran out is still cancelled.
    let answer = match tokio::time::timeout(duration / 3, store.renew(&h.lease, duration)).await {
        Ok(a) => a,
        Err(_) => Err(crate::state::StateError::Timeout("renewing the lease")),
    };
    match answer {
        Ok(Renewal::Held) => h.last_ok = Instant::now(),
        Ok(Renewal::CancelRequested) => {
            h.last_ok = Instant::now();
            if h.why.set(STOP_CANCEL_REQUESTED) == STOP_CANCEL_REQUESTED {
                tracing::info!(build = %h.lease.build_id, "cancellation requested");
            }
            h.cancel.cancel();
        }
        Ok(Renewal::Lost) => {
            tracing::warn!(build = %h.lease.build_id, "lease lost; stopping the build, it publishes nothing");
            h.why.set(STOP_LEASE_LOST);
            h.cancel.cancel();
        }
        Err(e) => {
            // Keep trying while the lease may still be ours; past its expiry it is not.
            if h.last_ok.elapsed() >= duration {
                tracing::warn!(build = %h.lease.build_id, error = %e, "cannot renew the lease before it expires; stopping the build");
                h.why.set(STOP_LEASE_LOST);
                h.cancel.cancel();
            } else {
                tracing::warn!(build = %h.lease.build_id, error = %e, "lease renewal failed; retrying");
            }
        }
    }
}
