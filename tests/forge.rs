//! The forge contract: every forge answers kiln's questions about a repository alike. One git
//! repository is asked through the local forge (by its path) and through the GitHub forge (the
//! stand-in API serving that same repository). A new forge joins the table in
//! `every_forge_answers_alike_of_one_repository` with its own stand-in.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::forge::FakeGitHub;
use common::git;
use kiln::forge::Forge;
use kiln::forge::github::{GitHub, Settings};
use kiln::forge::local::Local;
use kiln::secret::Secret;

const TOKEN: &str = "ghs_forgeContractToken";

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forge_answers_alike_of_one_repository() {
    let gh = FakeGitHub::start(Some(TOKEN));
    let main = gh.create("acme/hello", &[("a.txt", b"1")]);
    let feature = gh.branch("acme/hello", "feature/x", &[("b.txt", b"2")], "feature");
    gh.tag("acme/hello", "v1.0.0", &main);
    gh.tag("acme/hello", "release/2", &feature);
    git(&gh.dir("acme/hello"), &["tag", "light", &main]);

    let state = tempfile::tempdir().unwrap();
    let store = kiln::state::SqliteStore::open(&state.path().join("state.db"))
        .await
        .unwrap();
    let github = GitHub::new(
        Settings {
            api_url: gh.api_url.clone(),
            token: Some(Secret::new(TOKEN)),
            token_source: None,
            poll_interval: Duration::from_secs(60),
            webhook_secret: None,
        },
        Arc::new(store),
        &kiln::metrics::Metrics::new(),
    )
    .unwrap();
    let path = gh.dir("acme/hello").display().to_string();
    let table: [(&dyn Forge, &str, String); 2] = [
        (&Local, &path, path.clone()),
        (&github, "acme/hello", format!("{}/acme/hello", gh.git_url)),
    ];

    for (forge, repo, fetch_url) in table {
        let k = forge.kind();
        assert_eq!(
            kiln::forge::kind_claiming(repo).map(|c| c.name()),
            Some(k),
            "{k} claims {repo}"
        );
        assert_eq!(
            forge.head(repo, "main").await.unwrap().as_deref(),
            Some(main.as_str()),
            "{k}: head of main"
        );
        assert_eq!(
            forge.head(repo, "feature/x").await.unwrap().as_deref(),
            Some(feature.as_str()),
            "{k}: head of a branch with a slash"
        );
        assert_eq!(
            forge.head(repo, "gone").await.unwrap(),
            None,
            "{k}: a branch that does not exist"
        );
        assert_eq!(
            sorted(forge.branches(repo).await.unwrap()),
            pairs(&[("feature/x", &feature), ("main", &main)]),
            "{k}: branches"
        );
        assert_eq!(
            sorted(forge.tags(repo).await.unwrap()),
            pairs(&[("light", &main), ("release/2", &feature), ("v1.0.0", &main)]),
            "{k}: tags, annotated ones peeled to their commits"
        );
        // One look for a check: the same heads and tags.
        let branches = ["main".to_owned(), "gone".to_owned()];
        let seen = forge.snapshot(repo, &branches, true).await.unwrap();
        assert_eq!(
            seen.heads,
            [
                ("main".to_owned(), Some(main.clone())),
                ("gone".to_owned(), None)
            ],
            "{k}: snapshot heads"
        );
        assert_eq!(
            seen.tags.map(sorted),
            Some(pairs(&[
                ("light", &main),
                ("release/2", &feature),
                ("v1.0.0", &main)
            ])),
            "{k}: snapshot tags"
        );
        let seen = forge.snapshot(repo, &branches[..1], false).await.unwrap();
        assert_eq!(seen.tags, None, "{k}: tags not asked for");
        let origin = forge.origin(repo).await.unwrap();
        assert_eq!(origin.fetch_url, fetch_url, "{k}: fetch URL");
        // The stand-in's git is plain git://: no credential may ride along to it.
        assert!(
            origin.auth.is_none(),
            "{k}: credentials for a non-https host"
        );
    }
    assert!(kiln::forge::kind_claiming("no-owner").is_none());

    // Asked again, the hosted forge's listings are conditional: 304s, and the same answers.
    let before = gh.requests().len();
    assert_eq!(
        sorted(github.branches("acme/hello").await.unwrap()),
        pairs(&[("feature/x", &feature), ("main", &main)])
    );
    assert_eq!(
        sorted(github.tags("acme/hello").await.unwrap()),
        pairs(&[("light", &main), ("release/2", &feature), ("v1.0.0", &main)])
    );
    let again: Vec<(String, u16)> = gh.requests()[before..]
        .iter()
        .map(|r| (r.path.clone(), r.status))
        .collect();
    assert_eq!(
        again,
        [
            ("/repos/acme/hello/branches".to_owned(), 304),
            ("/repos/acme/hello/tags".to_owned(), 304)
        ]
    );
    // A branch moves: the next listing is a 200 with the new head.
    let before = gh.requests().len();
    let moved = gh.commit("acme/hello", &[("a.txt", b"3")], "move main");
    assert_eq!(
        sorted(github.branches("acme/hello").await.unwrap()),
        pairs(&[("feature/x", &feature), ("main", &moved)])
    );
    let moved_listing: Vec<(String, u16)> = gh.requests()[before..]
        .iter()
        .map(|r| (r.path.clone(), r.status))
        .collect();
    assert_eq!(
        moved_listing,
        [("/repos/acme/hello/branches".to_owned(), 200)]
    );
}
