//! A registry client: TLS, authentication (see `auth.rs`), and retries with exponential
//! backoff and jitter, honouring `Retry-After`. Every request goes through [`RegistryClient::send`].
//!
//! Secrets never leave the client in a printable form: credentials and tokens are wrapped in
//! [`Secret`](crate::secret::Secret), and URLs in errors and logs carry no credentials.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::auth::{Auth, Credential, docker_credential};
use super::error::{RegistryError, err, failure};
use crate::errors::reqwest_chain;
use crate::reference::Reference;

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

/// One request: what it is for (for messages), where it goes, and what it needs.
pub struct Request<'a> {
    /// What kiln is doing, e.g. `HEAD blob`.
    pub op: &'a str,
    pub method: Method,
    /// A path under the registry's base, or an absolute URL (an upload location).
    pub url: &'a str,
    pub headers: HeaderMap,
    pub body: Body,
    /// The token scopes it needs (`repository:team/app:pull,push`).
    pub scopes: &'a [String],
    /// The statuses that are answers; any other is a failure.
    pub ok: &'a [StatusCode],
    /// Retry failures worth retrying; without, only an authentication challenge is answered
    /// (for requests whose retry needs more than repeating them).
    pub retry: bool,
}

impl<'a> Request<'a> {
    /// A request without headers or body, retried.
    pub fn new(
        op: &'a str,
        method: Method,
        url: &'a str,
        scopes: &'a [String],
        ok: &'a [StatusCode],
    ) -> Self {
        Request {
            op,
            method,
            url,
            headers: HeaderMap::new(),
            body: Body::Empty,
            scopes,
            ok,
            retry: true,
        }
    }

    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Not retried: a failure comes back as it is.
    pub fn once(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// A failed attempt worth another: how long to wait first, and whether the registry could not
/// be reached at all (which has its own, shorter, budget).
struct Retry {
    wait: Duration,
    error: RegistryError,
    unreachable: bool,
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
    auth: Auth,
    retry: RetryPolicy,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
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
            auth: Auth::new(http.clone(), registry),
            http,
            registry: registry.to_owned(),
            plain_allowed,
            base: tokio::sync::Mutex::new(None),
            credential,
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

    /// Send a request with authentication and, unless it says [`once`](Request::once),
    /// retries. Returns any response whose status is one of the request's `ok`.
    pub async fn send(&self, r: &Request<'_>) -> Result<reqwest::Response, RegistryError> {
        let url = self.absolute(r.url).await;
        let shown = strip_query_secrets(&url);
        let credential = self.credential().await;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let base = self.base().await;
            let outcome = self
                .attempt(r, (&url, &shown), &base, attempt, credential)
                .await?;
            let retry = match outcome {
                Ok(resp) if r.ok.contains(&resp.status()) => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !refreshed => {
                    refreshed = true;
                    self.challenged(r, &shown, &base, resp, credential).await?;
                    continue;
                }
                Ok(resp) => self.refused(r, &shown, attempt, resp).await?,
                Err(e) => self.unreached(r, &shown, attempt, e).await?,
            };
            // Keep trying for the whole budget: the last wait is cut short, not skipped.
            let budget = if retry.unreachable {
                self.retry.unreachable_budget
            } else {
                self.retry.budget
            };
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                let last = retry.error;
                return Err(RegistryError {
                    message: format!(
                        "{} (gave up after {attempt} attempts in {:.0?}{})",
                        last.message,
                        started.elapsed(),
                        if retry.unreachable {
                            "; --retry-for DURATION waits longer"
                        } else {
                            ""
                        }
                    ),
                    ..last
                });
            }
            tokio::time::sleep(retry.wait.min(left)).await;
        }
    }

