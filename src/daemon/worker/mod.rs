//! Running one claimed job: the pipeline's [`Plan`] with the worker's hooks (`hooks.rs`) recording
//! each stage and deciding what only the daemon knows (publication fenced by the lease, the
//! tags of the refs that still point here), and an outcome that says whether to retry.

mod hooks;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::lease::{STOP_CANCEL_REQUESTED, STOP_LEASE_LOST, STOP_SHUTDOWN, StopReason};
use super::logship::LogShipper;
use crate::events::{Event, Observer};
use crate::forge::Forge;
use crate::metrics::Metrics;
use crate::pipeline::{
    Build, Built, FetchSpec, Hooks, Locate, PipelineError, Plan, Publication, SourceSpec, Stage,
    StageEnd, Tags,
};
use crate::publish::Target;
use crate::runner::Runner;
use crate::source::{Origin, SourceError};
use crate::state::{BuildState, Claim, Lease, Outcome, StepRow};
use crate::store::OciLayout;
use crate::text::short;
use hooks::WorkerHooks;

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

/// Run a claimed job to its end, and record the end.
pub async fn run(
    d: Arc<Daemon>,
    claim: Claim,
    runner: Arc<dyn Runner>,
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
    let shipping = Shipping::start(&d, &claim.lease, &log).await;
    let end = tracing::Instrument::instrument(
        attempt(&d, &claim, runner.as_ref(), &cancel, &why),
        span.clone(),
    )
    .await;
    d.metrics.running.dec();
    // kiln's last word on this attempt, then the log is complete in the state before the
    // end is recorded (a page streaming it stops at the end).
    note(&log, &end.last_word(claim.attempt));
    shipping.finish().await;
    let _enter = span.enter();
    if let Err(e) = record(&d, &claim.lease, end, started).await {
        // The lease will expire and the job run again; nothing was half-recorded.
        tracing::error!(error = %e, "could not record the end of the build");
    }
    d.wake_scheduler.notify_one();
}

/// A log shipper following the build log for the attempt.
struct Shipping {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<LogShipper>>,
}

impl Shipping {
    async fn start(d: &Daemon, lease: &Lease, log: &Path) -> Shipping {
        let stop = CancellationToken::new();
        let task = match LogShipper::new(d.store.clone(), lease.clone(), log.to_owned()).await {
            Ok(s) => Some(tokio::spawn(s.follow(stop.clone()))),
            Err(e) => {
                tracing::warn!(error = %e, "the build log will not reach the state");
                None
            }
        };
        Shipping { stop, task }
    }

    /// Ship the rest of the log.
    async fn finish(self) {
        self.stop.cancel();
        if let Some(task) = self.task
            && let Ok(mut shipper) = task.await
        {
            shipper.finish().await;
        }
    }
}

impl End {
    /// What the log says last about the attempt.
    fn last_word(&self, attempt: u32) -> String {
        match self {
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
                "attempt {attempt} failed ({error}); retrying in {}s",
                delay.as_secs()
            ),
            End::Release => "stopped by a shutdown; the build will run again".to_owned(),
            End::Abandon => {
                "lease lost: another host takes over; this run published nothing".to_owned()
            }
        }
    }
}

