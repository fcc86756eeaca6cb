//! What the worker does as a job's plan runs: every stage recorded in the state and noted in
//! the log, `pending` statuses once the recipe is known, a commit published before found
//! (then only its tags move), publication only while the lease is ours, and the tags of the
//! refs that still point at the commit, decided at the last moment.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::super::Daemon;
use super::super::retag::recheck_heads;
use super::super::status;
use super::super::tags::tags_for;
use super::note;
use crate::artifact::ArtifactResult;
use crate::image::annotations;
use crate::metrics::Metrics;
use crate::pipeline::{Built, Fetched, Hooks, PipelineError, Sourced, Stage, StageEnd};
use crate::publish::Target;
use crate::state::{ArtifactRow, BuildState, Claim, Outcome};
use crate::sync::lock;

/// What the tag stage decided, held until the tags moved.
struct Tagging {
    /// One tag move at a time per daemon, so a branch tag is decided and moved without a
    /// retag of the same branch in between.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// The job's refs, and whether each still points at the commit.
    refs: Vec<(String, bool)>,
}

/// What the hooks learned as the plan ran.
#[derive(Default)]
struct Learned {
    /// Contexts to report on: the artifacts', once the recipe is known.
    contexts: Vec<String>,
    /// The tag decision, from [`Hooks::tags`] to [`Hooks::tagged`].
    tagging: Option<Tagging>,
    /// The refs whose tags were moved.
    tagged: Option<Vec<String>>,
}

pub(super) struct WorkerHooks<'a> {
    d: &'a Arc<Daemon>,
    claim: &'a Claim,
    log: PathBuf,
    cancel: CancellationToken,
    /// Whether the repository's forge takes commit statuses.
    reports: bool,
    /// Where the plan publishes (and so where an earlier publication is looked for).
    target: Arc<dyn Target>,
    learned: Mutex<Learned>,
}

impl<'a> WorkerHooks<'a> {
    pub(super) fn new(
        d: &'a Arc<Daemon>,
        claim: &'a Claim,
        log: PathBuf,
        cancel: CancellationToken,
        target: Arc<dyn Target>,
    ) -> Self {
        let reports = d.reports_statuses(&claim.repo);
        WorkerHooks {
            d,
            claim,
            log,
            cancel,
            reports,
            target,
            learned: Mutex::default(),
        }
    }

    /// The status contexts known so far.
    pub(super) fn contexts(&self) -> Vec<String> {
        lock(&self.learned).contexts.clone()
    }

    /// The outcome of a build the plan finished.
    pub(super) fn succeeded(&self, built: Built) -> Outcome {
        let refs = lock(&self.learned)
            .tagged
            .clone()
            .unwrap_or_else(|| vec![self.claim.git_ref.clone()]);
        let statuses = if self.reports {
            status::succeeded(
                &built.artifacts,
                self.d.target_url(&self.claim.lease.build_id),
            )
        } else {
            Vec::new()
        };
        Outcome {
            state: BuildState::Success,
            error: None,
            artifacts: built.artifacts.iter().map(ArtifactRow::of).collect(),
            tagged_refs: refs,
            statuses,
        }
    }

    /// Whether the lease is still ours with a third of it to spare, before `what`: a lost
    /// lease fences the build (it records and publishes nothing more).
    async fn still_ours(&self, what: &str) -> Result<(), PipelineError> {
        let d = self.d;
        match d.store.holds(&self.claim.lease, d.lease / 3).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(PipelineError::Fenced(format!(
                "the lease was lost before {what}"
            ))),
            Err(e) => Err(PipelineError::Retryable(format!(
                "cannot confirm the lease before {what}: {e}"
            ))),
        }
    }

    /// The artifacts of this commit and recipe published before (the state was lost, or the
    /// CLI pushed them), if all of them are: then only the tags move.
    async fn published_before(
        &self,
        s: &Sourced,
    ) -> Result<Option<Vec<ArtifactResult>>, PipelineError> {
        let commit = &self.claim.commit;
        let mut found = Vec::new();
        for a in &s.recipe.artifacts {
            match self.target.find(&a.name, commit, &self.cancel).await {
                Ok(Some(f))
                    if f.annotations.get(annotations::REVISION) == Some(commit)
                        && f.annotations.get(annotations::RECIPE_DIGEST)
                            == Some(&s.recipe.digest.to_string()) =>
                {
                    found.push(f.artifact)
                }
                Ok(_) => return Ok(None),
                Err(e) if e.is_cancelled() => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "could not look for an earlier publication");
                    return Ok(None);
                }
            }
        }
        Ok(Some(found))
    }
}

