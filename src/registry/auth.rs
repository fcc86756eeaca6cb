//! Registry authentication: credentials from the Docker config, Basic, and bearer tokens
//! fetched from the registry's token service and cached per scope.
//!
//! Credentials and tokens are [`Secret`]s; none goes over plain HTTP to a host that is not
//! loopback, whatever `--insecure` says.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::error::{RegistryError, err, failure};
use crate::errors::reqwest_chain;
use crate::secret::Secret;
use crate::sync::lock;

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

/// A bearer token and when to stop using it.
pub(super) struct Token {
    value: Secret,
    expires: Instant,
}

/// A client's authentication with one registry: what it learned (tokens per scope set, and
/// whether the registry asked for Basic, then credentials go up front), and how to get a
/// token from the registry's token service.
pub(super) struct Auth {
    http: reqwest::Client,
    /// `host[:port]`, for messages.
    registry: String,
    by_scope: std::sync::Mutex<HashMap<String, Token>>,
    basic: std::sync::Mutex<bool>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub(super) fn new(http: reqwest::Client, registry: &str) -> Auth {
        Auth {
            http,
            registry: registry.to_owned(),
            by_scope: Default::default(),
            basic: Default::default(),
        }
    }

    /// Forget every token (a request was refused even after a fresh challenge).
    pub(super) fn clear(&self) {
        lock(&self.by_scope).clear();
    }

    /// The `Authorization` header for a request needing `scopes`, if kiln has one: a cached
    /// token, or Basic credentials for a registry that asked for them.
    pub(super) fn authorization(
        &self,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Option<HeaderValue> {
        let key = scopes.join(" ");
        if let Some(t) = lock(&self.by_scope).get(&key)
            && t.expires > Instant::now()
        {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value.expose())).ok()?;
            v.set_sensitive(true);
            return Some(v);
        }
        if *lock(&self.basic)
            && let Some(Credential::Basic { username, password }) = credential
        {
            return Some(basic_header(username, password.expose()));
        }
        None
    }

    /// Answer a challenge (`WWW-Authenticate`): note that the registry wants Basic, or get a
    /// token for `scopes` from its token service.
    pub(super) async fn authenticate(
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
                *lock(&self.basic) = true;
                Ok(())
            }
            "bearer" => self.bearer(&params, scopes, credential).await,
            other => Err(err(
                "authenticate",
                &self.registry,
                format!("unsupported auth scheme {other:?}"),
                false,
            )),
        }
    }

    /// The bearer flow: a token for `scopes` from the challenge's realm, cached until shortly
    /// before it expires.
    async fn bearer(
        &self,
        params: &HashMap<String, String>,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<(), RegistryError> {
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
        let t = self
            .token_request(realm, params, scopes, credential)
            .await?;
        let value = t
            .token
            .or(t.access_token)
            .ok_or_else(|| err("get a token from", realm, "no token in the response", false))?;
        // Refresh a little early so a token does not expire in flight.
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10));
        let expires = Instant::now() + life.mul_f64(0.9);
        lock(&self.by_scope).insert(
            scopes.join(" "),
            Token {
                value: Secret::new(value),
                expires,
            },
        );
        Ok(())
    }

    /// Ask the token service at `realm`: anonymously, with Basic credentials, or by
    /// exchanging an identity token (the OAuth2 refresh-token grant).
    async fn token_request(
        &self,
        realm: &str,
        params: &HashMap<String, String>,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<TokenResponse, RegistryError> {
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
            return Err(failure("get a token from", realm, resp).await);
        }
        let body = crate::body::read_capped(resp, 1 << 20)
            .await
            .map_err(|e| err("get a token from", realm, e, true))?;
        serde_json::from_slice(&body).map_err(|e| {
            err(
                "get a token from",
                realm,
                format!("malformed token response: {e}"),
                false,
            )
        })
    }
}

pub(super) fn basic_header(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v =
        HeaderValue::from_str(&format!("Basic {enc}")).expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
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
    }
}
