//! The state contract, run against both engines: SQLite (one host) and a real PostgreSQL
//! server (a farm; see `tests/common/postgres.rs`). Every case gets a fresh database. The
//! PostgreSQL run adds what only a shared database can show: hosts claiming at once.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::postgres::{DB_PASSWORD, Postgres};
use kiln::state::*;

fn job(commit: &str) -> NewJob {
    NewJob {
        repo: "acme/widget".into(),
        commit: commit.into(),
        recipe: "kiln.toml".into(),
        git_ref: "refs/heads/main".into(),
    }
}

/// Queue commit `commit` and claim it as host `h`.
async fn queued_and_claimed(s: &dyn JobStore, commit: &str) -> Claim {
    s.enqueue(&job(commit)).await.unwrap();
    s.claim("h", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the job just queued")
}

/// A successful outcome that tagged `refs` and records `statuses`.
fn success(refs: &[&str], statuses: Vec<NewStatus>) -> Outcome {
    Outcome {
        state: BuildState::Success,
        error: None,
        artifacts: vec![],
        tagged_refs: refs.iter().map(|r| r.to_string()).collect(),
        statuses,
    }
}

async fn a_commit_is_queued_once_whoever_triggers_it(s: &dyn JobStore) {
    let a = s.enqueue(&job("c1")).await.unwrap();
    assert!(a.created && a.ref_added);
    let b = s.enqueue(&job("c1")).await.unwrap();
    assert!(!b.created);
    assert_eq!(a.build_id, b.build_id);
    let mut tag = job("c1");
    tag.git_ref = "refs/tags/v1.0.0".into();
    let c = s.enqueue(&tag).await.unwrap();
    assert!(!c.created && c.ref_added);
    assert_eq!(s.queue_depth().await.unwrap(), 1);
}

async fn leases_fence_every_result(s: &dyn JobStore) {
    s.enqueue(&job("c1")).await.unwrap();
    let first = s
        .claim("a", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.attempt, 1);
    assert!(
        s.claim("b", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Expired: another host takes it, with a larger fencing token.
    let second = s
        .claim("b", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(second.lease.fence > first.lease.fence);
    assert_eq!(second.attempt, 2);
    // The first holder can neither renew, nor record a status, nor finish.
    assert_eq!(
        s.renew(&first.lease, Duration::from_secs(30))
            .await
            .unwrap(),
        Renewal::Lost
    );
    let st = NewStatus {
        context: "kiln/app".into(),
        state: "success".into(),
        description: "x".into(),
        target_url: None,
    };
    assert!(!s.add_status(&first.lease, &st).await.unwrap());
    let outcome = success(&["refs/heads/main"], vec![st.clone()]);
    assert!(!s.finish(&first.lease, &outcome).await.unwrap());
    assert!(s.finish(&second.lease, &outcome).await.unwrap());
    // Exactly one terminal status per job and context.
    assert!(!s.finish(&second.lease, &outcome).await.unwrap());
    let sent = s
        .claim_statuses("b", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    let b = s.build(&second.lease.build_id).await.unwrap().unwrap();
    assert_eq!(b.build.state, BuildState::Success);
    assert_eq!(b.build.host.as_deref(), Some("b"));
}

async fn claims_are_fair_across_repos_and_restarts_requeue(s: &dyn JobStore) {
    for c in ["a1", "a2", "a3"] {
        s.enqueue(&job(c)).await.unwrap();
    }
    let mut other = job("b1");
    other.repo = "acme/other".into();
    s.enqueue(&other).await.unwrap();
    let one = s
        .claim("h", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.repo, "acme/widget");
    // acme/widget has a running job: acme/other goes next, though queued later.
    let two = s
        .claim("h", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(two.repo, "acme/other");
    assert_eq!(s.requeue_host("h").await.unwrap(), 2);
    assert_eq!(s.queue_depth().await.unwrap(), 4);
}

async fn a_restart_frees_its_status_claims_and_counts_them(s: &dyn JobStore) {
    let c = queued_and_claimed(s, "c1").await;
    let st = NewStatus {
        context: "kiln/app".into(),
        state: "pending".into(),
        description: "queued".into(),
        target_url: None,
    };
    assert!(s.add_status(&c.lease, &st).await.unwrap());
    let first = s
        .claim_statuses("h", Duration::from_secs(120), 10)
        .await
        .unwrap();
    assert_eq!(first[0].claims, 1);
    // The sender died holding it; another host cannot take it before the claim runs out,
    // but the same host restarting frees it at once.
    assert!(
        s.claim_statuses("other", Duration::from_secs(120), 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.requeue_host("h").await.unwrap();
    let again = s
        .claim_statuses("h", Duration::from_secs(120), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].claims, 2,
        "the next sender must know to look first"
    );
}

async fn statuses_go_out_in_order_per_context_and_cancels_reach_the_owner(s: &dyn JobStore) {
    let c = queued_and_claimed(s, "c1").await;
    let st = |state: &str| NewStatus {
        context: "kiln/app".into(),
        state: state.into(),
        description: state.into(),
        target_url: None,
    };
    assert!(s.add_status(&c.lease, &st("pending")).await.unwrap());
    // The pending send fails and waits; the terminal one must not overtake it.
    let batch = s
        .claim_statuses("h", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    s.status_sent(batch[0].id, false, Duration::from_millis(50))
        .await
        .unwrap();
    let outcome = success(&[], vec![st("success")]);
    assert!(s.finish(&c.lease, &outcome).await.unwrap());
    assert!(
        s.claim_statuses("h", Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "the terminal status went ahead of the pending one"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let next = s
        .claim_statuses("h", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|r| r.status.state.as_str())
            .collect::<Vec<_>>(),
        ["pending"]
    );
    s.status_sent(next[0].id, true, Duration::ZERO)
        .await
        .unwrap();
    let last = s
        .claim_statuses("h", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(
        last.iter()
            .map(|r| r.status.state.as_str())
            .collect::<Vec<_>>(),
        ["success"]
    );

    // Cancelling: a queued job ends at once; a running one is flagged for its owner.
    s.enqueue(&job("c2")).await.unwrap();
    let running = queued_and_claimed(s, "c3").await;
    assert!(s.cancel(&running.lease.build_id).await.unwrap());
    assert_eq!(
        s.renew(&running.lease, Duration::from_secs(30))
            .await
            .unwrap(),
        Renewal::CancelRequested
    );
    let queued = s
        .builds(&BuildQuery {
            state: Some(BuildState::Queued),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert!(s.cancel(&queued[0].id).await.unwrap());
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    assert!(!s.cancel("no-such-build").await.unwrap());
}

async fn a_ref_that_returns_to_a_built_commit_is_tagged_again(s: &dyn JobStore) {
    let c = queued_and_claimed(s, "a").await;
    let outcome = success(&["refs/heads/main"], vec![]);
    assert!(s.finish(&c.lease, &outcome).await.unwrap());
    assert!(s.untagged_refs(10).await.unwrap().is_empty());
    s.enqueue(&job("b")).await.unwrap();
    // main goes back to a:
    let e = s.enqueue(&job("a")).await.unwrap();
    assert!(!e.created);
    assert_eq!(e.state, BuildState::Success);
    let u = s.untagged_refs(10).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].commit.as_str(), u[0].git_ref.as_str()),
        ("a", "refs/heads/main")
    );
    assert_eq!(
        s.head("acme/widget", "kiln.toml", "refs/heads/main")
            .await
            .unwrap()
            .as_deref(),
        Some("a")
    );
}

async fn a_head_s_tags_can_be_asked_for_again(s: &dyn JobStore) {
    let c = queued_and_claimed(s, "a").await;
    let outcome = success(&["refs/heads/main"], vec![]);
    assert!(s.finish(&c.lease, &outcome).await.unwrap());
    assert!(s.untagged_refs(10).await.unwrap().is_empty());
    s.untag_head("acme/widget", "kiln.toml", "refs/heads/main")
        .await
        .unwrap();
    let u = s.untagged_refs(10).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].commit.as_str(), u[0].git_ref.as_str()),
        ("a", "refs/heads/main")
    );
    // Another ref, or another recipe's head, is left alone.
    s.mark_tagged(&u[0].build_id, "refs/heads/main")
        .await
        .unwrap();
    s.untag_head("acme/widget", "other.toml", "refs/heads/main")
        .await
        .unwrap();
    assert!(s.untagged_refs(10).await.unwrap().is_empty());
    assert!((s.clock_ms() - kiln::state::now_ms()).abs() < 5_000);
}

async fn hosts_beat_and_one_host_leads_at_a_time(s: &dyn JobStore) {
    s.heartbeat("a", "i-a", "0.1.0", 1, 0).await.unwrap();
    s.heartbeat("b", "i-b", "0.1.0", 2, 3).await.unwrap();
    s.host_stopped("a").await.unwrap();
    let hosts = s.hosts().await.unwrap();
    assert_eq!(
        hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(hosts[0].stopped_at.is_some() && hosts[0].running == 0);
    assert!(hosts[1].stopped_at.is_none() && hosts[1].running == 3);
    // A start clears the stop.
    s.heartbeat("a", "i-a", "0.1.1", 5, 1).await.unwrap();
    let a = &s.hosts().await.unwrap()[0];
    assert!(a.stopped_at.is_none());
    assert_eq!(a.version, "0.1.1");

    let ttl = Duration::from_millis(150);
    assert!(s.lead("poller", "a", ttl).await.unwrap());
    assert!(!s.lead("poller", "b", ttl).await.unwrap(), "two leaders");
    assert!(
        s.lead("poller", "a", ttl).await.unwrap(),
        "the leader keeps it"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a stopped renewing: b takes over, and a cannot take it back while b renews.
    assert!(s.lead("poller", "b", ttl).await.unwrap());
    assert!(!s.lead("poller", "a", ttl).await.unwrap());
    // A clean stop hands it over at once.
    s.resign("poller", "b").await.unwrap();
    assert!(s.lead("poller", "a", ttl).await.unwrap());
    // Roles are independent.
    assert!(s.lead("other", "b", ttl).await.unwrap());
}

async fn logs_are_numbered_fenced_and_rebuilds_run_again(s: &dyn JobStore) {
    let c = queued_and_claimed(s, "c1").await;
    let id = c.lease.build_id.clone();
    s.set_subject(&c.lease, "Fix <the> build").await.unwrap();
    assert_eq!(s.log_end(&id).await.unwrap(), 1);
    let lines = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(
        s.append_log(&c.lease, 1, &lines(&["one", "", "three"]))
            .await
            .unwrap()
    );
    assert!(
        s.append_log(&c.lease, 4, &lines(&["four", "five"]))
            .await
            .unwrap()
    );
    assert_eq!(s.log_end(&id).await.unwrap(), 6);
    assert_eq!(
        s.progress(&id).await.unwrap(),
        Some((BuildState::Running, 6))
    );
    assert_eq!(s.progress("no-such-build").await.unwrap(), None);
    assert_eq!(
        s.log_lines(&id, 0, 100).await.unwrap(),
        vec![
            (1, "one".to_owned()),
            (2, String::new()),
            (3, "three".to_owned()),
            (4, "four".to_owned()),
            (5, "five".to_owned())
        ]
    );
    // From the middle of a stored run, and limited (whole runs: at least `limit` lines).
    assert_eq!(
        s.log_lines(&id, 2, 1).await.unwrap(),
        vec![(3, "three".to_owned())]
    );
    assert_eq!(
        s.log_lines(&id, 4, 100).await.unwrap(),
        vec![(5, "five".to_owned())]
    );
    assert!(s.log_lines(&id, 5, 100).await.unwrap().is_empty());
    // Lines that exist, or a lease that is not the current one, add nothing.
    assert!(!s.append_log(&c.lease, 4, &lines(&["again"])).await.unwrap());
    let stale = Lease {
        fence: c.lease.fence - 1,
        ..c.lease.clone()
    };
    assert!(!s.append_log(&stale, 6, &lines(&["late"])).await.unwrap());
    assert_eq!(s.log_end(&id).await.unwrap(), 6);

    // Only a finished job can be rebuilt; its subject and log stay, its artifacts go.
    assert!(!s.rebuild(&id).await.unwrap());
    assert!(!s.rebuild("no-such-build").await.unwrap());
    let status = NewStatus {
        context: "kiln/app".into(),
        state: "success".into(),
        description: "built".into(),
        target_url: None,
    };
    let mut outcome = success(&["refs/heads/main"], vec![status.clone()]);
    outcome.artifacts = vec![ArtifactRow {
        name: "app".into(),
        kind: "image".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        size: 1,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        pushed_to: "r/app".into(),
        provenance: None,
        sbom: None,
        sbom_document: None,
    }];
    assert!(s.finish(&c.lease, &outcome).await.unwrap());
    assert!(s.rebuild(&id).await.unwrap());
    assert!(!s.rebuild(&id).await.unwrap(), "queued already");
    assert_eq!(s.build_state(&id).await.unwrap(), Some(BuildState::Queued));
    assert_eq!(s.build_state("no-such-build").await.unwrap(), None);
    let x = s.build(&id).await.unwrap().unwrap();
    assert_eq!(x.build.state, BuildState::Queued);
    assert!(x.build.artifacts.is_empty());
    assert_eq!(x.build.subject.as_deref(), Some("Fix <the> build"));
    let again = s
        .claim("h2", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the rebuild");
    assert_eq!((again.attempt, again.runs_from), (2, 1));
    // The log goes on after the first run's lines; the run gets its own final status.
    assert!(
        s.append_log(&again.lease, 6, &lines(&["rebuilt"]))
            .await
            .unwrap()
    );
    assert!(s.finish(&again.lease, &outcome).await.unwrap());
    let mut sent = 0;
    while let Some(st) = s
        .claim_statuses("h2", Duration::from_secs(30), 10)
        .await
        .unwrap()
        .pop()
    {
        assert_eq!(st.status, status);
        s.status_sent(st.id, true, Duration::ZERO).await.unwrap();
        sent += 1;
    }
    assert_eq!(sent, 2, "one final status per run");
    assert_eq!(
        s.build(&id).await.unwrap().unwrap().build.artifacts.len(),
        1
    );
}

/// Every case on a fresh store from `fresh`.
async fn contract<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Box<dyn JobStore>>,
{
    a_commit_is_queued_once_whoever_triggers_it(&*fresh().await).await;
    leases_fence_every_result(&*fresh().await).await;
    claims_are_fair_across_repos_and_restarts_requeue(&*fresh().await).await;
    a_restart_frees_its_status_claims_and_counts_them(&*fresh().await).await;
    statuses_go_out_in_order_per_context_and_cancels_reach_the_owner(&*fresh().await).await;
    a_ref_that_returns_to_a_built_commit_is_tagged_again(&*fresh().await).await;
    hosts_beat_and_one_host_leads_at_a_time(&*fresh().await).await;
    a_head_s_tags_can_be_asked_for_again(&*fresh().await).await;
    logs_are_numbered_fenced_and_rebuilds_run_again(&*fresh().await).await;
}

#[tokio::test]
async fn sqlite_keeps_the_state_contract() {
    contract(|| async { Box::new(SqliteStore::memory().await.unwrap()) as Box<dyn JobStore> })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_state_contract_and_hosts_never_claim_one_job_twice() {
    let pg = Postgres::start();
    contract(|| async {
        let url = pg.database();
        Box::new(PgStore::connect(&url, Some(DB_PASSWORD), 4).await.unwrap()) as Box<dyn JobStore>
    })
    .await;

    // A kiln older than the database's schema refuses to start, and says why.
    let url = pg.database();
    drop(PgStore::connect(&url, Some(DB_PASSWORD), 1).await.unwrap());
    pg.psql_in(
        url.rsplit('/').next().unwrap(),
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from a newer kiln', true, '\\x00', 0)",
    );
    let err = PgStore::connect(&url, Some(DB_PASSWORD), 1)
        .await
        .expect_err("an older kiln ran on a newer schema")
        .to_string();
    assert!(err.contains("999"), "{err}");
    assert!(!err.contains(DB_PASSWORD), "{err}");
    // A wrong password is said, and not shown.
    let err = PgStore::connect(&url, Some("not-the-password"), 1)
        .await
        .expect_err("a wrong password was accepted")
        .to_string();
    assert!(err.contains("password"), "{err}");

    // Three hosts (three pools) with four workers each claim 60 jobs of three repos at once:
    // each job is claimed exactly once.
    let url = pg.database();
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(
            PgStore::connect(&url, Some(DB_PASSWORD), 4).await.unwrap(),
        ));
    }
    for i in 0..60 {
        stores[0]
            .enqueue(&NewJob {
                repo: format!("acme/r{}", i % 3),
                commit: format!("c{i}"),
                recipe: "kiln.toml".into(),
                git_ref: "refs/heads/main".into(),
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for (h, s) in stores.iter().enumerate() {
        for _ in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = s
                    .claim(&format!("host{h}"), Duration::from_secs(60))
                    .await
                    .unwrap()
                {
                    got.push(c.lease.build_id);
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "claims: {}", all.len());
    assert_eq!(unique.len(), 60, "a job was claimed twice");
    assert_eq!(stores[1].queue_depth().await.unwrap(), 0);

    // Their status senders claim at once too: every status goes to exactly one of them.
    let c = stores[0]
        .claim("host0", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(c.is_none(), "every job is running");
    let url2 = pg.database();
    let one = PgStore::connect(&url2, Some(DB_PASSWORD), 4).await.unwrap();
    one.enqueue(&job("s1")).await.unwrap();
    let c = one
        .claim("h", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    for i in 0..40 {
        let st = NewStatus {
            context: format!("kiln/a{i}"),
            state: "pending".into(),
            description: "queued".into(),
            target_url: None,
        };
        assert!(one.add_status(&c.lease, &st).await.unwrap());
    }
    let mut senders = Vec::new();
    for h in 0..6 {
        let s = Arc::new(PgStore::connect(&url2, Some(DB_PASSWORD), 2).await.unwrap());
        senders.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s
                    .claim_statuses(&format!("sender{h}"), Duration::from_secs(60), 3)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut ids = Vec::new();
    for t in senders {
        ids.extend(t.await.unwrap());
    }
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 40);
    assert_eq!(ids.len(), 40, "a status was claimed twice");
    assert_eq!(stores[2].integrity_check().await.unwrap(), "ok");
}
