//! A registry client: TLS, authentication (anonymous, basic, bearer tokens cached per scope),
//! and retries with exponential backoff and jitter, honouring `Retry-After`.
//!
//! Secrets never leave this module in a printable form: credentials and tokens are wrapped in
//! [`Secret`], whose `Debug` and `Display` print `<redacted>`, and URLs in errors and logs
//! carry no credentials.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::reference::Reference;
use crate::secret::Secret;

/// Credentials for one registry.
#[derive(Clone, Debug)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// An identity token (refresh token) for the bearer flow.
    IdentityToken(Secret),
}

/// Where the credentials come from: the Docker config (`$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`: `auths`, `credHelpers`, `credsStore`).
pub fn docker_credential(registry: &str) -> Option<Credential> {
    let candidates: Vec<String> = if registry == crate::reference::DOCKER_HUB {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            registry.into(),
        ]
    } else {
        vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    for c in candidates {
        match docker_credential::get_credential(&c) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                return Some(Credential::Basic {
                    username: u,
                    password: Secret::new(p),
                });
            }
            Ok(docker_credential::DockerCredential::IdentityToken(t)) => {
                return Some(Credential::IdentityToken(Secret::new(t)));
            }
            Err(e) => tracing::trace!(server = %c, error = %e, "no docker credential"),
        }
    }
    None
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// An extra CA certificate (PEM) to trust, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to non-loopback registries.
    pub insecure: bool,
    /// Retry policy; `None` for the default.
    pub retry: Option<RetryPolicy>,
}

/// Exponential backoff with full jitter, bounded by a total time per request.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub budget: Duration,
    /// Give up sooner when the registry cannot be reached at all (refused, DNS): interactive
    /// commands should not sit silent for minutes on a typo.
    pub unreachable_budget: Duration,
}

impl RetryPolicy {
    /// For interactive commands: an unreachable registry gives up after a few seconds,
    /// unless `retry_for` (`--retry-for`) says how long to keep trying.
    pub fn interactive(retry_for: Option<Duration>) -> RetryPolicy {
        let d = RetryPolicy::default();
        match retry_for {
            Some(t) => RetryPolicy {
                budget: t,
                unreachable_budget: t,
                ..d
            },
            None => RetryPolicy {
                unreachable_budget: Duration::from_secs(5),
                ..d
            },
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(120),
            unreachable_budget: Duration::from_secs(120),
        }
    }
}

/// A registry request that failed, with whether trying again could help.
#[derive(Debug, thiserror::Error)]
pub struct RegistryError {
    /// What kiln was doing, e.g. `HEAD blob`.
    pub op: String,
    /// The URL, without credentials.
    pub url: String,
    pub status: Option<u16>,
    /// The distribution spec's error codes from the body, if any.
    pub codes: Vec<String>,
    pub message: String,
    pub retryable: bool,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.op, self.url)?;
        if let Some(s) = self.status {
            write!(f, "HTTP {s} ")?;
        }
        if !self.codes.is_empty() {
            write!(f, "[{}] ", self.codes.join(", "))?;
        }
        f.write_str(&self.message)
    }
}

/// Cap on error bodies read from a registry: a hostile or broken one cannot exhaust memory.
const ERROR_BODY_CAP: usize = 16 * 1024;

/// A body that can be produced again for a retry.
pub enum Body {
    Empty,
    Bytes(Bytes),
    /// A byte range of a file, streamed; `progress` hears the file offset reached, now and
    /// then.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        progress: Option<Progress>,
    },
}

/// Called with how far an upload got (a file offset).
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

impl Body {
    async fn to_reqwest(&self) -> std::io::Result<(reqwest::Body, u64)> {
        Ok(match self {
            Body::Empty => (reqwest::Body::from(Bytes::new()), 0),
            Body::Bytes(b) => (reqwest::Body::from(b.clone()), b.len() as u64),
            Body::File {
                path,
                offset,
                len,
                progress,
            } => {
                use futures_util::StreamExt;
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(*offset)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(*len), 256 * 1024);
                let (mut at, mut told) = (*offset, *offset);
                let progress = progress.clone();
                let stream = stream.inspect(move |chunk| {
                    if let (Ok(c), Some(p)) = (chunk, progress.as_ref()) {
                        at += c.len() as u64;
                        if at - told >= 4 << 20 {
                            told = at;
                            p(at);
                        }
                    }
                });
                (reqwest::Body::wrap_stream(stream), *len)
            }
        })
    }
}

