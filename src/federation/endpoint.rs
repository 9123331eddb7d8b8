//! The bundle endpoint: `GET /` over HTTPS answers this trust domain's bundle in SPIFFE JSON
//! (every root, every tier's JWT key, `spiffe_sequence`, `spiffe_refresh_hint`); other methods
//! get 405 and other paths 404, as SPIRE's endpoint answers.

use crate::spiffe::Bundle;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Where the endpoint gets the bundle it serves.
#[async_trait::async_trait]
pub trait BundleSource: Send + Sync + 'static {
    /// The trust domain's current bundle.
    async fn bundle(&self) -> Result<Bundle, String>;
}

/// Connection limits: bundle consumers poll with one short request per connection.
fn limits(nofile: u64) -> crate::net::ConnLimits {
    let max = crate::net::fd_budget(nofile, 10, 1024);
    crate::net::ConnLimits {
        name: "bundle endpoint",
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: max,
        max_per_peer: (max / 4).max(8),
    }
}

/// The answer to one request.
async fn answer(method: &Method, path: &str, source: &dyn BundleSource, refresh_hint: i64) -> (StatusCode, &'static str, Bytes) {
    let text = |code: StatusCode, body: &'static str| (code, "text/plain; charset=utf-8", Bytes::from_static(body.as_bytes()));
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    }
    if path != "/" {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    match source.bundle().await {
        Ok(mut b) => {
            b.refresh_hint = Some(refresh_hint);
            (StatusCode::OK, "application/json", Bytes::from(b.to_spiffe_json()))
        }
        Err(e) => {
            tracing::error!(error = %e, "Unable to retrieve local bundle");
            text(StatusCode::INTERNAL_SERVER_ERROR, "500 unable to retrieve local bundle\n")
        }
    }
}

/// Serves the bundle endpoint on `listener` with `tls` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    source: Arc<dyn BundleSource>,
    refresh_hint: i64,
    nofile: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let registry = crate::net::Registry::new(limits(nofile));
    let log = crate::net::LogLimiter::new();
    loop {
        let (sock, remote) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(listener = "bundle endpoint", error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = registry.admit(crate::net::PeerKey::Ip(remote.ip())) else { continue };
        let sock = crate::net::Tracked::new(sock, admission);
        let track = sock.track();
        let (acceptor, source) = (acceptor.clone(), Arc::clone(&source));
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await else { return };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let source = Arc::clone(&source);
                let guard = track.begin();
                async move {
                    let (code, ctype, body) = answer(req.method(), req.uri().path(), source.as_ref(), refresh_hint).await;
                    drop(guard);
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = code;
                    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

/// `https_web` with `serving_cert_file`: the certificate and key from files, re-read when
/// either file changes (checked every `file_sync_interval`), keeping the last good pair when a
/// new one does not load.
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Option<(std::time::SystemTime, std::time::SystemTime)>>,
}

fn load(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(Iterator::collect).map_err(|e| format!("cert_file_path {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("cert_file_path {}: no PEM certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key_file_path {}: {e}", key.display()))?;
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| format!("key_file_path {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| format!("key_file_path {}: does not match cert_file_path: {e}", key.display()))?;
    Ok(ck)
}

fn stamps(cert: &Path, key: &Path) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    Some((std::fs::metadata(cert).ok()?.modified().ok()?, std::fs::metadata(key).ok()?.modified().ok()?))
}

impl FileCert {
    /// Loads the pair.
    ///
    /// # Errors
    /// Unreadable or mismatched files, named by their config keys.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let loaded = load(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(loaded)),
            stamp: RwLock::new(stamps(cert, key)),
        }))
    }

    /// Re-reads the files if they changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.cert, &self.key);
        if now.is_none() || self.stamp.read().is_ok_and(|s| *s == now) {
            return;
        }
        tracing::info!(cert = %self.cert.display(), "File change detected, reloading certificate and key...");
        match load(&self.cert, &self.key, &self.provider) {
            Ok(ck) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(ck);
                }
                tracing::info!("Loaded provided certificate with success");
            }
            Err(e) => tracing::error!(error = %e, "Failed to load certificate; keeping the previous one"),
        }
        if let Ok(mut s) = self.stamp.write() {
            *s = now;
        }
    }

    /// Checks the files every `interval` until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(interval_secs = interval.as_secs(), "Started watching certificate files");
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => self.reload_if_changed(),
            }
        }
    }

    /// A TLS server configuration presenting the current pair.
    ///
    /// # Errors
    /// When the provider cannot set up the protocol versions.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FileResolver(Arc::clone(self))));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[derive(Debug)]
struct FileResolver(Arc<FileCert>);

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.read().ok().map(|c| Arc::clone(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<Bundle>);

    #[async_trait::async_trait]
    impl BundleSource for Fixed {
        async fn bundle(&self) -> Result<Bundle, String> {
            self.0.clone().ok_or_else(|| "trust domain bundle not found".into())
        }
    }

    #[tokio::test]
    async fn get_root_only() {
        let td = crate::spiffe::TrustDomain::new("example.org").unwrap();
        let b = Bundle { trust_domain: td, x509_authorities: vec![], jwt_authorities: vec![], refresh_hint: None, sequence_number: 7 };
        let src = Fixed(Some(b));
        let (code, ctype, body) = answer(&Method::GET, "/", &src, 300).await;
        assert_eq!((code, ctype), (StatusCode::OK, "application/json"));
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        assert_eq!(doc["spiffe_sequence"], 7);
        assert!(doc["keys"].is_array());
        assert_eq!(answer(&Method::POST, "/", &src, 300).await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer(&Method::HEAD, "/", &src, 300).await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer(&Method::GET, "/bundle", &src, 300).await.0, StatusCode::NOT_FOUND);
        assert_eq!(answer(&Method::GET, "/", &Fixed(None), 300).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
