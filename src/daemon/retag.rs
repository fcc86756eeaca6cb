//! Tags for refs that reach a commit after its build finished (a release tag on a built
//! commit, a branch fast-forwarded onto one): the published manifest is put under the new
//! tags, nothing is rebuilt.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::tags::tags_for;
use crate::publish::Target;
use crate::state::UntaggedRef;

/// Tag published builds for refs that reached them after they finished.
pub(super) async fn retagger(d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        retag_pending(&d, &stop).await;
        tokio::select! {
            _ = d.wake_retag.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Move the tags of refs that reached a commit after its build finished (a release tag on a
/// built commit, a branch fast-forwarded onto one). Nothing is rebuilt: the published
/// manifest is put under the new tags.
pub async fn retag_pending(d: &Arc<Daemon>, cancel: &CancellationToken) {
    let pending = match d.store.untagged_refs(50).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read refs to tag");
            return;
        }
    };
    let target = d.target();
    for u in pending {
        let _tagging = d.tag_lock.lock().await;
        retag_ref(d, target.as_ref(), &u, cancel).await;
    }
}

/// Move the tags of one ref to its build's published artifacts; mark the ref tagged once
/// they moved (or cannot ever move).
async fn retag_ref(d: &Daemon, target: &dyn Target, u: &UntaggedRef, cancel: &CancellationToken) {
    let detail = match d.store.build(&u.build_id).await {
        Ok(Some(x)) => x,
        _ => return,
    };
    let is_head = d
        .store
        .head(&u.repo, &detail.build.recipe, &u.git_ref)
        .await
        .ok()
        .flatten()
        .is_some_and(|h| h == u.commit);
    let tags: Vec<String> = tags_for(&u.commit, &[(u.git_ref.clone(), is_head)])
        .into_iter()
        .skip(1) // the SHA tag is there already
        .collect();
    let mut done = true;
    for a in &detail.build.artifacts {
        if let Err(e) = target.retag(&a.to_artifact(), &tags, cancel).await {
            if e.is_retryable() {
                tracing::warn!(build = %u.build_id, git_ref = %u.git_ref, error = %e, "could not tag a published artifact; will retry");
                done = false;
            } else {
                tracing::error!(build = %u.build_id, git_ref = %u.git_ref, error = %e, "cannot tag a published artifact; giving up on this ref");
            }
        }
    }
    if !done {
        return;
    }
    if !tags.is_empty() {
        tracing::info!(build = %u.build_id, git_ref = %u.git_ref, tags = %tags.join(", "), "tagged a published build for a ref");
    }
    let _ = d.store.mark_tagged(&u.build_id, &u.git_ref).await;
    if is_head {
        recheck_heads(
            d,
            &u.repo,
            &detail.build.recipe,
            &u.commit,
            std::slice::from_ref(&u.git_ref),
        )
        .await;
    }
}

/// After moving the tags of `refs` to `commit`: a ref whose head moved meanwhile (another
/// host of the farm may have tagged the new head in between, and been overtaken by this
/// move) gets its head's tags moved again, by the retagger.
pub(super) async fn recheck_heads(
    d: &Daemon,
    repo: &str,
    recipe: &str,
    commit: &str,
    refs: &[String],
) {
    for r in refs {
        match d.store.head(repo, recipe, r).await {
            Ok(Some(h)) if h != commit => {
                tracing::info!(repo, git_ref = %r, "the ref moved while its tags were moved; tagging its head again");
                if d.store.untag_head(repo, recipe, r).await.is_ok() {
                    d.wake_retag.notify_one();
                }
            }
            _ => {}
        }
    }
}