struct Token {
    value: Secret,
    expires: Instant,
}

/// A client for one registry host.
pub struct RegistryClient {
    http: reqwest::Client,
    /// `host[:port]`.
    registry: String,
    /// Plain HTTP is allowed (loopback, or `--insecure`); HTTPS is still tried first.
    plain_allowed: bool,
    /// `https://host` or `http://host`, found by probing; probed again after a connection
    /// failure (the choice is not kept for the client's lifetime).
    base: tokio::sync::Mutex<Option<String>>,
    /// Looked up on first use, off the async runtime: a Docker credential helper is a process
    /// that may take its time.
    credential: tokio::sync::OnceCell<Option<Credential>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Registries that answered with a Basic challenge get credentials up front.
    basic: Mutex<bool>,
    retry: RetryPolicy,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn err(op: &str, url: &str, message: impl Into<String>, retryable: bool) -> RegistryError {
    RegistryError {
        op: op.to_owned(),
        url: url.to_owned(),
        status: None,
        codes: Vec::new(),
        message: message.into(),
        retryable,
    }
}

impl RegistryClient {
    /// A client for `registry` (`host[:port]`), with credentials from the Docker config
    /// (looked up when first needed).
    pub fn new(registry: &str, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        Self::build(registry, opts, tokio::sync::OnceCell::new())
    }

    /// A client with the given credentials instead of the Docker config's.
    pub fn with_credential(
        registry: &str,
        opts: &RegistryOptions,
        credential: Option<Credential>,
    ) -> Result<Self, RegistryError> {
        Self::build(
            registry,
            opts,
            tokio::sync::OnceCell::new_with(Some(credential)),
        )
    }

