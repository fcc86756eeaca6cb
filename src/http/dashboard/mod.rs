//! The dashboard: the farm's recent builds, and a build's page with its log, live through
//! `live.rs` (the admin actions its buttons call are in the API). Rendered on the server with
//! `maud` (checked at compile time, every interpolation escaped); one stylesheet and one
//! script, embedded in the binary and served from here, so the page works on an air-gapped
//! host and its Content-Security-Policy allows no inline script at all.

mod live;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

pub use live::{MAX_LIVE_LOGS, events};

use super::{App, host_state};
use crate::daemon::Daemon;
use crate::state::{ArtifactRow, BuildDetail, BuildQuery, BuildRow, BuildState, HostRow};

/// Builds per page of the list.
const PAGE: u32 = 50;
/// Log lines a build page holds (the latest ones); the full log is at `/builds/{id}/log`.
const PAGE_LINES: u32 = 5_000;

const CSS: &str = include_str!("assets/kiln.css");
const JS: &str = include_str!("assets/kiln.js");

/// Scripts only from this origin's files (none inline, no `eval`), nothing framed, no
/// plug-ins; the page talks only to its own daemon.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// An HTML page with the security headers every page carries.
fn page_response(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn layout(d: &Daemon, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kiln" }
                link rel="stylesheet" href="/assets/kiln.css";
                script src="/assets/kiln.js" defer {}
            }
            body {
                header.top {
                    a href="/" { "kiln" }
                    span.farm { "host " (d.host_id) }
                }
                main { (body) }
            }
        }
    }
}

fn error_page(d: &Daemon, status: StatusCode, message: &str) -> Response {
    page_response(
        status,
        layout(
            d,
            "error",
            html! { h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) } p.error-box { (message) } },
        ),
    )
}

