//! Triggers: each repository's forge asked for its heads (polled, conditional, jittered and
//! rate-limit aware, by the host holding the poller role; or watched on disk), webhook pokes,
//! and the config file watched for reloads.
//!
//! Every trigger ends in [`trigger`]: a head that changed becomes a job, inserted once per
//! repo, commit and recipe whoever found it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::config::{Config, Repo, tag_matches};
use crate::forge::{Forge, ForgeError, Watch};
use crate::retry::fraction as jitter;
use crate::state::NewJob;

/// A marker head: the tags a repo had when kiln first saw them were recorded, not built.
const TAGS_BASELINE: &str = "kiln:tags-baseline";

/// `git_ref` of `repo` points at `commit`: queue a build if that is news.
pub async fn trigger(d: &Daemon, repo: &Repo, git_ref: &str, commit: &str) {
    let (name, recipe) = (repo.name(), repo.recipe_key());
    if !crate::source::mirror::is_object_name(commit) {
        tracing::warn!(repo = %name, git_ref, "ignoring a head that is not a commit SHA");
        return;
    }
    match d.store.head(&name, &recipe, git_ref).await {
        Ok(Some(h)) if h == commit => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(repo = %name, error = %e, "cannot read the last head");
            return;
        }
    }
    let job = NewJob {
        repo: name.clone(),
        commit: commit.to_owned(),
        recipe,
        git_ref: git_ref.to_owned(),
    };
    match d.store.enqueue(&job).await {
        Ok(e) if e.created => {
            tracing::info!(repo = %name, git_ref, commit, build = %e.build_id, "new commit: build queued");
            d.wake_scheduler.notify_one();
        }
        Ok(e) => {
            tracing::info!(repo = %name, git_ref, commit, build = %e.build_id, state = e.state.as_str(), "ref moved to a commit kiln already has");
            if e.state == crate::state::BuildState::Success {
                d.wake_retag.notify_one();
            }
        }
        Err(e) => tracing::warn!(repo = %name, error = %e, "cannot queue a build"),
    }
}

/// Tags of `repo` matching its glob: build the new ones. On the very first look every tag
/// (matching or not, so that widening the glob later builds no history) is recorded as it
/// is, without building.
async fn tags_seen(d: &Daemon, repo: &Repo, tags: Vec<(String, String)>) {
    let Some(glob) = &repo.tags else { return };
    let (name, recipe) = (repo.name(), repo.recipe_key());
    let first = match d.store.head(&name, &recipe, TAGS_BASELINE).await {
        Ok(h) => h.is_none(),
        Err(e) => {
            tracing::warn!(repo = %name, error = %e, "cannot read the tags seen so far; skipping this round");
            return;
        }
    };
    for (t, sha) in tags {
        let r = format!("refs/tags/{t}");
        if first {
            if d.store.set_head(&name, &recipe, &r, &sha).await.is_err() {
                return;
            }
        } else if tag_matches(glob, &t) {
            trigger(d, repo, &r, &sha).await;
        }
    }
    if first {
        let _ = d.store.set_head(&name, &recipe, TAGS_BASELINE, "-").await;
    }
}

