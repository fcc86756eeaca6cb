//! The source stage's fetches: a token reaches only the host it is meant for, through git's
//! environment, and never shows in an error.

mod common;

use std::sync::{Arc, Mutex};

use common::net::{FakeServer, Reply};
use common::*;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ghs_sourceTestToken_DO_NOT_LEAK";

#[test]
fn a_fetch_token_goes_only_to_its_host() {
    require("git");
    /// Each request's path and `Authorization` header.
    type Seen = Vec<(String, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = seen.clone();
    let server = FakeServer::start_full(move |r| {
        s.lock()
            .unwrap()
            .push((r.path.clone(), r.header("authorization").map(str::to_owned)));
        Reply::new("404 Not Found")
    });
    let t = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mirror = kiln::source::mirror::Mirror::open(&t.path().join("m.git"), &cancel).unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let url = format!("http://{}/acme/widget.git", server.addr);
    let auth = |base: String| kiln::source::mirror::FetchAuth {
        base,
        token: kiln::secret::Secret::new(TOKEN),
    };

    // Scoped to this server: git sends the token as basic auth.
    let e = mirror
        .fetch(
            &url,
            commit,
            Some("refs/heads/main"),
            Some(&auth(format!("http://{}/", server.addr))),
            &cancel,
        )
        .unwrap_err();
    assert!(!e.to_string().contains(TOKEN), "{e}");
    let with: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert!(!with.is_empty(), "git never asked the server");
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    );
    assert!(
        with.iter()
            .all(|(_, a)| a.as_deref() == Some(expected.as_str())),
        "{with:?}"
    );

    // Scoped to another host: this server never sees it.
    let _ = mirror.fetch(
        &url,
        commit,
        None,
        Some(&auth("https://github.com/".into())),
        &cancel,
    );
    let without: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert!(!without.is_empty());
    assert!(without.iter().all(|(_, a)| a.is_none()), "{without:?}");

    // A ref or commit that could pass for an option is refused before git runs.
    let e = mirror
        .fetch(&url, "--upload-pack=touch /tmp/x", None, None, &cancel)
        .unwrap_err();
    assert!(e.to_string().contains("not a full commit SHA"), "{e}");
}
