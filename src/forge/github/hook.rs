//! GitHub webhook deliveries: `X-Hub-Signature-256` checked in constant time, then the event
//! (`X-GitHub-Event`) and the repository read from the JSON body.

use reqwest::header::HeaderMap;

use crate::forge::{Delivery, HookEvent, WebhookError};
use crate::secret::Secret;

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], signature: &str) -> bool {
    use hmac::Mac;
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Check and read a delivery (webhooks are off without a secret).
pub fn read(
    secret: Option<&Secret>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery, WebhookError> {
    let Some(secret) = secret else {
        return Err(WebhookError::Off(
            "webhooks are off: set github.webhook_secret_file".into(),
        ));
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !signature_ok(secret.expose().as_bytes(), body, h("x-hub-signature-256")) {
        return Err(WebhookError::Rejected(
            "bad or missing X-Hub-Signature-256".into(),
        ));
    }
    let event = h("x-github-event").to_owned();
    let delivery = h("x-github-delivery");
    Ok(Delivery {
        id: (!delivery.is_empty()).then(|| delivery.to_owned()),
        event: classify(event, body),
    })
}

/// What a delivery of `event` says: a ping needs no body; a push or a new ref is a push.
fn classify(event: String, body: &[u8]) -> HookEvent {
    if event == "ping" {
        return HookEvent::Ping;
    }
    let payload: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return HookEvent::Malformed(format!("payload is not JSON: {e}")),
    };
    let repo = payload["repository"]["full_name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    match event.as_str() {
        "push" | "create" => HookEvent::Push { repo, event },
        _ => HookEvent::Other { repo, event },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        // From GitHub's documentation on validating webhook deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok(secret, body, good));
        assert!(!signature_ok(secret, b"Hello, World?", good));
        assert!(!signature_ok(b"other", body, good));
        assert!(!signature_ok(secret, body, "sha1=abc"));
        assert!(!signature_ok(secret, body, "sha256=zz"));
        assert!(!signature_ok(secret, body, ""));
    }

    #[test]
    fn deliveries_are_read_after_their_signature() {
        let secret = Secret::new("s");
        let body = br#"{"repository":{"full_name":"acme/widget"}}"#;
        let mut h = HeaderMap::new();
        assert!(matches!(read(None, &h, body), Err(WebhookError::Off(_))));
        assert!(matches!(
            read(Some(&secret), &h, body),
            Err(WebhookError::Rejected(_))
        ));
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s").unwrap();
        mac.update(body);
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        h.insert("x-hub-signature-256", sig.parse().unwrap());
        h.insert("x-github-event", "push".parse().unwrap());
        h.insert("x-github-delivery", "d1".parse().unwrap());
        let d = read(Some(&secret), &h, body).unwrap();
        assert_eq!(d.id.as_deref(), Some("d1"));
        assert_eq!(
            d.event,
            HookEvent::Push {
                repo: "acme/widget".into(),
                event: "push".into()
            }
        );
    }
}