    /// One attempt: the request built afresh (its body read again) and sent.
    async fn attempt(
        &self,
        r: &Request<'_>,
        (url, shown): (&str, &str),
        base: &str,
        attempt: u32,
        credential: Option<&Credential>,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, RegistryError> {
        let (req_body, len) = r
            .body
            .to_reqwest()
            .await
            .map_err(|e| err(r.op, shown, format!("reading the body: {e}"), false))?;
        let mut req = self
            .http
            .request(r.method.clone(), url)
            .headers(r.headers.clone());
        if !matches!(r.body, Body::Empty)
            || r.method == Method::PUT
            || r.method == Method::POST
            || r.method == Method::PATCH
        {
            req = req
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(req_body);
        }
        // Credentials go only to the registry itself: never to another host an upload
        // Location or redirect names (a CDN, a load balancer speaking plain HTTP), and
        // never over plain HTTP to a host that is not loopback.
        if same_origin(url, base)
            && self.credentials_allowed(base)
            && let Some(auth) = self.auth.authorization(r.scopes, credential)
        {
            req = req.header(AUTHORIZATION, auth);
        }
        tracing::debug!(op = r.op, url = %shown, attempt, "registry request");
        Ok(req.send().await)
    }

    /// A 401: answer its challenge (once), or say why not.
    async fn challenged(
        &self,
        r: &Request<'_>,
        shown: &str,
        base: &str,
        resp: reqwest::Response,
        credential: Option<&Credential>,
    ) -> Result<(), RegistryError> {
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !self.credentials_allowed(base) {
            return Err(err(
                r.op,
                shown,
                "the registry asks for credentials over plain HTTP; kiln sends them only over HTTPS (or to a loopback registry)",
                false,
            ));
        }
        match challenge {
            Some(c) => self.auth.authenticate(&c, r.scopes, credential).await,
            None => Err(failure(r.op, shown, resp).await),
        }
    }

    /// An answer that is not one of the request's `ok`: the error, or a retry after the
    /// registry's `Retry-After` or a backoff.
    async fn refused(
        &self,
        r: &Request<'_>,
        shown: &str,
        attempt: u32,
        resp: reqwest::Response,
    ) -> Result<Retry, RegistryError> {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let e = failure(r.op, shown, resp).await;
        if !r.retry {
            return Err(e);
        }
        if status == StatusCode::UNAUTHORIZED {
            // Rejected even after a fresh challenge: drop cached tokens so a later request
            // authenticates afresh; this one fails below (401 is not retryable).
            self.auth.clear();
        }
        if !e.retryable {
            return Err(e);
        }
        let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
        tracing::warn!(
            "{} {shown}: HTTP {}; retrying in {:.1}s (attempt {attempt})",
            r.op,
            status.as_u16(),
            wait.as_secs_f64()
        );
        Ok(Retry {
            wait,
            error: e,
            unreachable: false,
        })
    }

    /// No answer at all: the error, or a retry after a backoff. A certificate the registry
    /// presents will not change on a retry.
    async fn unreached(
        &self,
        r: &Request<'_>,
        shown: &str,
        attempt: u32,
        e: reqwest::Error,
    ) -> Result<Retry, RegistryError> {
        if e.is_connect() || e.is_timeout() {
            self.forget_base().await;
        }
        let tls_refused = super::tls::rustls_error(&e)
            .is_some_and(|r| !matches!(r, rustls::Error::InvalidMessage(_)));
        let unreachable = e.is_connect() && !tls_refused;
        let retryable = !tls_refused
            && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode());
        let e = err(r.op, shown, reqwest_chain(e), retryable);
        if !retryable || !r.retry {
            return Err(e);
        }
        let wait = self.backoff(attempt);
        tracing::warn!(
            "{} {shown}: {}; retrying in {:.1}s (attempt {attempt})",
            r.op,
            e.message,
            wait.as_secs_f64()
        );
        Ok(Retry {
            wait,
            error: e,
            unreachable,
        })
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
}

/// Whether `url` is on `base` (same scheme, host and port).
fn same_origin(url: &str, base: &str) -> bool {
    url == base || url.starts_with(&format!("{base}/")) || url.starts_with(&format!("{base}?"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn urls_in_messages_carry_no_credentials_or_state() {
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