/// Run every repository's trigger for the current config until `stop`, restarting them when
/// the config changes.
pub async fn triggers(d: Arc<Daemon>, stop: CancellationToken) {
    let mut changes = d.config_tx.subscribe();
    loop {
        let generation = stop.child_token();
        let cfg = d.config();
        let mut tasks = tokio::task::JoinSet::new();
        for repo in cfg.repos.clone() {
            let Some(forge) = d.forge(&repo) else {
                continue;
            };
            let (d, g) = (d.clone(), generation.clone());
            match forge.watch() {
                Watch::Poll { every } => {
                    tasks.spawn(async move { poll(d, repo, forge, every, g).await });
                }
                Watch::Notify { fallback } => {
                    tasks.spawn(async move { follow(d, repo, forge, fallback, g).await });
                }
            }
        }
        tokio::select! {
            r = changes.changed() => {
                generation.cancel();
                while tasks.join_next().await.is_some() {}
                if r.is_err() {
                    return;
                }
            }
            _ = stop.cancelled() => {
                generation.cancel();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Ask the forge for the heads of `repo`'s branches (and its tags, when it builds tags), and
/// trigger on each.
async fn check(d: &Daemon, forge: &dyn Forge, repo: &Repo) -> Result<(), ForgeError> {
    let name = repo.name();
    let seen = forge
        .snapshot(&name, &repo.branches, repo.tags.is_some())
        .await?;
    for (branch, head) in seen.heads {
        match head {
            Some(sha) => trigger(d, repo, &format!("refs/heads/{branch}"), &sha).await,
            None => tracing::debug!(repo = %name, branch, "no such branch (yet)"),
        }
    }
    if let Some(tags) = seen.tags {
        tags_seen(d, repo, tags).await;
    }
    Ok(())
}

/// A polled repository: checked every `interval` (±10 %) while this host holds the poller
/// role, and at once when a webhook pokes it.
async fn poll(
    d: Arc<Daemon>,
    repo: Repo,
    forge: Arc<dyn Forge>,
    interval: Duration,
    stop: CancellationToken,
) {
    let name = repo.name();
    let mut pokes = d.pokes.subscribe();
    // Spread the first polls (over half the interval, at most 30 s), so a hundred repos do
    // not all poll at once.
    let mut next = Instant::now()
        + interval
            .min(Duration::from_secs(60))
            .mul_f64(jitter() * 0.5);
    let mut failures: u32 = 0;
    loop {
        let mut poked = false;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            p = pokes.recv() => match p {
                Ok(r) if r.eq_ignore_ascii_case(&name) => {
                    tracing::debug!(repo = %name, "webhook: checking now");
                    poked = true;
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        }
        // In a farm one host polls (see `farm`); the others only answer their webhooks, and
        // look again soon in case the poller role comes to them.
        if !poked && !d.polls() {
            next = Instant::now() + interval.min(d.lease / 3);
            continue;
        }
        if let Some(until) = forge.paused_until().await {
            next = until;
            continue;
        }
        match check(&d, forge.as_ref(), &repo).await {
            Ok(()) => {
                failures = 0;
                // Each repo keeps its own jittered rhythm: ±10% around the interval.
                next = Instant::now() + interval.mul_f64(0.9 + 0.2 * jitter());
            }
            Err(ForgeError::RateLimited { until, .. }) => {
                next = until;
            }
            Err(e) => {
                failures += 1;
                let wait = interval.min(Duration::from_secs(5) * failures.min(12));
                if failures <= 3 || failures.is_multiple_of(10) {
                    tracing::warn!(repo = %name, error = %e, failures, "polling failed");
                }
                next = Instant::now() + wait;
            }
        }
    }
}

/// A watched repository: checked whenever its forge says it changed, and every `fallback`.
async fn follow(
    d: Arc<Daemon>,
    repo: Repo,
    forge: Arc<dyn Forge>,
    fallback: Duration,
    stop: CancellationToken,
) {
    let name = repo.name();
    let mut changes = loop {
        match forge.changes(&name, &stop).await {
            Ok(c) => break c,
            Err(_) if stop.is_cancelled() => return,
            Err(e) => {
                tracing::warn!(repo = %name, error = %e, "not a readable git repository; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(fallback) => {}
            _ = stop.cancelled() => return,
        }
    };
    loop {
        if let Err(e) = check(&d, forge.as_ref(), &repo).await {
            tracing::warn!(repo = %name, error = %e, "cannot read the repository's refs");
        }
        tokio::select! {
            got = changes.next() => {
                if got.is_none() {
                    return;
                }
            }
            _ = tokio::time::sleep(fallback) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Reload the config when its file changes or on SIGHUP. A config that does not check is
/// logged, and the running one kept.
pub async fn reload_on_change(d: Arc<Daemon>, path: PathBuf, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = {
        use notify::Watcher;
        let file = path.file_name().map(|f| f.to_owned());
        let tx = tx.clone();
        let w = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
            if let Ok(e) = r
                && !e.kind.is_access()
                && e.paths.iter().any(|p| p.file_name() == file.as_deref())
            {
                let _ = tx.send(());
            }
        });
        match w {
            Ok(mut w) => {
                // The directory, so that an editor's write-and-rename is seen too.
                let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
                if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads it");
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads it");
                None
            }
        }
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            got = rx.recv() => {
                if got.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("SIGHUP: reloading the config");
            }
            _ = stop.cancelled() => return,
        }
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&p)).await;
        match loaded {
            Ok(Ok(new)) => d.apply(new),
            Ok(Err(e)) => {
                tracing::error!("the new config is invalid; keeping the running one:\n{e}")
            }
            Err(_) => {}
        }
    }
}