/// Record how the attempt ended, fenced by its lease.
async fn record(d: &Daemon, lease: &Lease, end: End, started: Instant) -> crate::state::Result<()> {
    match end {
        End::Finished(outcome) => {
            let result = outcome.state.as_str();
            if !d.store.finish(lease, &outcome).await? {
                tracing::warn!(
                    "lease lost before the result was recorded; another host has the job"
                );
                return Ok(());
            }
            d.metrics
                .builds
                .get_or_create(&Metrics::label(result))
                .inc();
            d.metrics
                .build_duration
                .get_or_create(&Metrics::label(result))
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
        End::RetryLater { error, delay } => {
            tracing::warn!(error = %error, retry_in_s = delay.as_secs(), "build failed; it will be retried");
            d.store.retry_later(lease, &error, delay).await.map(|_| ())
        }
        End::Release => {
            tracing::info!("stopping: the job goes back to the queue");
            d.store.release(lease).await
        }
        End::Abandon => Ok(()),
    }
}

async fn attempt(
    d: &Arc<Daemon>,
    claim: &Claim,
    runner: &dyn Runner,
    cancel: &CancellationToken,
    why: &StopReason,
) -> End {
    let log = d.log_path(&claim.lease.build_id);
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
    let target = d.target();
    let hooks = WorkerHooks::new(d, claim, log, cancel.clone(), target.clone());
    let result = build(d, claim, runner, cancel, &hooks, target).await;
    let contexts = hooks.contexts();
    match result {
        Ok(built) => End::Finished(hooks.succeeded(built)),
        Err(PipelineError::Fenced(_)) => End::Abandon,
        Err(e) if e.is_cancelled() || cancel.is_cancelled() => match why.get() {
            STOP_LEASE_LOST => End::Abandon,
            STOP_CANCEL_REQUESTED => End::Finished(
                failed_outcome(
                    d,
                    claim,
                    BuildState::Cancelled,
                    "cancelled".into(),
                    contexts,
                )
                .await,
            ),
            STOP_SHUTDOWN => End::Release,
            _ => End::Release,
        },
        Err(e) if e.is_retryable() && this_run <= MAX_RETRIES => End::RetryLater {
            error: e.to_string(),
            delay: Duration::from_secs(15 * (1u64 << (this_run.max(1) - 1).min(5))),
        },
        Err(e) => {
            let state = if e.is_build_failure() {
                BuildState::Failure
            } else {
                BuildState::Error
            };
            End::Finished(failed_outcome(d, claim, state, e.to_string(), contexts).await)
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
        contexts.push(super::status::context(&claim.recipe));
    }
    let statuses = if d.reports_statuses(&claim.repo) {
        super::status::failed(state, &error, contexts, d.target_url(&claim.lease.build_id))
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

/// Where a job's commit is fetched from: its forge says, when the source stage starts.
struct FromForge {
    forge: Arc<dyn Forge>,
    repo: String,
}

#[async_trait::async_trait]
impl Locate for FromForge {
    async fn origin(&self) -> Result<Origin, PipelineError> {
        self.forge.origin(&self.repo).await.map_err(|e| {
            PipelineError::Source(SourceError::Locate {
                repo: self.repo.clone(),
                retryable: e.is_retryable(),
                message: e.to_string(),
            })
        })
    }
}

/// The job's build: a staging layout under `state_dir/tmp`, the plan for its commit, run.
async fn build(
    d: &Arc<Daemon>,
    claim: &Claim,
    runner: &dyn Runner,
    cancel: &CancellationToken,
    hooks: &WorkerHooks<'_>,
    target: Arc<dyn Target>,
) -> Result<Built, PipelineError> {
    let lease = &claim.lease;
    let staging_root = d
        .state_dir
        .join("tmp")
        .join(format!("{}-{}", lease.build_id, claim.attempt));
    let _ = std::fs::remove_dir_all(&staging_root);
    let (obs, recorder) = observer(d, lease, claim.attempt);
    let result = async {
        let staging = OciLayout::open_or_create(&staging_root)?;
        let mut b = Build::new(
            lease.build_id.clone(),
            staging,
            &d.state_dir.join("logs"),
            cancel.clone(),
            obs,
        )?;
        let (plan, allow_network) = match plan(d, claim, target) {
            Ok(p) => p,
            Err(e) => {
                // Nothing can be built of a job whose repository left the config: its
                // source stage fails before the plan can start.
                hooks.started(Stage::Source).await;
                hooks.finished(Stage::Source, StageEnd::Failed(&e)).await;
                return Err(e);
            }
        };
        b.limits = d.config().limits.clone();
        b.limits.allow_network = allow_network;
        plan.run(&b, runner, hooks).await
    }
    .await;
    let _ = recorder.await;
    remove_tree(&staging_root).await;
    result
}

/// The plan of a job: its commit from its forge, built with the host's labels, checked by a
/// second build as sampled, published to `target` under the tags decided last; and whether
/// its repository may use the network.
fn plan(d: &Daemon, claim: &Claim, target: Arc<dyn Target>) -> Result<(Plan, bool), PipelineError> {
    let lease = &claim.lease;
    let cfg = d.config();
    let repo = d.repo(&claim.repo, &claim.recipe).ok_or_else(|| {
        PipelineError::Usage(format!(
            "{} (recipe {}) is no longer in the config",
            claim.repo, claim.recipe
        ))
    })?;
    let forge = d.forge(&repo).ok_or_else(|| {
        PipelineError::Usage(format!(
            "a {} repository needs a [{}] section",
            repo.forge(),
            repo.forge()
        ))
    })?;
    let labels = BTreeMap::from([
        (LABEL_HOST.to_owned(), d.host_id.clone()),
        (LABEL_INSTANCE.to_owned(), d.instance.clone()),
        (LABEL_JOB.to_owned(), lease.build_id.clone()),
    ]);
    let plan = Plan {
        source: SourceSpec::Fetch(FetchSpec {
            origin: Arc::new(FromForge {
                forge,
                repo: claim.repo.clone(),
            }),
            mirror: d
                .state_dir
                .join("git")
                .join(crate::source::mirror::mirror_name(&claim.repo)),
            commit: claim.commit.clone(),
            git_ref: Some(claim.git_ref.clone()),
            subdir: repo.dir.clone(),
            epoch: None,
        }),
        recipe_file: repo.recipe_file.clone(),
        compression: crate::pack::Compression::Gzip,
        builder_id: builder_id(&cfg, &d.host_id),
        signer: cfg.signer.clone(),
        registry: d.registry_options(),
        pins: BTreeMap::new(),
        labels,
        verify: repo.verify.unwrap_or(cfg.verify).pick(),
        keep: None,
        load: false,
        publish: Some(Publication {
            target,
            tags: Tags::Decided,
        }),
        caches: caches(d, claim, &repo, &cfg)?,
    };
    Ok((plan, repo.allow_network))
}

/// The build caches of a job: a branch build's (a tag build's only with `cache_tags`: a
/// release runs cold by default).
fn caches(
    d: &Daemon,
    claim: &Claim,
    repo: &crate::daemon::config::Repo,
    cfg: &crate::daemon::config::Config,
) -> Result<Option<crate::pipeline::CachePlan>, PipelineError> {
    let tag = claim.git_ref.starts_with("refs/tags/");
    if tag && !repo.cache_tags {
        return Ok(None);
    }
    let caches = crate::runner::cache::Caches::open(
        &d.state_dir.join("cache"),
        cfg.cache_budget,
        crate::runner::cache::CacheMetrics::registered(&d.metrics),
    )?;
    Ok(Some(crate::pipeline::CachePlan {
        caches,
        repo: claim.repo.clone(),
    }))
}

/// This host's identity in provenance and verdicts: a URI under the dashboard's public
/// address when there is one, else `kiln://<host id>`.
fn builder_id(cfg: &crate::daemon::config::Config, host_id: &str) -> String {
    match &cfg.public_url {
        Some(u) => format!("{u}/hosts/{host_id}"),
        None => format!("kiln://{host_id}"),
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
        Event::StepStarted {
            index,
            command,
            network,
            ..
        } => {
            let _ = tx.send(StepRow {
                attempt,
                index: *index as u32,
                command: command.clone(),
                exit_code: None,
                millis: None,
                network: *network,
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
                network: false,
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
        let mut commands: BTreeMap<u32, (String, bool)> = BTreeMap::new();
        while let Some(mut s) = rx.recv().await {
            if s.exit_code.is_none() {
                commands.insert(s.index, (s.command.clone(), s.network));
            } else if let Some((c, n)) = commands.get(&s.index) {
                s.command = c.clone();
                s.network = *n;
            }
            let _ = store.step(&lease, s.attempt, &s).await;
        }
    });
    (Arc::new(obs), recorder)
}

/// Remove a (possibly large) directory tree off the async runtime.
async fn remove_tree(p: &Path) {
    let p = p.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p)).await;
}
