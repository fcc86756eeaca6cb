//! Running one claimed job: the pipeline's stages with a record of each, publication fenced
//! by the lease, and an outcome that says whether to retry.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::config::{Repo, RepoSource};
use super::lease::{STOP_CANCEL_REQUESTED, STOP_LEASE_LOST, STOP_SHUTDOWN, StopReason};
use super::logship::LogShipper;
use crate::events::{Event, Observer};
use crate::pipeline::{self, ArtifactResult, Build, PipelineError, SourceSpec, Target};
use crate::runner::DockerRunner;
use crate::source::mirror::{FetchAuth, Mirror};
use crate::source::{CommitSource, SourceError};
use crate::state::{ArtifactRow, BuildState, Claim, Lease, NewStatus, Outcome, StepRow};
use crate::store::OciLayout;
use crate::text::short;

/// Runs of one job that failed for a reason worth retrying, before it is an error.
const MAX_RETRIES: u32 = 3;
/// Claims of one job before kiln stops trying: each one died with the process.
const MAX_CLAIMS: u32 = 6;
/// Label naming the host that ran a container, for cleaning up after a crash.
pub const LABEL_HOST: &str = "dev.kiln.host";
/// Label naming the daemon build a container belongs to.
pub const LABEL_JOB: &str = "dev.kiln.job";
/// Label naming the daemon instance (its state directory) that started a container: what a
/// restart cleans up. Host ids can repeat on one engine (two daemons on one machine); a
/// state directory cannot.
pub const LABEL_INSTANCE: &str = "dev.kiln.instance";

/// How a run of a job ended.
enum End {
    Finished(Outcome),
    RetryLater {
        error: String,
        delay: Duration,
    },
    /// A graceful stop: give the job back for the next start (or another host).
    Release,
    /// The lease was lost: another host may own the job now; record nothing.
    Abandon,
}

/// Append a line of kiln's own to the build log.
fn note(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "kiln: {line}");
    }
}

