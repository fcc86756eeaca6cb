//! The dashboard with 10,000 builds in the state: `cargo bench --bench dashboard`.
//!
//! The state (SQLite, as a single host keeps it) is filled with 10,000 finished builds over
//! 20 repositories, each with an artifact, then a `kiln daemon` serves it. Measured: `GET /`
//! (target < 50 ms), the list filtered by repository and by state, a page deep in the past
//! (`?before=`), a build page, and the JSON list; the baseline is `GET /healthz` on the same
//! daemon in the same run (the HTTP round trip and one trivial query). 200 requests each,
//! after 20 of warm-up; median and 95th percentile.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, get};

const BUILDS: usize = 10_000;
const REPOS: usize = 20;
const RUNS: usize = 200;

fn measure(url: &str) -> (f64, f64) {
    for _ in 0..20 {
        assert_eq!(get(url).0, 200, "{url}");
    }
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            let (st, body) = get(url);
            let e = s.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(st, 200, "{url}: {body}");
            e
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[RUNS / 2], t[RUNS * 95 / 100])
}

fn main() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let filled = Instant::now();
    let (middle, some_id) = rt.block_on(async {
        let db = state.join("state.db");
        // Migrated by kiln itself, then filled in one transaction.
        drop(kiln::state::SqliteStore::open(&db).await.unwrap());
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let start = 1_700_000_000_000i64;
        let mut ids = Vec::new();
        for i in 0..BUILDS {
            let t0 = start + i as i64 * 60_000;
            let id = ulid::Ulid::from_parts(t0 as u64, i as u128).to_string();
            let state = ["success", "success", "success", "failure", "error"][i % 5];
            sqlx::query(
                "INSERT INTO jobs (id, repo, commit_sha, recipe, git_ref, state, attempts, host, \
                 queued_at, started_at, finished_at, subject) \
                 VALUES (?, ?, ?, 'kiln.toml', 'refs/heads/main', ?, 1, 'bench-host', ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(format!("acme/repo-{:02}", i % REPOS))
            .bind(format!("{:040x}", i))
            .bind(state)
            .bind(t0)
            .bind(t0 + 1_000)
            .bind(t0 + 31_000)
            .bind(format!("Change number {i}: tidy the build"))
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO artifacts (job_id, name, kind, digest, size, media_type, pushed_to, \
                 provenance) VALUES (?, 'app', 'image', ?, 4096, \
                 'application/vnd.oci.image.manifest.v1+json', 'registry.example/app', ?)",
            )
            .bind(&id)
            .bind(format!("sha256:{:064x}", i))
            .bind(format!("sha256:{:064x}", i + BUILDS))
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO job_refs (job_id, git_ref, tagged) VALUES (?, 'refs/heads/main', 1)",
            )
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
            ids.push(id);
        }
        tx.commit().await.unwrap();
        for sql in [
            "SELECT id FROM jobs WHERE 1 = 1 ORDER BY id DESC LIMIT 51",
            "SELECT id FROM jobs WHERE 1 = 1 AND repo = 'acme/repo-07' ORDER BY id DESC LIMIT 51",
            "SELECT id FROM jobs WHERE 1 = 1 AND state = 'failure' ORDER BY id DESC LIMIT 51",
            "SELECT count(*) FROM jobs WHERE state = 'queued'",
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let plan: Vec<String> = plan.into_iter().map(|p| p.3).collect();
            println!("plan: {sql}\n      -> {}", plan.join("; "));
        }
        pool.close().await;
        (ids[BUILDS / 2].clone(), ids[BUILDS - 3].clone())
    });
    println!(
        "filled {BUILDS} builds in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    // A daemon over that state, watching a branch that does not exist (it builds nothing).
    let repo = t.path().join("repo");
    common::git_repo(&repo, &[("README", &b"bench"[..])], None);
    let body = format!(
        "[[repo]]\npath = \"{}\"\nbranches = [\"no-such-branch\"]\n",
        repo.display()
    );
    let d = Daemon::start(t.path(), &body, "info", &[]);
    std::thread::sleep(Duration::from_secs(1));
    let (st, html) = get(&format!("{}/", d.url));
    assert_eq!(st, 200);
    assert_eq!(html.matches("class=\"build\"").count(), 50, "a full page");

    let rows = [
        ("GET /healthz (baseline)", format!("{}/healthz", d.url)),
        ("GET /", format!("{}/", d.url)),
        (
            "GET /?repo=acme/repo-07",
            format!("{}/?repo=acme%2Frepo-07", d.url),
        ),
        ("GET /?state=failure", format!("{}/?state=failure", d.url)),
        (
            "GET /?before=<5,000th>",
            format!("{}/?before={middle}", d.url),
        ),
        ("GET /builds/{id}", format!("{}/builds/{some_id}", d.url)),
        (
            "GET /api/builds (JSON, 50)",
            format!("{}/api/builds", d.url),
        ),
    ];
    println!("\n{BUILDS} builds, {RUNS} requests each (ms)");
    println!(
        "{:<28} {:>8} {:>8} {:>10}",
        "", "median", "p95", "x baseline"
    );
    let mut base = 0.0;
    for (name, url) in &rows {
        let (med, p95) = measure(url);
        if base == 0.0 {
            base = med;
        }
        println!("{name:<28} {med:>8.2} {p95:>8.2} {:>10.1}", med / base);
        if name == &"GET /" {
            assert!(
                med < 50.0,
                "GET / took {med:.1} ms (median) with {BUILDS} builds"
            );
        }
    }
    drop(d);
}