#[async_trait::async_trait]
impl Hooks for WorkerHooks<'_> {
    async fn started(&self, stage: Stage) {
        let (d, c) = (self.d, self.claim);
        let _ = d
            .store
            .stage_started(&c.lease, c.attempt, stage.as_str())
            .await;
        note(&self.log, &format!("stage {}", stage.as_str()));
    }

    async fn finished(&self, stage: Stage, end: StageEnd<'_>) {
        let (d, c) = (self.d, self.claim);
        let name = stage.as_str();
        let (outcome, detail) = match end {
            StageEnd::Ok => ("ok", None),
            StageEnd::Skipped(why) => {
                let _ = d.store.stage_started(&c.lease, c.attempt, name).await;
                ("skipped", Some(why.to_owned()))
            }
            StageEnd::Failed(e) if e.is_cancelled() => ("cancelled", None),
            StageEnd::Failed(e) => ("failed", Some(e.to_string())),
        };
        let _ = d
            .store
            .stage_finished(&c.lease, c.attempt, name, outcome, detail.as_deref())
            .await;
        match (stage, end) {
            (Stage::Verify, StageEnd::Ok) => {
                d.metrics.verified.inc();
                note(
                    &self.log,
                    "reproducible: a second build in a fresh container gave the same bytes",
                );
            }
            (Stage::Verify, StageEnd::Failed(PipelineError::NotReproducible(_))) => {
                d.metrics
                    .unreproducible
                    .get_or_create(&Metrics::cause("build"))
                    .inc();
            }
            (Stage::Verify, StageEnd::Failed(PipelineError::CacheChangedOutput(_))) => {
                d.metrics
                    .unreproducible
                    .get_or_create(&Metrics::cause("cache"))
                    .inc();
            }
            _ => {}
        }
    }

    /// The commit's subject, for the dashboard, read from the mirror it was fetched into.
    async fn fetched(&self, f: &Fetched) {
        let (mirror, commit, cancel) = (
            f.mirror.clone(),
            self.claim.commit.clone(),
            self.cancel.clone(),
        );
        let subject = tokio::task::spawn_blocking(move || {
            crate::source::commit_subject(&mirror, &commit, &cancel).ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(subject) = subject
            && let Err(e) = self.d.store.set_subject(&self.claim.lease, &subject).await
        {
            tracing::debug!(error = %e, "the commit's subject was not recorded");
        }
    }

    async fn sourced(&self, s: &Sourced) -> Result<Option<Vec<ArtifactResult>>, PipelineError> {
        let (d, c) = (self.d, self.claim);
        let contexts: Vec<String> = s
            .recipe
            .artifacts
            .iter()
            .map(|a| status::context(&a.name))
            .collect();
        lock(&self.learned).contexts = contexts.clone();
        if self.reports {
            let target_url = d.target_url(&c.lease.build_id);
            for p in status::pending(&contexts, &c.commit, target_url) {
                let _ = d.store.add_status(&c.lease, &p).await;
            }
            d.wake_outbox.notify_one();
        }
        // Not for a rebuild someone asked for: that runs the steps again.
        if c.runs_from > 0 {
            return Ok(None);
        }
        let published = self.published_before(s).await?;
        if published.is_some() {
            note(
                &self.log,
                "already published under this commit's tag: nothing to build",
            );
        }
        Ok(published)
    }

    /// Nothing goes to the registry unless the lease is ours, with time to spare: a host that
    /// was paused past its lease (another host has the job) pushes nothing.
    async fn may_publish(&self) -> Result<(), PipelineError> {
        self.still_ours("publishing").await
    }

    async fn published(&self, a: &ArtifactResult) {
        note(&self.log, &format!("published {} {}", a.name, a.digest));
    }

    /// The tags of the job's refs that still point at its commit. Tags move only while the
    /// lease is ours, with time to spare: a host that lost it (or is about to) publishes
    /// nothing more.
    async fn tags(&self) -> Result<Vec<String>, PipelineError> {
        let (d, c) = (self.d, self.claim);
        let guard = d.tag_lock.clone().lock_owned().await;
        self.still_ours("tagging").await?;
        let refs = d
            .store
            .build(&c.lease.build_id)
            .await
            .ok()
            .flatten()
            .map(|x| x.refs)
            .unwrap_or_else(|| vec![c.git_ref.clone()]);
        let mut with_heads = Vec::new();
        for r in refs {
            let is_head = d
                .store
                .head(&c.repo, &c.recipe, &r)
                .await
                .ok()
                .flatten()
                .is_some_and(|h| h == c.commit);
            with_heads.push((r, is_head));
        }
        let tags = tags_for(&c.commit, &with_heads);
        lock(&self.learned).tagging = Some(Tagging {
            _guard: guard,
            refs: with_heads,
        });
        Ok(tags)
    }

    /// The tag lock goes with the decision, whether the tags moved or not.
    async fn tagged(&self, moved: Result<&[String], &PipelineError>) {
        let c = self.claim;
        let Some(t) = lock(&self.learned).tagging.take() else {
            return;
        };
        let Ok(tags) = moved else {
            return;
        };
        note(&self.log, &format!("tagged {}", tags.join(", ")));
        lock(&self.learned).tagged = Some(t.refs.iter().map(|(r, _)| r.clone()).collect());
        let moved: Vec<String> = t
            .refs
            .iter()
            .filter(|(_, head)| *head)
            .map(|(r, _)| r.clone())
            .collect();
        recheck_heads(self.d, &c.repo, &c.recipe, &c.commit, &moved).await;
    }
}