/// Tags for `commit` reached through `refs`: the full SHA always; a branch's name (which
/// moves) while the branch still points at this commit; a git tag's name, and for `vX.Y.Z`
/// also `X.Y.Z`. Names are made valid tags (`/` becomes `-`).
pub fn tags_for(commit: &str, refs: &[(String, bool)]) -> Vec<String> {
    let mut tags = vec![commit.to_owned()];
    for (r, is_head) in refs {
        if let Some(b) = r.strip_prefix("refs/heads/") {
            if *is_head && let Some(t) = tag_name(b) {
                tags.push(t);
            }
        } else if let Some(t) = r.strip_prefix("refs/tags/") {
            if let Some(n) = tag_name(t) {
                tags.push(n);
            }
            if let Some(v) = t.strip_prefix('v')
                && v.split(['-', '+']).next().is_some_and(|core| {
                    let parts: Vec<&str> = core.split('.').collect();
                    parts.len() == 3
                        && parts
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
                && let Some(n) = tag_name(v)
            {
                tags.push(n);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    tags
}

/// A ref name as a registry tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_name(name: &str) -> Option<String> {
    let mut t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while t.starts_with(['.', '-']) {
        t.remove(0);
    }
    t.truncate(128);
    (!t.is_empty()).then_some(t)
}

/// Where the daemon publishes: the configured registry, else the local layouts.
pub fn target(d: &Daemon) -> Target {
    match &d.config().registry {
        Some(r) => Target::Registry {
            prefix: r.url.clone(),
            options: crate::registry::RegistryOptions {
                ca_file: r.ca_file.clone(),
                insecure: r.insecure,
                retry: None,
            },
        },
        None => Target::Layout {
            root: d.state_dir.join("layout"),
        },
    }
}

/// The commit status context of an artifact, or of a recipe whose artifacts are not known.
fn context(name: &str) -> String {
    format!("kiln/{name}")
}

/// Run a claimed job to its end, and record the end.
pub async fn run(
    d: Arc<Daemon>,
    claim: Claim,
    runner: DockerRunner,
    cancel: CancellationToken,
    why: StopReason,
) {
    let started = Instant::now();
    let id = claim.lease.build_id.clone();
    let span =
        tracing::info_span!("build", id = %id, repo = %claim.repo, commit = %short(&claim.commit));
    let _hold = d
        .keeper
        .hold(claim.lease.clone(), cancel.clone(), why.clone());
    d.metrics.running.inc();
    let log = d.log_path(&id);
    // The log goes into the state as it grows, for the dashboard of every host.
    let stop_shipping = CancellationToken::new();
    let shipping = match LogShipper::new(d.store.clone(), claim.lease.clone(), log.clone()).await {
        Ok(s) => Some(tokio::spawn(s.follow(stop_shipping.clone()))),
        Err(e) => {
            tracing::warn!(error = %e, "the build log will not reach the state");
            None
        }
    };
    let end =
        tracing::Instrument::instrument(attempt(&d, &claim, &runner, &cancel, &why), span.clone())
            .await;
    d.metrics.running.dec();
    let lease = &claim.lease;
    // kiln's last word on this attempt, then the log is complete in the state before the
    // end is recorded (a page streaming it stops at the end).
    note(
        &log,
        &match &end {
            End::Finished(outcome) => format!(
                "build {}{}",
                outcome.state.as_str(),
                outcome
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            End::RetryLater { error, delay } => format!(
                "attempt {} failed ({error}); retrying in {}s",
                claim.attempt,
                delay.as_secs()
            ),
            End::Release => "stopped by a shutdown; the build will run again".to_owned(),
            End::Abandon => {
                "lease lost: another host takes over; this run published nothing".to_owned()
            }
        },
    );
    stop_shipping.cancel();
    if let Some(Ok(mut shipper)) = match shipping {
        Some(h) => Some(h.await),
        None => None,
    } {
        shipper.finish().await;
    }
    let _enter = span.enter();
    let recorded = match end {
        End::Finished(outcome) => {
            let result = outcome.state.as_str();
            match d.store.finish(lease, &outcome).await {
                Ok(true) => {
                    d.metrics
                        .builds
                        .get_or_create(&super::metrics::Metrics::label(result))
                        .inc();
                    d.metrics
                        .build_duration
                        .get_or_create(&super::metrics::Metrics::label(result))
                        .observe(started.elapsed().as_secs_f64());
                    match outcome.state {
                        BuildState::Success => tracing::info!(
                            artifacts = %outcome.artifacts.iter().map(|a| format!("{} {}", a.name, a.digest)).collect::<Vec<_>>().join(", "),
                            secs = format!("{:.1}", started.elapsed().as_secs_f64()),
                            "build succeeded"
                        ),
                        _ => tracing::warn!(
                            state = result,
                            error = outcome.error.as_deref().unwrap_or(""),
                            "build ended"
                        ),
                    }
                    d.wake_outbox.notify_one();
                    Ok(())
                }
                Ok(false) => {
                    tracing::warn!(
                        "lease lost before the result was recorded; another host has the job"
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        End::RetryLater { error, delay } => {
            tracing::warn!(error = %error, retry_in_s = delay.as_secs(), "build failed; it will be retried");
            d.store.retry_later(lease, &error, delay).await.map(|_| ())
        }
        End::Release => {
            tracing::info!("stopping: the job goes back to the queue");
            d.store.release(lease).await
        }
        End::Abandon => Ok(()),
    };
    if let Err(e) = recorded {
        // The lease will expire and the job run again; nothing was half-recorded.
        tracing::error!(error = %e, "could not record the end of the build");
    }
    d.wake_scheduler.notify_one();
}

/// Everything a stage failure needs to become an outcome.
struct Failure {
    error: PipelineError,
    /// Contexts to report on: the artifacts', once the recipe is known.
    contexts: Vec<String>,
    /// The lease was found lost: record nothing.
    lost: bool,
}

async fn attempt(
    d: &Arc<Daemon>,
    claim: &Claim,
    runner: &DockerRunner,
    cancel: &CancellationToken,
    why: &StopReason,
) -> End {
    let lease = &claim.lease;
    let log = d.log_path(&lease.build_id);
    note(
        &log,
        &format!(
            "attempt {} on {}: {} {} at {}",
            claim.attempt, d.host_id, claim.repo, claim.git_ref, claim.commit
        ),
    );
    tracing::info!(attempt = claim.attempt, git_ref = %claim.git_ref, "build started");
    let this_run = claim.attempt.saturating_sub(claim.runs_from);
    if this_run > MAX_CLAIMS {
        let msg = format!(
            "gave up after {} attempts: each one ended with the daemon",
            this_run - 1
        );
        return End::Finished(failed_outcome(d, claim, BuildState::Error, msg, Vec::new()).await);
    }
    let result = stages(d, claim, runner, cancel).await;
    match result {
        Ok(outcome) => End::Finished(outcome),
        Err(f) if f.lost => End::Abandon,
        Err(f) if f.error.is_cancelled() || cancel.is_cancelled() => match why.get() {
            STOP_LEASE_LOST => End::Abandon,
            STOP_CANCEL_REQUESTED => End::Finished(
                failed_outcome(
                    d,
                    claim,
                    BuildState::Cancelled,
                    "cancelled".into(),
                    f.contexts,
                )
                .await,
            ),
            STOP_SHUTDOWN => End::Release,
            _ => End::Release,
        },
        Err(f) if f.error.is_retryable() && this_run <= MAX_RETRIES => End::RetryLater {
            error: f.error.to_string(),
            delay: Duration::from_secs(15 * (1u64 << (this_run.max(1) - 1).min(5))),
        },
        Err(f) => {
            let state = if f.error.is_build_failure() {
                BuildState::Failure
            } else {
                BuildState::Error
            };
            End::Finished(failed_outcome(d, claim, state, f.error.to_string(), f.contexts).await)
        }
    }
}

/// A failed (or cancelled) outcome, with a terminal status for each context that was told
/// "pending", or for the recipe when none was.
async fn failed_outcome(
    d: &Daemon,
    claim: &Claim,
    state: BuildState,
    error: String,
    contexts: Vec<String>,
) -> Outcome {
    let mut contexts = contexts;
    if let Ok(earlier) = d.store.status_contexts(&claim.lease.build_id).await {
        contexts.extend(earlier);
    }
    contexts.sort();
    contexts.dedup();
    if contexts.is_empty() {
        contexts.push(context(&claim.recipe));
    }
    let status_state = match state {
        BuildState::Failure => "failure",
        _ => "error",
    };
    let first_line = error.lines().next().unwrap_or("").to_owned();
    let statuses = if d.is_github(&claim.repo) {
        contexts
            .into_iter()
            .map(|c| NewStatus {
                context: c,
                state: status_state.into(),
                description: crate::text::truncate(&first_line, 140),
                target_url: d.target_url(&claim.lease.build_id),
            })
            .collect()
    } else {
        Vec::new()
    };
    Outcome {
        state,
        error: Some(error),
        artifacts: Vec::new(),
        tagged_refs: Vec::new(),
        statuses,
    }
}

/// A stage run with its record: started, then finished with an outcome.
async fn staged<T>(
    d: &Daemon,
    lease: &Lease,
    attempt: u32,
    name: &str,
    log: &Path,
    f: impl std::future::Future<Output = Result<T, PipelineError>>,
) -> Result<T, PipelineError> {
    let _ = d.store.stage_started(lease, attempt, name).await;
    note(log, &format!("stage {name}"));
    let t = Instant::now();
    let r = f.await;
    let (outcome, detail) = match &r {
        Ok(_) => ("ok", None),
        Err(e) if e.is_cancelled() => ("cancelled", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    tracing::debug!(
        stage = name,
        outcome,
        ms = t.elapsed().as_millis() as u64,
        "stage finished"
    );
    let _ = d
        .store
        .stage_finished(lease, attempt, name, outcome, detail.as_deref())
        .await;
    r
}

/// The repository's config entry, its clone URL and the source URL to record.
async fn locate(
    d: &Daemon,
    claim: &Claim,
) -> Result<(Repo, String, String, Option<FetchAuth>), PipelineError> {
    let cfg = d.config();
    let repo = cfg
        .repos
        .iter()
        .find(|r| r.name() == claim.repo && r.recipe_key() == claim.recipe)
        .cloned()
        .ok_or_else(|| {
            PipelineError::Usage(format!(
                "{} (recipe {}) is no longer in the config",
                claim.repo, claim.recipe
            ))
        })?;
    match &repo.source {
        RepoSource::Path(p) => {
            let shown = p.display().to_string();
            Ok((repo.clone(), shown.clone(), shown, None))
        }
        RepoSource::GitHub { owner, name } => {
            let gh = d.github().ok_or_else(|| {
                PipelineError::Usage("a GitHub repository needs a [github] section".into())
            })?;
            let info = d.repo_info(&gh, owner, name).await?;
            // The token goes only to the GitHub host, over https.
            let auth = match (gh.token(), gh.git_host()) {
                (Some(t), Some(host)) => {
                    let base = format!("https://{host}/");
                    info.clone_url
                        .to_ascii_lowercase()
                        .starts_with(&base.to_ascii_lowercase())
                        .then(|| FetchAuth {
                            base,
                            token: t.clone(),
                        })
                }
                _ => None,
            };
            Ok((repo.clone(), info.clone_url, info.html_url, auth))
        }
    }
}

/// Observes a daemon build: steps into the state, pushed bytes into the metrics.
fn observer(
    d: &Arc<Daemon>,
    lease: &Lease,
    attempt: u32,
) -> (Arc<dyn Observer + Send + Sync>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StepRow>();
    let metrics = d.metrics.clone();
    let obs = move |e: &Event| match e {
        Event::StepStarted { index, command, .. } => {
            let _ = tx.send(StepRow {
                attempt,
                index: *index as u32,
                command: command.clone(),
                exit_code: None,
                millis: None,
            });
        }
        Event::StepFinished {
            index,
            exit_code,
            millis,
        } => {
            let _ = tx.send(StepRow {
                attempt,
                index: *index as u32,
                command: String::new(),
                exit_code: Some(*exit_code),
                millis: Some(*millis),
            });
        }
        Event::BlobPushed {
            size,
            how: "uploaded",
            ..
        } => {
            metrics.pushed_bytes.inc_by(*size);
        }
        _ => {}
    };
    let (store, lease) = (d.store.clone(), lease.clone());
    let recorder = tokio::spawn(async move {
        let mut commands: BTreeMap<u32, String> = BTreeMap::new();
        while let Some(mut s) = rx.recv().await {
            if s.exit_code.is_none() {
                commands.insert(s.index, s.command.clone());
            } else if let Some(c) = commands.get(&s.index) {
                s.command = c.clone();
            }
            let _ = store.step(&lease, s.attempt, &s).await;
        }
    });
    (Arc::new(obs), recorder)
}

async fn stages(
    d: &Arc<Daemon>,
    claim: &Claim,
    runner: &DockerRunner,
    cancel: &CancellationToken,
) -> Result<Outcome, Failure> {
    let lease = &claim.lease;
    let attempt = claim.attempt;
    let fail = |contexts: &[String]| {
        let contexts = contexts.to_vec();
        move |error: PipelineError| Failure {
            error,
            contexts,
            lost: false,
        }
    };
    let (obs, recorder) = observer(d, lease, attempt);
    let staging_root = d
        .state_dir
        .join("tmp")
        .join(format!("{}-{attempt}", lease.build_id));
    let _ = std::fs::remove_dir_all(&staging_root);
    let staging =
        OciLayout::open_or_create(&staging_root).map_err(|e| fail(&[])(PipelineError::Store(e)))?;
    let mut b = Build::new(
        lease.build_id.clone(),
        staging,
        &d.state_dir.join("logs"),
        cancel.clone(),
        obs,
    )
    .map_err(fail(&[]))?;
    let cfg = d.config();
    b.limits = cfg.limits.clone();
    b.limits.allow_network = cfg
        .repos
        .iter()
        .any(|r| r.name() == claim.repo && r.recipe_key() == claim.recipe && r.allow_network);
    let result = stages_in(d, claim, runner, &b).await;
    drop(b);
    let _ = recorder.await;
    remove_tree(&staging_root).await;
    result
}

/// Remove a (possibly large) directory tree off the async runtime.
async fn remove_tree(p: &Path) {
    let p = p.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p)).await;
}

async fn stages_in(
    d: &Arc<Daemon>,
    claim: &Claim,
    runner: &DockerRunner,
    b: &Build,
) -> Result<Outcome, Failure> {
    let lease = &claim.lease;
    let attempt = claim.attempt;
    let log = b.log.clone();
    let none: Vec<String> = Vec::new();
    let fail = |contexts: &Vec<String>| {
        let contexts = contexts.clone();
        move |error: PipelineError| Failure {
            error,
            contexts,
            lost: false,
        }
    };

    // Source: the commit, fetched into the repository's mirror, and its recipe.
    let sourced = staged(d, lease, attempt, "source", &log, async {
        let (repo, clone_url, source_url, auth) = locate(d, claim).await?;
        let mirror_dir = d
            .state_dir
            .join("git")
            .join(crate::source::mirror::mirror_name(&claim.repo));
        let (commit, git_ref, cancel) = (
            claim.commit.clone(),
            claim.git_ref.clone(),
            b.cancel.clone(),
        );
        let (mirror, subject) = pipeline_blocking(move || -> Result<_, SourceError> {
            let m = Mirror::open(&mirror_dir, &cancel)?;
            m.fetch(&clone_url, &commit, Some(&git_ref), auth.as_ref(), &cancel)?;
            let subject = crate::source::commit_subject(m.dir(), &commit, &cancel).ok();
            Ok((m, subject))
        })
        .await??;
        if let Some(subject) = subject
            && let Err(e) = d.store.set_subject(lease, &subject).await
        {
            tracing::debug!(error = %e, "the commit's subject was not recorded");
        }
        let spec = SourceSpec::Commit(CommitSource {
            repo: mirror.dir().to_owned(),
            commit: claim.commit.clone(),
            subdir: repo.dir.clone(),
            url: source_url,
            git_ref: Some(claim.git_ref.clone()),
            epoch: None,
        });
        pipeline::source(b, &spec, repo.recipe_file.as_deref()).await
    })
    .await
    .map_err(fail(&none))?;
    let contexts: Vec<String> = sourced
        .recipe
        .artifacts
        .iter()
        .map(|a| context(&a.name))
        .collect();
    let github = d.is_github(&claim.repo);
    if github {
        for c in &contexts {
            let _ = d
                .store
                .add_status(
                    lease,
                    &NewStatus {
                        context: c.clone(),
                        state: "pending".into(),
                        description: format!("building {}", short(&claim.commit)),
                        target_url: d.target_url(&lease.build_id),
                    },
                )
                .await;
        }
        d.wake_outbox.notify_one();
    }

    // Already published (say the state was lost, or the CLI pushed it)? Then only tags move.
    // Not for a rebuild someone asked for: that runs the steps again.
    let target = target(d);
    let mut artifacts: Vec<ArtifactResult> = Vec::new();
    let rebuild = claim.runs_from > 0;
    for a in sourced.recipe.artifacts.iter().filter(|_| !rebuild) {
        match pipeline::find_published(&target, &a.name, &claim.commit, &b.cancel).await {
            Ok(Some((found, ann)))
                if ann.get(pipeline::annotations::REVISION) == Some(&claim.commit)
                    && ann.get(pipeline::annotations::RECIPE_DIGEST)
                        == Some(&sourced.recipe.digest.to_string()) =>
            {
                artifacts.push(found)
            }
            Ok(_) => break,
            Err(e) if e.is_cancelled() => return Err(fail(&contexts)(e)),
            Err(e) => {
                tracing::debug!(error = %e, "could not look for an earlier publication");
                break;
            }
        }
    }
    let already = !rebuild && artifacts.len() == sourced.recipe.artifacts.len();
    if already {
        note(
            &log,
            "already published under this commit's tag: nothing to build",
        );
        for s in ["run", "pack", "image", "publish"] {
            let _ = d.store.stage_started(lease, attempt, s).await;
            let _ = d
                .store
                .stage_finished(lease, attempt, s, "skipped", Some("already published"))
                .await;
        }
    } else {
        let mut labels = BTreeMap::new();
        labels.insert("dev.kiln.revision".to_owned(), claim.commit.clone());
        labels.insert(LABEL_HOST.to_owned(), d.host_id.clone());
        labels.insert(LABEL_INSTANCE.to_owned(), d.instance.clone());
        labels.insert(LABEL_JOB.to_owned(), lease.build_id.clone());
        let output = staged(
            d,
            lease,
            attempt,
            "run",
            &log,
            pipeline::run(b, &sourced, runner, labels),
        )
        .await
        .map_err(fail(&contexts))?;
        let compression = crate::pack::Compression::Gzip;
        let packed = staged(
            d,
            lease,
            attempt,
            "pack",
            &log,
            pipeline::pack(b, &sourced, &output, compression),
        )
        .await
        .map_err(fail(&contexts))?;
        let registry_opts = match &target {
            Target::Registry { options, .. } => options.clone(),
            Target::Layout { .. } => Default::default(),
        };
        let builder_id = format!("kiln://{}", d.host_id);
        let (bases, built) = staged(d, lease, attempt, "image", &log, async {
            let bases =
                pipeline::resolve_bases(b, &sourced.recipe, &registry_opts, &BTreeMap::new())
                    .await?;
            let built = pipeline::image(
                b,
                &sourced,
                &output,
                &packed,
                &bases,
                compression,
                &builder_id,
            )
            .await?;
            Ok((bases, built))
        })
        .await
        .map_err(fail(&contexts))?;
        artifacts = built;
        drop(output);
        let cfg = d.config();
        let check = cfg
            .repos
            .iter()
            .find(|r| r.name() == claim.repo && r.recipe_key() == claim.recipe)
            .and_then(|r| r.verify)
            .unwrap_or(cfg.verify);
        if check.pick() {
            let again_root = d
                .state_dir
                .join("tmp")
                .join(format!("{}-{attempt}-again", lease.build_id));
            remove_tree(&again_root).await;
            let checked = staged(d, lease, attempt, "verify", &log, async {
                let again = OciLayout::open_or_create(&again_root)?;
                let mut labels = BTreeMap::new();
                labels.insert("dev.kiln.revision".to_owned(), claim.commit.clone());
                labels.insert(LABEL_HOST.to_owned(), d.host_id.clone());
                labels.insert(LABEL_INSTANCE.to_owned(), d.instance.clone());
                labels.insert(LABEL_JOB.to_owned(), lease.build_id.clone());
                pipeline::build_again_and_compare(
                    b,
                    &sourced,
                    runner,
                    labels,
                    compression,
                    &bases,
                    &artifacts,
                    again,
                )
                .await
            })
            .await;
            remove_tree(&again_root).await;
            match checked {
                Ok(()) => {
                    d.metrics.verified.inc();
                    note(
                        &log,
                        "reproducible: a second build in a fresh container gave the same bytes",
                    );
                }
                Err(e) => {
                    if matches!(e, PipelineError::NotReproducible(_)) {
                        d.metrics.unreproducible.inc();
                    }
                    return Err(fail(&contexts)(e));
                }
            }
        }
        // Nothing goes to the registry unless the lease is ours, with time to spare: a host
        // that was paused past its lease (another host has the job) pushes nothing.
        still_ours(d, lease, &contexts, "publishing").await?;
        artifacts = staged(d, lease, attempt, "publish", &log, async {
            let mut out = Vec::new();
            for a in &artifacts {
                let mut a = a.clone();
                a.pushed_to = Some(pipeline::publish_content(b, &target, &a).await?);
                note(&log, &format!("published {} {}", a.name, a.digest));
                out.push(a);
            }
            Ok(out)
        })
        .await
        .map_err(fail(&contexts))?;
    }

    // Tags move only while the lease is ours, with time to spare: a host that lost it (or is
    // about to) publishes nothing more. One tag move at a time per daemon, so a branch tag
    // is decided and moved without a retag of the same branch in between.
    let _tagging = d.tag_lock.lock().await;
    still_ours(d, lease, &contexts, "tagging").await?;
    let refs = d
        .store
        .build(&lease.build_id)
        .await
        .ok()
        .flatten()
        .map(|x| x.refs)
        .unwrap_or_else(|| vec![claim.git_ref.clone()]);
    let mut with_heads = Vec::new();
    for r in &refs {
        let is_head = d
            .store
            .head(&claim.repo, &claim.recipe, r)
            .await
            .ok()
            .flatten()
            .is_some_and(|h| h == claim.commit);
        with_heads.push((r.clone(), is_head));
    }
    let tags = tags_for(&claim.commit, &with_heads);
    for a in &artifacts {
        if already {
            // Nothing of it is in this build's staging store: the target has it.
            pipeline::retag(&target, a, &tags, &b.cancel).await
        } else {
            pipeline::publish_tags(b, &target, a, &tags).await
        }
        .map_err(fail(&contexts))?;
    }
    note(&log, &format!("tagged {}", tags.join(", ")));
    let moved: Vec<String> = with_heads
        .iter()
        .filter(|(_, head)| *head)
        .map(|(r, _)| r.clone())
        .collect();
    recheck_heads(d, &claim.repo, &claim.recipe, &claim.commit, &moved).await;
    let statuses = if github {
        artifacts
            .iter()
            .map(|a| NewStatus {
                context: context(&a.name),
                state: "success".into(),
                description: a.digest.clone(),
                target_url: d.target_url(&lease.build_id),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Outcome {
        state: BuildState::Success,
        error: None,
        artifacts: artifacts
            .iter()
            .map(|a| ArtifactRow {
                name: a.name.clone(),
                kind: a.kind.clone(),
                digest: a.digest.clone(),
                size: a.size,
                media_type: a.media_type.clone(),
                pushed_to: a.pushed_to.clone().unwrap_or_default(),
                provenance: a.provenance.clone(),
            })
            .collect(),
        tagged_refs: refs,
        statuses,
    })
}

async fn pipeline_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<Result<T, PipelineError>, PipelineError> {
    tokio::task::spawn_blocking(move || f().map_err(PipelineError::Source))
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))
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
    let target = target(d);
    for u in pending {
        let _tagging = d.tag_lock.lock().await;
        let detail = match d.store.build(&u.build_id).await {
            Ok(Some(x)) => x,
            _ => continue,
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
            let art = ArtifactResult {
                name: a.name.clone(),
                kind: a.kind.clone(),
                digest: a.digest.clone(),
                size: a.size,
                media_type: a.media_type.clone(),
                loaded_as: None,
                pushed_to: Some(a.pushed_to.clone()),
                provenance: a.provenance.clone(),
            };
            if let Err(e) = pipeline::retag(&target, &art, &tags, cancel).await {
                if e.is_retryable() {
                    tracing::warn!(build = %u.build_id, git_ref = %u.git_ref, error = %e, "could not tag a published artifact; will retry");
                    done = false;
                } else {
                    tracing::error!(build = %u.build_id, git_ref = %u.git_ref, error = %e, "cannot tag a published artifact; giving up on this ref");
                }
            }
        }
        if done {
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
    }
}

/// After moving the tags of `refs` to `commit`: a ref whose head moved meanwhile (another
/// host of the farm may have tagged the new head in between, and been overtaken by this
/// move) gets its head's tags moved again, by the retagger.
async fn recheck_heads(d: &Daemon, repo: &str, recipe: &str, commit: &str, refs: &[String]) {
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

/// Whether the lease is still ours with a third of it to spare, before `what`; a lost lease
/// is a [`Failure`] that records nothing.
async fn still_ours(
    d: &Daemon,
    lease: &Lease,
    contexts: &[String],
    what: &str,
) -> Result<(), Failure> {
    match d.store.holds(lease, d.lease / 3).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure {
            error: PipelineError::Usage(format!("the lease was lost before {what}")),
            contexts: contexts.to_vec(),
            lost: true,
        }),
        Err(e) => Err(Failure {
            error: PipelineError::Retryable(format!("cannot confirm the lease before {what}: {e}")),
            contexts: contexts.to_vec(),
            lost: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_scheme() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            tags_for(
                sha,
                &[
                    ("refs/heads/main".into(), true),
                    ("refs/heads/feature/x".into(), true),
                    ("refs/heads/old".into(), false),
                    ("refs/tags/v1.2.3".into(), true),
                    ("refs/tags/v2.0.0-rc.1".into(), true),
                    ("refs/tags/nightly".into(), true),
                    ("refs/tags/v1.2".into(), true),
                ]
            ),
            vec![
                sha.to_owned(),
                "main".into(),
                "feature-x".into(),
                "v1.2.3".into(),
                "1.2.3".into(),
                "v2.0.0-rc.1".into(),
                "2.0.0-rc.1".into(),
                "nightly".into(),
                "v1.2".into(),
            ]
        );
        assert_eq!(tag_name("-x/y"), Some("x-y".into()));
    }
}