    fn build(
        registry: &str,
        opts: &RegistryOptions,
        credential: tokio::sync::OnceCell<Option<Credential>>,
    ) -> Result<Self, RegistryError> {
        let plain_allowed = opts.insecure || crate::reference::is_loopback_host(registry);
        let tls = super::tls::client_config(opts.ca_file.as_deref()).map_err(|e| {
            err(
                "read CA",
                &opts
                    .ca_file
                    .as_ref()
                    .map_or(String::new(), |c| c.display().to_string()),
                e,
                false,
            )
        })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(5))
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| err("create HTTP client", registry, e.to_string(), false))?;
        Ok(RegistryClient {
            http,
            registry: registry.to_owned(),
            plain_allowed,
            base: tokio::sync::Mutex::new(None),
            credential,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(false),
            retry: opts.retry.unwrap_or_default(),
        })
    }

    /// The credential for this registry: the Docker config's, read (and its helper run) on a
    /// blocking thread the first time.
    async fn credential(&self) -> Option<&Credential> {
        self.credential
            .get_or_init(|| async {
                let registry = self.registry.clone();
                tokio::task::spawn_blocking(move || docker_credential(&registry))
                    .await
                    .unwrap_or(None)
            })
            .await
            .as_ref()
    }

    /// For a reference: a client for its registry.
    pub fn for_reference(r: &Reference, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        Self::new(&r.registry, opts)
    }

    /// `scheme://host[:port]`: HTTPS, unless plain HTTP is allowed (loopback, `--insecure`) and
    /// the HTTPS attempt found a server that answers in plain HTTP. A certificate error, a
    /// timeout or a refused connection keeps HTTPS, so the request reports it as itself.
    pub async fn base(&self) -> String {
        let mut cached = self.base.lock().await;
        if let Some(b) = cached.as_ref() {
            return b.clone();
        }
        let https = format!("https://{}", self.registry);
        let chosen = if !self.plain_allowed {
            https
        } else {
            let probe = self
                .http
                .get(format!("{https}/v2/"))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match probe {
                Ok(_) => https,
                Err(e) if super::tls::speaks_plain_http(&e) => {
                    tracing::debug!(registry = %self.registry, "the registry answers in plain HTTP; using it (allowed for loopback and --insecure registries)");
                    format!("http://{}", self.registry)
                }
                Err(e) => {
                    tracing::debug!(registry = %self.registry, error = %reqwest_chain(e), "the HTTPS probe failed; staying on HTTPS");
                    // Not settled: probe again next time.
                    return https;
                }
            }
        };
        *cached = Some(chosen.clone());
        chosen
    }

    /// Forget the probed scheme (after a connection failure), so the next request probes.
    async fn forget_base(&self) {
        *self.base.lock().await = None;
    }

    /// Whether credentials may go to `base`: never over plain HTTP to a host that is not
    /// loopback.
    fn credentials_allowed(&self, base: &str) -> bool {
        !super::tls::is_plain_http(base) || crate::reference::is_loopback_host(&self.registry)
    }

    /// Like [`send`](Self::send) but without retrying failures (authentication challenges are
    /// still answered): for requests whose retry needs more than repeating them.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_once(
        &self,
        op: &str,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: &Body,
        scopes: &[String],
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_inner(op, method, url, headers, body, scopes, ok, false)
            .await
    }

    /// Send a request with authentication and retries. `scopes` are the token scopes the
    /// request needs (`repository:team/app:pull,push`). `url` is a path under the base, or an
    /// absolute URL (upload locations). Returns any response whose status is in `ok`.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        op: &str,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: &Body,
        scopes: &[String],
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_inner(op, method, url, headers, body, scopes, ok, true)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_inner(
        &self,
        op: &str,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: &Body,
        scopes: &[String],
        ok: &[StatusCode],
        retry: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.absolute(url).await;
        let shown = strip_query_secrets(&url);
        let credential = self.credential().await;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let (req_body, len) = body
                .to_reqwest()
                .await
                .map_err(|e| err(op, &shown, format!("reading the body: {e}"), false))?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if !matches!(body, Body::Empty)
                || method == Method::PUT
                || method == Method::POST
                || method == Method::PATCH
            {
                req = req
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(req_body);
            }
            // Credentials go only to the registry itself: never to another host an upload
            // Location or redirect names (a CDN, a load balancer speaking plain HTTP), and
            // never over plain HTTP to a host that is not loopback.
            let base = self.base().await;
            if same_origin(&url, &base)
                && self.credentials_allowed(&base)
                && let Some(auth) = self.authorization(scopes, credential)
            {
                req = req.header(AUTHORIZATION, auth);
            }
            tracing::debug!(op, url = %shown, attempt, "registry request");
            let outcome = req.send().await;
            let delay = match outcome {
                Ok(resp) if ok.contains(&resp.status()) => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !refreshed => {
                    refreshed = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if !self.credentials_allowed(&base) {
                        return Err(err(
                            op,
                            &shown,
                            "the registry asks for credentials over plain HTTP; kiln sends them only over HTTPS (or to a loopback registry)",
                            false,
                        ));
                    }
                    match challenge {
                        Some(c) => self.authenticate(&c, scopes, credential).await?,
                        None => return Err(self.failure(op, &shown, resp).await),
                    }
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let e = self.failure(op, &shown, resp).await;
                    if !retry {
                        return Err(e);
                    }
                    if status == StatusCode::UNAUTHORIZED {
                        // Rejected even after a fresh challenge: drop cached tokens so a later request
                        // authenticates afresh; this one fails below (401 is not retryable).
                        crate::sync::lock(&self.tokens).clear();
                    }
                    if !e.retryable {
                        return Err(e);
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
                    tracing::warn!(
                        "{op} {shown}: HTTP {}; retrying in {:.1}s (attempt {attempt})",
                        status.as_u16(),
                        wait.as_secs_f64()
                    );
                    (wait, e, false)
                }
                Err(e) => {
                    if e.is_connect() || e.is_timeout() {
                        self.forget_base().await;
                    }
                    // A certificate the registry presents will not change on a retry.
                    let tls_refused = super::tls::rustls_error(&e)
                        .is_some_and(|r| !matches!(r, rustls::Error::InvalidMessage(_)));
                    let unreachable = e.is_connect() && !tls_refused;
                    let retryable = !tls_refused
                        && (e.is_connect()
                            || e.is_timeout()
                            || e.is_request()
                            || e.is_body()
                            || e.is_decode());
                    let e = err(op, &shown, reqwest_chain(e), retryable);
                    if !retryable || !retry {
                        return Err(e);
                    }
                    let wait = self.backoff(attempt);
                    tracing::warn!(
                        "{op} {shown}: {}; retrying in {:.1}s (attempt {attempt})",
                        e.message,
                        wait.as_secs_f64()
                    );
                    (wait, e, unreachable)
                }
            };
            let (wait, last, unreachable) = delay;
            let budget = if unreachable {
                self.retry.unreachable_budget
            } else {
                self.retry.budget
            };
            // Keep trying for the whole budget: the last wait is cut short, not skipped.
            let left = budget.saturating_sub(started.elapsed());
            let wait = wait.min(left);
            if left.is_zero() {
                return Err(RegistryError {
                    message: format!(
                        "{} (gave up after {attempt} attempts in {:.0?}{})",
                        last.message,
                        started.elapsed(),
                        if unreachable {
                            "; --retry-for DURATION waits longer"
                        } else {
                            ""
                        }
                    ),
                    ..last
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn absolute(&self, url: &str) -> String {
        if super::tls::is_absolute(url) {
            url.to_owned()
        } else {
            format!("{}{url}", self.base().await)
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::retry::backoff(self.retry.initial, self.retry.max_delay, attempt)
    }

    fn authorization(
        &self,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Option<HeaderValue> {
        let key = scopes.join(" ");
        if let Some(t) = crate::sync::lock(&self.tokens).get(&key)
            && t.expires > Instant::now()
        {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value.expose())).ok()?;
            v.set_sensitive(true);
            return Some(v);
        }
        if *crate::sync::lock(&self.basic)
            && let Some(Credential::Basic { username, password }) = credential
        {
            return Some(basic_header(username, password.expose()));
        }
        None
    }

    async fn authenticate(
        &self,
        challenge: &str,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<(), RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if !matches!(credential, Some(Credential::Basic { .. })) {
                    return Err(err(
                        "authenticate",
                        &self.registry,
                        "the registry wants a username and password and none was found in the Docker config",
                        false,
                    ));
                }
                *crate::sync::lock(&self.basic) = true;
                Ok(())
            }
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    err(
                        "authenticate",
                        &self.registry,
                        "bearer challenge without a realm",
                        false,
                    )
                })?;
                // Never credentials over plain HTTP to a host that is not loopback, whatever
                // --insecure says.
                let realm_host = realm
                    .split_once("://")
                    .map_or("", |(_, r)| r.split('/').next().unwrap_or(""));
                if super::tls::is_plain_http(realm)
                    && credential.is_some()
                    && !crate::reference::is_loopback_host(realm_host)
                {
                    return Err(err(
                        "authenticate",
                        realm,
                        "the token service is plain HTTP on a host that is not loopback; kiln sends credentials to it only over HTTPS",
                        false,
                    ));
                }
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = params.get("service") {
                    query.push(("service", s.clone()));
                }
                for s in scopes {
                    query.push(("scope", s.clone()));
                }
                let mut req = self.http.get(realm).query(&query);
                match credential {
                    Some(Credential::Basic { username, password }) => {
                        req = req.header(AUTHORIZATION, basic_header(username, password.expose()));
                    }
                    Some(Credential::IdentityToken(t)) => {
                        req = self.http.post(realm).form(&[
                            ("grant_type", "refresh_token"),
                            ("refresh_token", t.expose()),
                            (
                                "service",
                                params.get("service").map(String::as_str).unwrap_or(""),
                            ),
                            ("scope", &scopes.join(" ")),
                            ("client_id", "kiln"),
                        ]);
                    }
                    None => {}
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| err("get a token from", realm, reqwest_chain(e), true))?;
                if !resp.status().is_success() {
                    return Err(self.failure("get a token from", realm, resp).await);
                }
                let body = crate::body::read_capped(resp, 1 << 20)
                    .await
                    .map_err(|e| err("get a token from", realm, e, true))?;
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    err(
                        "get a token from",
                        realm,
                        format!("malformed token response: {e}"),
                        false,
                    )
                })?;
                let value = t.token.or(t.access_token).ok_or_else(|| {
                    err("get a token from", realm, "no token in the response", false)
                })?;
                // Refresh a little early so a token does not expire in flight.
                let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10));
                let expires = Instant::now() + life.mul_f64(0.9);
                crate::sync::lock(&self.tokens).insert(
                    scopes.join(" "),
                    Token {
                        value: Secret::new(value),
                        expires,
                    },
                );
                Ok(())
            }
            other => Err(err(
                "authenticate",
                &self.registry,
                format!("unsupported auth scheme {other:?}"),
                false,
            )),
        }
    }

    async fn failure(&self, op: &str, url: &str, resp: reqwest::Response) -> RegistryError {
        let status = resp.status();
        let body = crate::body::read_capped(resp, ERROR_BODY_CAP)
            .await
            .unwrap_or_default();
        let mut codes = Vec::new();
        let mut message = String::new();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(errors) = v.get("errors").and_then(|e| e.as_array())
        {
            for e in errors {
                if let Some(c) = e.get("code").and_then(|c| c.as_str()) {
                    codes.push(c.to_owned());
                }
                if let Some(m) = e.get("message").and_then(|m| m.as_str()) {
                    if !message.is_empty() {
                        message.push_str("; ");
                    }
                    message.push_str(m);
                }
            }
        }
        if message.is_empty() {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text.chars().take(300).collect()
            };
        }
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        RegistryError {
            op: op.to_owned(),
            url: url.to_owned(),
            status: Some(status.as_u16()),
            codes,
            message,
            retryable,
        }
    }
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v =
        HeaderValue::from_str(&format!("Basic {enc}")).expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