/// `sha256:` and the first 12 hex digits.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// "4.2 s", "3 min 12 s", "2 h 05 min".
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// "just now", "42 s ago", "5 min ago", "3 h ago", "2 days ago".
pub fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0) / 1000;
    match s {
        0..2 => "just now".to_owned(),
        2..120 => format!("{s} s ago"),
        120..7_200 => format!("{} min ago", s / 60),
        7_200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// `refs/heads/main` as `main`, `refs/tags/v1` as `tag v1`.
fn ref_label(r: &str) -> String {
    if let Some(b) = r.strip_prefix("refs/heads/") {
        b.to_owned()
    } else if let Some(t) = r.strip_prefix("refs/tags/") {
        format!("tag {t}")
    } else {
        r.to_owned()
    }
}

/// The web page of a commit, as its repository's forge has it (none for a local path).
pub fn commit_url(d: &Daemon, repo: &str, commit: &str) -> Option<String> {
    d.forge_of(repo)?.commit_url(repo, commit)
}

fn state_label(s: BuildState) -> Markup {
    html! { span.state.(format!("state-{}", s.as_str())) { (s.as_str()) } }
}

fn time_of(ms: i64) -> String {
    super::time(Some(ms)).as_str().unwrap_or("").to_owned()
}

fn build_duration(b: &BuildRow, now: i64) -> Option<i64> {
    let start = b.started_at?;
    Some(b.finished_at.unwrap_or(now) - start)
}

fn digest_with_copy(digest: &str, full: bool) -> Markup {
    html! {
        span.digest {
            code title=(digest) { (if full { digest } else { short_digest(digest) }) }
            button.copy type="button" data-copy=(digest) title="copy the whole digest" { "copy" }
        }
    }
}

#[derive(Deserialize)]
pub struct IndexQuery {
    repo: Option<String>,
    state: Option<String>,
    before: Option<String>,
}

/// `GET /`: the farm's recent builds, newest first, with the queue and the hosts.
pub async fn index(State(app): State<Arc<App>>, Query(q): Query<IndexQuery>) -> Response {
    let d = &app.d;
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match BuildState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error_page(
                    d,
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "unknown state {s:?}: queued, running, success, failure, error or cancelled"
                    ),
                );
            }
        },
    };
    let repo = q.repo.filter(|r| !r.is_empty());
    let query = BuildQuery {
        repo: repo.clone(),
        state,
        before: q.before.filter(|b| !b.is_empty()),
        limit: PAGE + 1,
    };
    let (builds, depth, hosts) = match tokio::try_join!(
        d.store.builds(&query),
        d.store.queue_depth(),
        d.store.hosts()
    ) {
        Ok(x) => x,
        Err(e) => return error_page(d, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let more = builds.len() > PAGE as usize;
    let builds = &builds[..builds.len().min(PAGE as usize)];
    let now = d.store.clock_ms();
    let cfg = d.config();
    let repos: Vec<String> = cfg.repos.iter().map(|r| r.name()).collect();
    let older = more.then(|| {
        let mut u = url::form_urlencoded::Serializer::new(String::new());
        if let Some(r) = &repo {
            u.append_pair("repo", r);
        }
        if let Some(s) = state {
            u.append_pair("state", s.as_str());
        }
        u.append_pair("before", &builds[builds.len() - 1].id);
        format!("/?{}", u.finish())
    });
    let body = html! {
        (farm_panel(d, depth, &hosts, now))
        form.filters method="get" action="/" {
            label { "Repository "
                select name="repo" {
                    option value="" { "all" }
                    @for r in &repos {
                        option value=(r) selected[repo.as_deref() == Some(r.as_str())] { (r) }
                    }
                    @if let Some(r) = repo.as_ref().filter(|r| !repos.contains(r)) {
                        option value=(r) selected { (r) }
                    }
                }
            }
            label { "State "
                select name="state" {
                    option value="" { "all" }
                    @for s in ["queued", "running", "success", "failure", "error", "cancelled"] {
                        option value=(s) selected[state.map(|x| x.as_str()) == Some(s)] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if repo.is_some() || state.is_some() { a href="/" { "clear" } }
        }
        section #list {
            (build_table(d, builds, now))
            @if let Some(u) = older { p.pager { a #older href=(u) { "Older builds →" } } }
        }
    };
    page_response(StatusCode::OK, layout(d, "builds", body))
}

fn farm_panel(d: &Daemon, depth: u64, hosts: &[HostRow], now: i64) -> Markup {
    html! {
        section #farm .summary {
            div.card {
                div.muted { "Queue" }
                div.big #queue-depth { (depth) }
                div.muted { "waiting" }
            }
            div.card {
                div.muted { "Hosts" }
                table #hosts {
                    @for h in hosts {
                        @let st = host_state(h, now, d.lease);
                        tr {
                            td { code { (h.id) } }
                            td.(format!("host-{st}")) { (st) }
                            td { "heartbeat " time datetime=(time_of(h.heartbeat_at)) title=(time_of(h.heartbeat_at)) { (ago(now, h.heartbeat_at)) } }
                            td.num { (h.running) " running" }
                            td.muted { "v" (h.version) }
                        }
                    }
                    @if hosts.is_empty() { tr { td.muted { "no heartbeat yet" } } }
                }
            }
        }
    }
}

fn build_table(d: &Daemon, builds: &[BuildRow], now: i64) -> Markup {
    html! {
        table #builds {
            thead { tr {
                th { "State" } th { "Repository" } th { "Ref" } th { "Commit" } th { "Message" }
                th.num { "Duration" } th { "When" } th { "Host" } th { "Artifacts" }
            } }
            tbody {
                @for b in builds {
                    tr.build data-id=(b.id) data-state=(b.state.as_str()) {
                        td { a href={ "/builds/" (b.id) } { (state_label(b.state)) } }
                        td { (b.repo) }
                        td { code { (ref_label(&b.git_ref)) } }
                        td { code {
                            @match commit_url(d, &b.repo, &b.commit) {
                                Some(u) => a.sha href=(u) title=(b.commit) { (crate::text::short(&b.commit)[..7.min(b.commit.len())]) },
                                None => span.sha title=(b.commit) { (&b.commit[..7.min(b.commit.len())]) },
                            }
                        } }
                        td.subject { a href={ "/builds/" (b.id) } title=[b.subject.as_deref()] {
                            @match &b.subject { Some(s) => (s), None => span.muted { "(not fetched yet)" } }
                        } }
                        td.num { @match build_duration(b, now) { Some(ms) => (duration(ms)), None => "–" } }
                        td { time datetime=(time_of(b.queued_at)) title=(time_of(b.queued_at)) {
                            (ago(now, b.finished_at.or(b.started_at).unwrap_or(b.queued_at)))
                        } }
                        td { @if let Some(h) = &b.host { code { (h) } } }
                        td {
                            @for a in &b.artifacts {
                                div { span.muted { (a.name) " " } (digest_with_copy(&a.digest, false)) }
                            }
                        }
                    }
                }
                @if builds.is_empty() { tr { td colspan="9" .muted { "No builds." } } }
            }
        }
    }
}

/// `GET /builds/{id}`: one build: stages, steps, artifacts, the verify result and the log
/// (the latest lines, then live through `/builds/{id}/events` while it runs).
pub async fn build_page(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let d = &app.d;
    let x = match d.store.build(&id).await {
        Ok(Some(x)) => x,
        Ok(None) => return error_page(d, StatusCode::NOT_FOUND, &format!("no build {id}")),
        Err(e) => return error_page(d, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let end = match d.store.log_end(&id).await {
        Ok(e) => e,
        Err(e) => return error_page(d, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let skipped = end.saturating_sub(1).saturating_sub(u64::from(PAGE_LINES));
    let lines = match d.store.log_lines(&id, skipped, PAGE_LINES).await {
        Ok(l) => l,
        Err(e) => return error_page(d, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let shown_to = lines.last().map_or(skipped, |(n, _)| *n);
    let now = d.store.clock_ms();
    let admin = d.config().admin_token.is_some();
    let b = &x.build;
    let title = format!("{} {}", b.repo, crate::text::short(&b.commit));
    let body = html! {
        h1 {
            span #build-state .state.(format!("state-{}", b.state.as_str())) { (b.state.as_str()) }
            " " (b.repo) " "
            code { (ref_label(&b.git_ref)) }
        }
        @if let Some(s) = &b.subject { p.subject-line { (s) } }
        (actions(b, admin))
        dl.facts {
            dt { "Build" } dd { code { (b.id) } }
            dt { "Commit" } dd { code {
                @match commit_url(d, &b.repo, &b.commit) {
                    Some(u) => a href=(u) { (b.commit) },
                    None => (b.commit),
                }
            } }
            dt { "Refs" } dd { @for r in &x.refs { code { (r) } " " } }
            dt { "Recipe" } dd { code { (b.recipe) } }
            dt { "Host" } dd { (b.host.as_deref().unwrap_or("–")) }
            dt { "Attempts" } dd { (b.attempts) }
            dt { "Queued" } dd { time datetime=(time_of(b.queued_at)) { (ago(now, b.queued_at)) } }
            dt { "Duration" } dd { @match build_duration(b, now) { Some(ms) => (duration(ms)), None => "–" } }
        }
        @if let Some(e) = &b.error { @if b.state.is_terminal() { div.error-box { (e) } } }
        (stages_table(&x, now))
        (steps_table(&x))
        (artifacts_table(&x))
        (verify_result(&x))
        h2 { "Log "
            @if !b.state.is_terminal() { span #live .live { "● live" } }
            " " a.muted href={ "/builds/" (b.id) "/log" } { "plain text" }
        }
        @if skipped > 0 {
            p.muted { "Lines 1–" (skipped) " are in the " a href={ "/builds/" (b.id) "/log" } { "full log" } "." }
        }
        pre #log .log data-after=(shown_to) data-live=(if b.state.is_terminal() { "false" } else { "true" })
            data-events={ "/builds/" (b.id) "/events" } {
            @for (n, line) in &lines { span.line data-n=(n) { (line) } }
        }
    };
    page_response(StatusCode::OK, layout(d, &title, body))
}

fn actions(b: &BuildRow, admin: bool) -> Markup {
    html! {
        @if admin {
            div.actions {
                @if b.state.is_terminal() {
                    button.action type="button" data-label="Rebuild" data-action={ "/api/builds/" (b.id) "/rebuild" } { "Rebuild" }
                } @else {
                    button.action type="button" data-label="Cancel" data-action={ "/api/builds/" (b.id) "/cancel" } { "Cancel" }
                }
                form #token-form hidden {
                    label { "Admin token " input type="password" name="token" autocomplete="off"; }
                    " " button type="submit" { "Use" }
                }
                p #action-status role="status" {}
            }
        }
    }
}

fn stages_table(x: &BuildDetail, now: i64) -> Markup {
    html! {
        h2 { "Stages" }
        table #stages {
            thead { tr { th { "Attempt" } th { "Stage" } th.num { "Time" } th { "Outcome" } th { "Detail" } } }
            tbody {
                @for s in &x.stages {
                    tr data-stage=(s.name) {
                        td.num { (s.attempt) }
                        td { (s.name) }
                        @let abandoned = s.finished_at.is_none() && (s.attempt < x.build.attempts || x.build.state.is_terminal());
                        td.num { @if abandoned { "–" } @else { (duration(s.finished_at.unwrap_or(now) - s.started_at)) } }
                        td { (s.outcome.as_deref().unwrap_or(if abandoned { "abandoned" } else { "running" })) }
                        td { @if let Some(dt) = &s.detail { code { (dt) } } }
                    }
                }
                @if x.stages.is_empty() { tr { td colspan="5" .muted { "Not started." } } }
            }
        }
    }
}

fn steps_table(x: &BuildDetail) -> Markup {
    html! {
        h2 { "Steps" }
        table #steps {
            thead { tr { th { "Attempt" } th { "#" } th { "Command" } th.num { "Exit code" } th.num { "Time" } } }
            tbody {
                @for s in &x.steps {
                    tr {
                        td.num { (s.attempt) }
                        td.num { (s.index) }
                        td {
                            @if s.network { span.network title="This step ran with the network" { "network" } " " }
                            code { (s.command) }
                        }
                        td.num.exit { @match s.exit_code { Some(c) => (c), None => "–" } }
                        td.num { @match s.millis { Some(ms) => (duration(ms as i64)), None => "–" } }
                    }
                }
                @if x.steps.is_empty() { tr { td colspan="5" .muted { "No steps ran yet." } } }
            }
        }
    }
}

fn artifacts_table(x: &BuildDetail) -> Markup {
    let b = &x.build;
    html! {
        h2 { "Artifacts" }
        table #artifacts {
            thead { tr { th { "Name" } th { "Kind" } th { "Digest" } th.num { "Size" } th { "Pushed to" } th { "Provenance" } th { "SBOM" } } }
            tbody {
                @for a in &b.artifacts {
                    tr {
                        td { (a.name) }
                        td { (a.kind) }
                        td { (digest_with_copy(&a.digest, true)) }
                        td.num { (size(a.size)) }
                        td {
                            code { (a.pushed_to) }
                            @if b.state == BuildState::Success {
                                @let repo = a.pushed_to.rsplit_once('@').map_or(a.pushed_to.as_str(), |(r, _)| r);
                                div.muted.tags { "tags: "
                                    @for t in crate::daemon::tags::tags_for(&b.commit, &x.refs.iter().map(|r| (r.clone(), true)).collect::<Vec<_>>()) {
                                        code { (repo) ":" (t) } " "
                                    }
                                }
                            }
                        }
                        td { (provenance(b, a)) }
                        td.sbom { (sbom(b, a)) }
                    }
                }
                @if b.artifacts.is_empty() { tr { td colspan="7" .muted { "None published." } } }
            }
        }
    }
}

fn provenance(b: &BuildRow, a: &ArtifactRow) -> Markup {
    html! {
        @match &a.provenance {
            Some(p) => {
                "SLSA v1 (" code { (crate::attest::provenance::PREDICATE_TYPE) } "), a referrer of the artifact: "
                (digest_with_copy(p, false))
                br;
                span.muted { "built from " (b.repo) " at " code { (crate::text::short(&b.commit)) } " with " code { (b.recipe) } }
            }
            None => span.muted { "none" },
        }
    }
}

fn sbom(b: &BuildRow, a: &ArtifactRow) -> Markup {
    html! {
        @match &a.sbom {
            Some(s) => {
                strong.packages { (s.packages) " packages" } ", " (s.files) " files "
                a href=(format!("/api/builds/{}/sbom/{}", b.id, a.name)) { "SPDX JSON" }
                @if !s.first.is_empty() {
                    ul.first-packages {
                        @for p in &s.first { li { code { (p) } } }
                        @if (s.first.len() as u64) < s.packages { li.muted { "…" } }
                    }
                }
            }
            None => span.muted { "none" },
        }
    }
}

fn verify_result(x: &BuildDetail) -> Markup {
    let v: Vec<_> = x.stages.iter().filter(|s| s.name == "verify").collect();
    html! {
        @if let Some(s) = v.last() {
            h2 { "Verify" }
            p #verify {
                @match s.outcome.as_deref() {
                    Some("ok") => strong.host-up { "reproduced" },
                    Some("skipped") => span.muted { "skipped" },
                    Some(o) => strong.host-lost { "not reproduced (" (o) ")" },
                    None if s.attempt < x.build.attempts || x.build.state.is_terminal() => span.muted { "abandoned" },
                    None => span.live { "rebuilding…" },
                }
                @if let Some(dt) = &s.detail { " " code { (dt) } }
            }
        }
    }
}

fn size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The favicon: none (an empty answer rather than a 404 in every log).
pub async fn favicon() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times() {
        assert_eq!(duration(4_200), "4.2 s");
        assert_eq!(duration(192_000), "3 min 12 s");
        assert_eq!(duration(7_500_000), "2 h 05 min");
        assert_eq!(ago(10_000, 9_500), "just now");
        assert_eq!(ago(100_000, 58_000), "42 s ago");
        assert_eq!(ago(1_000_000, 700_000), "5 min ago");
        assert_eq!(
            short_digest(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab"
        );
        assert_eq!(ref_label("refs/tags/v1"), "tag v1");
    }

    #[test]
    fn markup_escapes_user_text() {
        let m = html! { td { ("<script>alert(1)</script>") } span data-copy=("\"><img src=x>") {} };
        let s = m.into_string();
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
        assert!(!s.contains("\"><img"), "{s}");
    }
}
