//! TLS for registries: the system's roots, plus the certificates given with `--registry-ca`.
//!
//! A certificate given with `--registry-ca` is trusted two ways: as a root (a real CA that
//! signed the registry's certificate), and pinned: when the registry presents exactly that
//! certificate, it is accepted even if it would not validate as a chain. That is the setup the
//! Docker registry documentation shows (`openssl req -x509 ...`, a self-signed certificate
//! whose basic constraints say CA:TRUE), which docker, skopeo and curl accept and webpki
//! rejects as `CaUsedAsEndEntity`. Pinning is narrow: only the exact bytes the user handed
//! over, so nothing else is loosened. The handshake signature is still checked.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                tracing::debug!(error = %e, "the registry's certificate is the one given with --registry-ca: trusted as pinned");
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS configuration for registry clients: system roots, and `ca_file`'s certificates as
/// roots and pins.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    let mut pinned = Vec::new();
    if let Some(f) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(f)
            .map_err(|e| format!("reading {}: {e}", f.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("reading {}: {e}", f.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", f.display()));
        }
        for c in certs {
            // A self-signed leaf cannot be a root for webpki; it is still pinned.
            let _ = roots.add(c.clone());
            pinned.push(c);
        }
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("no usable root certificates: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinningVerifier { inner, pinned }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What a failed HTTPS attempt says about the server: it answered in plain HTTP (its reply
/// was not TLS), or something else went wrong (a certificate, a refusal, a timeout), which
/// must be reported as itself and never lead to plain HTTP.
pub fn speaks_plain_http(e: &(dyn std::error::Error + 'static)) -> bool {
    rustls_error(e).is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)))
}

/// The rustls error behind an error, looking through `source()` and through the io::Errors
/// that wrap one another (whose `source()` skips the wrapped error itself).
pub(crate) fn rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(r) = rustls_error(inner) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

/// Whether a URL's scheme is `http` (in any case).
pub fn is_plain_http(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("http"))
}

/// Whether a URL is absolute (`http://` or `https://`, in any case).
pub fn is_absolute(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_case_insensitive() {
        assert!(is_plain_http("HTTP://host/x") && is_plain_http("http://h"));
        assert!(!is_plain_http("https://h") && !is_plain_http("/v2/x"));
        assert!(is_absolute("HTTPS://h/x") && is_absolute("Http://h") && !is_absolute("/v2/"));
    }
}

#[cfg(test)]
mod probe_tests {
    #[tokio::test]
    async fn a_plain_http_server_is_recognized() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let mut b = [0u8; 4096];
                let _ = c.read(&mut b);
                let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(super::client_config(None).unwrap())
            .build()
            .unwrap();
        let e = http
            .get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap_err();
        assert!(super::speaks_plain_http(&e));
    }
}