/// Whether `url` is on `base` (same scheme, host and port).
fn same_origin(url: &str, base: &str) -> bool {
    url == base || url.starts_with(&format!("{base}/")) || url.starts_with(&format!("{base}?"))
}

/// A reqwest error's message without its URL: upload and blob URLs can carry signed queries.
fn reqwest_chain(e: reqwest::Error) -> String {
    crate::errors::chain(&e.without_url())
}

/// `Retry-After`, capped at a minute: a registry does not get to park a push for longer.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    crate::retry::retry_after(h).map(|d| d.min(Duration::from_secs(60)))
}

/// Upload locations may carry state in their query; none of it is a credential we hold, but
/// keep logs short and free of it anyway.
fn strip_query_secrets(url: &str) -> String {
    let no_query = url.split('?').next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((auth, path)) => format!(
                "{scheme}://{}/{path}",
                auth.rsplit_once('@').map_or(auth, |(_, h)| h)
            ),
            None => format!(
                "{scheme}://{}",
                rest.rsplit_once('@').map_or(rest, |(_, h)| h)
            ),
        },
        None => no_query.to_owned(),
    }
}

/// `Bearer realm="...",service="...",scope="..."` into its scheme and parameters.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_owned(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = next.trim_start_matches(',').trim();
    }
    (scheme.to_owned(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["service"], "registry.example.com");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
    }

    #[test]
    fn credentials_do_not_print() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            strip_query_secrets("https://u:p@host:5000/v2/x/blobs/uploads/abc?_state=zzz&digest=1"),
            "https://host:5000/v2/x/blobs/uploads/abc"
        );
    }

    #[test]
    fn a_registry_waits_a_minute_at_most() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("3600"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
    }
}
