//! The dashboard in a real browser (headless Chromium through WebDriver) against a running
//! daemon with real builds: the list, a build page whose log grows live and survives a cut
//! connection, hostile text shown as text, badges, and the admin actions.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::Path;
use std::time::Duration;

use browser::Browser;
use common::daemon::*;
use common::forge::FakeGitHub;
use common::net::CutProxy;
use common::recipe::*;
use common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "kiln-admin-token-for-tests-31337";
const XSS_SUBJECT: &str = "<script>alert(1)</script>";
const XSS_LINE: &str = "<img src=x onerror=window.kilnXss=1>";

/// A step that prints a numbered line every 0.4 s for about 24 s, with the hostile line after
/// the 30th (so it reaches an open page live).
fn slow_printing_step() -> String {
    format!(
        "for i in $(seq 1 60); do echo progress line $i; [ $i = 30 ] && echo '{XSS_LINE}'; sleep 0.4; done"
    )
}

fn line_numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

fn build_of<'a>(builds: &'a [Value], repo: &str) -> Option<&'a Value> {
    builds.iter().find(|b| b["repo"] == repo)
}

/// A `GET` of `path` and its status line (without waiting for a body that may never end);
/// the connection stays open.
fn open_events(base: &str, path: &str) -> (std::net::TcpStream, String) {
    let mut s = std::net::TcpStream::connect(base.strip_prefix("http://").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") && std::io::Read::read(&mut s, &mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

fn status_line(base: &str, path: &str) -> String {
    open_events(base, path).1
}
/// Block on a blocking helper without stalling the browser's runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    builder_image("busybox");
    let gh = FakeGitHub::start(Some(GITHUB_TOKEN));
    // acme/web: a slow build whose commit message and log are hostile markup.
    let web = hello("dashboard-web", &slow_printing_step());
    gh.create("acme/web", &refs(&hello("dashboard-web-0", "")));
    let web_sha = gh.commit("acme/web", &refs(&web), XSS_SUBJECT);
    // acme/api: a build that fails at its first step with exit code 3.
    let api = hello("dashboard-api", "echo compiling; exit 3");
    gh.create("acme/api", &refs(&api));

    let t = tempfile::tempdir().unwrap();
    let admin = secret_file(t.path(), "admin-token", ADMIN_TOKEN);
    let admin_line =
        format!("admin_token_file = \"{admin}\"\nconcurrency = 2\nshutdown_grace = \"1s\"\n");
    let repos = "[[repo]]\ngithub = \"acme/web\"\nbranches = [\"main\"]\n\n\
                 [[repo]]\ngithub = \"acme/api\"\nbranches = [\"main\"]\n";
    let body = format!(
        "{}\n{repos}",
        github_config(&gh, t.path(), "1s", &admin_line)
    );
    let mut d = Daemon::start(t.path(), &body, "debug", &[]);
    // The browser reaches the daemon through a proxy whose connections can be cut.
    let proxy = CutProxy::start(d.url.strip_prefix("http://").unwrap());
    let base = format!("http://{}", proxy.addr);

    // The web build runs and has printed a few lines.
    let builds = blocking(|| {
        d.wait_builds("the web build to print", Duration::from_secs(120), |b| {
            build_of(b, "acme/web").is_some_and(|w| {
                w["state"] == "running"
                    && get(&format!("{}/builds/{}", d.url, w["id"].as_str().unwrap()))
                        .1
                        .matches("class=\"line\"")
                        .count()
                        >= 8
            })
        })
    });
    let id = build_of(&builds, "acme/web").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = format!("{base}/builds/{id}");

    let b = Browser::start().await;
    b.goto(&page).await;
    let first = b
        .js("return document.querySelectorAll('#log .line').length")
        .await;
    let first = first.as_u64().unwrap();
    assert!(first >= 8, "the page holds the log so far: {first} lines");

    // The page grows while the build prints: lines arrive through the event stream.
    b.wait_for(
        "live lines",
        Duration::from_secs(10),
        "return window.kilnLines >= 6",
    )
    .await;
    // Live lines are shown as their text.
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#log .line')).slice(-3).every(e => /^progress line [0-9]+$/.test(e.textContent))")
            .await,
        true,
        "{}",
        b.js("return document.getElementById('log').innerText.slice(-200)").await
    );
    let grown = b
        .js("return document.querySelectorAll('#log .line').length")
        .await
        .as_u64()
        .unwrap();
    assert!(grown > first, "{grown} lines after {first}");

    // Cut the connection mid-stream: the browser reconnects with Last-Event-ID and the log
    // goes on with no line twice and none missing.
    let before_cut = b.js("return window.kilnLines").await.as_u64().unwrap();
    let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        proxy.cut() > 0,
        "the event stream was open through the proxy"
    );
    b.wait_for(
        "the browser to reconnect",
        Duration::from_secs(10),
        "return window.kilnReconnects >= 1",
    )
    .await;
    b.wait_for(
        "lines after the reconnect",
        Duration::from_secs(20),
        &format!("return window.kilnLines >= {}", before_cut + 8),
    )
    .await;
    assert!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst) > connections,
        "the browser reconnected"
    );
    let ns = line_numbers(
        &b.js(
            "return Array.from(document.querySelectorAll('#log .line'), e => Number(e.dataset.n))",
        )
        .await,
    );
    let want: Vec<u64> = (1..=ns.len() as u64).collect();
    assert_eq!(ns, want, "every line once, in order");
    assert_eq!(b.js("return window.kilnDuplicates").await, 0);

    // The hostile line arrives live: shown as text, nothing runs.
    b.wait_for(
        "the hostile line, live",
        Duration::from_secs(20),
        &format!(
            "return Array.from(document.querySelectorAll('#log .line')).some(e => e.textContent === {XSS_LINE:?})"
        ),
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('log').dataset.live")
            .await,
        "true"
    );
    assert_eq!(b.js("return typeof window.kilnXss").await, "undefined");
    assert_eq!(
        b.js("return document.querySelectorAll('#log img').length")
            .await,
        0
    );

    // The build ends; the page reloads itself with its final state.
    blocking(|| {
        d.wait_builds("the web build to succeed", Duration::from_secs(120), |x| {
            has(x, &web_sha, "success")
        })
    });
    b.wait_for(
        "the page's final state",
        Duration::from_secs(15),
        "return document.getElementById('build-state').textContent === 'success' \
         && !document.getElementById('live')",
    )
    .await;

    // Hostile text is shown as text and runs nothing.
    assert!(!b.alert_open().await, "no alert opened");
    assert_eq!(
        b.js("return typeof window.kilnXss").await,
        "undefined",
        "the log's onerror did not run"
    );
    assert_eq!(
        b.js("return document.querySelector('.subject-line').textContent")
            .await,
        XSS_SUBJECT
    );
    assert_eq!(
        b.js(&format!(
            "return Array.from(document.querySelectorAll('#log .line')).some(e => e.textContent === {XSS_LINE:?})"
        ))
        .await,
        true
    );
    assert_eq!(
        b.js("return document.querySelectorAll('main img, main script').length")
            .await,
        0
    );
    assert_eq!(
        b.js("return document.scripts.length").await,
        1,
        "only kiln.js"
    );
    // The page's facts: stages, steps with exit codes, the artifact's whole digest to copy.
    let api_build = blocking(|| d.build(&id));
    let digest = api_build["artifacts"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.js("return document.querySelector('#artifacts button.copy').dataset.copy")
            .await,
        digest.as_str()
    );
    // What is inside: the package count, and a link to the SBOM the state recorded.
    let sbom = &api_build["artifacts"][0]["sbom"];
    assert_eq!(
        b.js("return document.querySelector('#artifacts td.sbom .packages').textContent")
            .await,
        format!("{} packages", sbom["packages"])
    );
    let link = b
        .js("return document.querySelector('#artifacts td.sbom a').href")
        .await;
    let (status, doc) = blocking(|| get(link.as_str().unwrap()));
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(doc.as_bytes()))
        ),
        sbom["digest"].as_str().unwrap(),
        "the link serves the SBOM the build recorded"
    );
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let stages = b
        .js("return Array.from(document.querySelectorAll('#stages tr[data-stage]'), e => e.dataset.stage)")
        .await;
    for s in ["source", "run", "pack", "image", "publish"] {
        assert!(
            stages.as_array().unwrap().iter().any(|x| x == s),
            "stage {s} in {stages}"
        );
    }
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#steps td.exit'), e => e.textContent).every(c => c === '0')")
            .await,
        true
    );
    // The whole page, log included, for the README.
    b.client.set_window_size(1440, 2000).await.unwrap();
    b.screenshot(&docs("build.png")).await;
    b.client.set_window_size(1440, 1000).await.unwrap();

    // The list: both builds, newest first, the hostile subject as text, short digests.
    blocking(|| {
        d.wait_builds("the api build to fail", Duration::from_secs(120), |x| {
            build_of(x, "acme/api").is_some_and(|a| a["state"] == "failure")
        })
    });
    b.goto(&format!("{base}/")).await;
    assert!(!b.alert_open().await);
    let rows = b
        .js("return Array.from(document.querySelectorAll('#builds tr.build'), r => [r.dataset.state, r.querySelector('.subject').textContent.trim()])")
        .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "success" && r[1] == XSS_SUBJECT),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r[0] == "failure"), "{rows:?}");
    let short = b
        .js("return document.querySelector('#builds .digest code').textContent")
        .await;
    assert_eq!(short, &digest[..19]);
    // The short SHA links to the commit on (the stand-in) GitHub.
    assert_eq!(
        b.js("return document.querySelector('#builds tr[data-state=success] a.sha').href")
            .await,
        format!("{}/acme/web/commit/{web_sha}", gh.api_url)
    );
    assert_eq!(
        b.js("return document.querySelector('#builds button.copy').dataset.copy")
            .await,
        digest.as_str()
    );
    assert_eq!(b.js("return typeof window.kilnXss").await, "undefined");
    assert!(
        b.js("return document.getElementById('queue-depth').textContent")
            .await
            == "0"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#hosts tr').length")
            .await,
        1
    );
    b.screenshot(&docs("dashboard.png")).await;
    // Filtered by state, then by repository.
    b.goto(&format!("{base}/?state=failure")).await;
    assert_eq!(
        b.js(
            "return Array.from(document.querySelectorAll('#builds tr.build'), r => r.dataset.state)"
        )
        .await,
        serde_json::json!(["failure"])
    );
    b.goto(&format!("{base}/?repo=acme%2Fweb")).await;
    assert_eq!(
        b.js("return document.querySelectorAll('#builds tr.build').length")
            .await,
        1
    );

    // Badges render as images.
    for (repo, label) in [("acme/web", "passing"), ("acme/api", "failing")] {
        let ok = b
            .client
            .execute_async(
                "const [src, done] = arguments; const i = new Image(); \
                 i.onload = () => done(i.naturalWidth); i.onerror = () => done(-1); i.src = src;",
                vec![Value::String(format!("/badges/{repo}/main.svg"))],
            )
            .await
            .unwrap();
        assert!(ok.as_i64().unwrap() > 40, "{repo}'s badge rendered: {ok}");
        b.goto(&format!("{base}/badges/{repo}/main.svg")).await;
        let text = b.js("return document.documentElement.textContent").await;
        assert!(text.as_str().unwrap().contains(label), "{text}");
        b.goto(&format!("{base}/")).await;
    }

    // Actions: refused without the token, over HTTP and in the page.
    let rebuild = format!("{}/api/builds/{id}/rebuild", d.url);
    assert_eq!(http("POST", &rebuild, &[], b"").0, 401);
    assert_eq!(
        http("POST", &rebuild, &[("Authorization", "Bearer wrong")], b"").0,
        401
    );
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(
        http(
            "POST",
            &format!("{}/api/builds/01NOSUCHBUILD/cancel", d.url),
            &[("Authorization", &bearer)],
            b""
        )
        .0,
        404
    );
    assert_eq!(
        http(
            "POST",
            &format!("{}/api/builds/{id}/cancel", d.url),
            &[("Authorization", &bearer)],
            b""
        )
        .0,
        409,
        "a finished build cannot be cancelled"
    );
    b.goto(&page).await;
    b.click("button.action").await;
    b.wait_for(
        "the token form",
        Duration::from_secs(5),
        "return !document.getElementById('token-form').hidden",
    )
    .await;
    b.type_into("#token-form input", "not-the-token").await;
    b.click("#token-form button").await;
    b.wait_for(
        "the refusal",
        Duration::from_secs(5),
        "return document.getElementById('action-status').textContent.includes('refused')",
    )
    .await;
    assert_eq!(
        b.js("return sessionStorage.getItem('kiln-admin-token')")
            .await,
        Value::Null
    );
    assert_eq!(blocking(|| d.build(&id))["state"], "success");

    // With the token: asked once, kept for the session; the rebuild runs, then is cancelled.
    b.type_into("#token-form input", ADMIN_TOKEN).await;
    b.click("#token-form button").await;
    blocking(|| {
        wait_until("the rebuild to run", Duration::from_secs(60), || {
            let x = d.build(&id);
            x["state"] == "running" && x["attempts"] == 2
        })
    });
    b.wait_for(
        "the page of the running rebuild",
        Duration::from_secs(15),
        "const b = document.querySelector('button.action'); return !!b && b.dataset.label === 'Cancel'",
    )
    .await;
    b.click("button.action").await;
    blocking(|| {
        wait_until("the cancel", Duration::from_secs(60), || {
            d.build(&id)["state"] == "cancelled"
        })
    });
    assert_eq!(
        b.js("return sessionStorage.getItem('kiln-admin-token')")
            .await,
        ADMIN_TOKEN,
        "the token was kept for the session"
    );

    // The event stream over plain HTTP: resumes after Last-Event-ID, ends with the build.
    let (st, head, sse) = http_full(
        "GET",
        &format!("{}/builds/{id}/events", d.url),
        &[("Last-Event-ID", "5")],
        b"",
    );
    assert_eq!(st, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let ids: Vec<u64> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&6), "{sse}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert!(sse.contains("event: end\ndata: cancelled"), "{sse}");

    // Every page carries a policy that forbids inline script.
    let (_, head, html) = get_full(&format!("{}/", d.url));
    let csp = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .expect("a Content-Security-Policy header");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // A running build (rebuilt once more) with its live log open on a plain connection.
    assert_eq!(
        http("POST", &rebuild, &[("Authorization", &bearer)], b"").0,
        202
    );
    blocking(|| {
        wait_until("the second rebuild to run", Duration::from_secs(60), || {
            d.build(&id)["state"] == "running"
        })
    });
    let mut stream = std::net::TcpStream::connect(d.url.strip_prefix("http://").unwrap()).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET /builds/{id}/events HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes(),
    )
    .unwrap();

    // Live logs are capped (256 per daemon): opened one by one, they are refused once the
    // cap is reached (this test's other stream, and the browser's if its page is live, count).
    let events = format!("/builds/{id}/events");
    let mut open = Vec::new();
    let opened = loop {
        let (s, line) = open_events(&d.url, &events);
        if line.contains(" 503 ") {
            break open.len();
        }
        assert!(line.contains(" 200 "), "{line:?}");
        open.push(s);
        assert!(open.len() <= 256, "no cap after {} live logs", open.len());
    };
    assert!(
        (253..=255).contains(&opened),
        "{opened} live logs (besides this test's other one) before the refusal"
    );
    drop(open);
    blocking(|| {
        wait_until(
            "a live log after the others closed",
            Duration::from_secs(20),
            || status_line(&d.url, &events).contains(" 200 "),
        )
    });

    // Without admin_token_file the actions are off (the config reloads without a restart).
    let reloads = d.log().matches("config reloaded").count();
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace(&format!("admin_token_file = \"{admin}\"\n"), ""),
    )
    .unwrap();
    blocking(|| {
        wait_until("the reload", Duration::from_secs(10), || {
            d.log().matches("config reloaded").count() > reloads
        })
    });
    assert_eq!(
        http("POST", &rebuild, &[("Authorization", &bearer)], b"").0,
        403
    );
    b.goto(&page).await;
    assert_eq!(
        b.js("return document.querySelectorAll('button.action').length")
            .await,
        0
    );
    b.close().await;

    // SIGTERM: the open event stream ends with the server instead of holding the stop up.
    let (status, took) = blocking(|| d.signal(libc::SIGTERM));
    assert!(status.success(), "{}", d.log());
    assert!(
        took < Duration::from_secs(8),
        "the daemon took {took:?} to stop with a live log open"
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(read.is_ok(), "the stream was closed: {read:?}");
    assert!(String::from_utf8_lossy(&rest).contains("text/event-stream"));
}

/// Screenshots: to `docs/` (the README shows them) with `KILN_SCREENSHOTS=docs`, else to
/// cargo's scratch directory for tests (a test run leaves the work tree alone).
fn docs(name: &str) -> std::path::PathBuf {
    let dir = if std::env::var("KILN_SCREENSHOTS").as_deref() == Ok("docs") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    dir.join(name)
}
