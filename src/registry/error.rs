//! What a failed registry request says: the operation, the URL (without credentials), the
//! status, the distribution spec's error codes, and whether trying again could help.

use std::fmt;

use reqwest::StatusCode;

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

/// An error without a status (the request did not get an answer).
pub fn err(op: &str, url: &str, message: impl Into<String>, retryable: bool) -> RegistryError {
    RegistryError {
        op: op.to_owned(),
        url: url.to_owned(),
        status: None,
        codes: Vec::new(),
        message: message.into(),
        retryable,
    }
}

/// The error for an answer that is not one of the request's `ok`: its status and the
/// distribution spec's error codes and messages, read with a cap.
pub async fn failure(op: &str, url: &str, resp: reqwest::Response) -> RegistryError {
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
