//! `trust_bundle_url`: the agent's first trust bundle fetched over HTTPS (`https_web`-style:
//! the server certificate is checked against the system roots and the URL's host name, which
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` can point elsewhere). The body is PEM or a SPIFFE bundle.

use crate::spiffe::{Bundle, TrustDomain};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use std::sync::Arc;

/// Largest bundle document accepted.
const MAX_BODY: usize = 1024 * 1024;

/// Fetches the bundle at `url` and returns its X.509 roots.
///
/// # Errors
/// A message naming what failed (URL, TLS, HTTP status, body).
pub async fn fetch_roots(url: &str, spiffe_format: bool, td: &TrustDomain) -> Result<Vec<Vec<u8>>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("agent.trust_bundle_url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("agent.trust_bundle_url {url:?}: must be https"));
    }
    let host = uri.host().ok_or_else(|| format!("agent.trust_bundle_url {url:?}: no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err("agent.trust_bundle_url: no system CA certificates found (set SSL_CERT_FILE)".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("agent.trust_bundle_url host {host:?}: {e}"))?;
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("agent.trust_bundle_url {url}: connection timed out"))?
        .map_err(|e| format!("agent.trust_bundle_url {url}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("agent.trust_bundle_url {url}: TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("agent.trust_bundle_url {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req =
        hyper::Request::get(path).header(hyper::header::HOST, host.as_str()).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| format!("agent.trust_bundle_url {url}: timed out"))?
        .map_err(|e| format!("agent.trust_bundle_url {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("agent.trust_bundle_url {url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("agent.trust_bundle_url {url}: body: {e}"))?
        .to_bytes();
    let roots = if spiffe_format {
        Bundle::from_spiffe_json(td.clone(), &body).map_err(|e| format!("agent.trust_bundle_url {url}: {e}"))?.x509_authorities
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| format!("agent.trust_bundle_url {url}: not a PEM document"))?;
        crate::spiffe::parse_pem_certs(text).map_err(|e| format!("agent.trust_bundle_url {url}: {e}"))?
    };
    if roots.is_empty() {
        return Err(format!("agent.trust_bundle_url {url}: no certificates"));
    }
    Ok(roots)
}
