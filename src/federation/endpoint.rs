//! The bundle endpoint: `GET /` over HTTPS answers this trust domain's bundle in SPIFFE JSON
//! (every root, every tier's JWT key, `spiffe_sequence`, `spiffe_refresh_hint`); other methods
//! get 405 and other paths 404, as SPIRE's endpoint answers. The same server serves OIDC
//! discovery (`OidcResponder`) for JWT consumers.

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
    /// The trust domain's current bundle. A source hands out the same `Arc` until the bundle
    /// changes, which lets the responders serialize it once per change.
    async fn bundle(&self) -> Result<Arc<Bundle>, String>;
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

/// Answers one request (method and path; bodies are never read).
#[async_trait::async_trait]
pub trait Responder: Send + Sync + 'static {
    /// Status, content type and body.
    async fn respond(&self, method: &Method, path: &str) -> (StatusCode, &'static str, Bytes);
}

fn text(code: StatusCode, body: &'static str) -> (StatusCode, &'static str, Bytes) {
    (code, "text/plain; charset=utf-8", Bytes::from_static(body.as_bytes()))
}

/// The last bundle a responder serialized, and what it made of it.
type Serialized = RwLock<Option<(Arc<Bundle>, Bytes)>>;

/// `bytes` for `bundle`, made by `make` only when the bundle is not the one cached.
fn cached(cache: &Serialized, bundle: &Arc<Bundle>, make: impl FnOnce(&Bundle) -> Bytes) -> Bytes {
    if let Ok(c) = cache.read()
        && let Some((b, bytes)) = c.as_ref()
        && Arc::ptr_eq(b, bundle)
    {
        return bytes.clone();
    }
    let bytes = make(bundle);
    if let Ok(mut c) = cache.write() {
        *c = Some((Arc::clone(bundle), bytes.clone()));
    }
    bytes
}

/// The bundle endpoint's answers.
pub struct BundleResponder {
    source: Arc<dyn BundleSource>,
    refresh_hint: i64,
    cache: Serialized,
}

impl BundleResponder {
    /// Serves `source`'s bundle with `refresh_hint` (seconds).
    #[must_use]
    pub fn new(source: Arc<dyn BundleSource>, refresh_hint: i64) -> Self {
        Self { source, refresh_hint, cache: RwLock::new(None) }
    }
}

#[async_trait::async_trait]
impl Responder for BundleResponder {
    async fn respond(&self, method: &Method, path: &str) -> (StatusCode, &'static str, Bytes) {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        }
        if path != "/" {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        }
        match self.source.bundle().await {
            Ok(b) => {
                let hint = self.refresh_hint;
                let body = cached(&self.cache, &b, |b| {
                    let mut served = b.clone();
                    served.refresh_hint = Some(hint);
                    Bytes::from(served.to_spiffe_json())
                });
                (StatusCode::OK, "application/json", body)
            }
            Err(e) => {
                tracing::error!(error = %e, "Unable to retrieve local bundle");
                text(StatusCode::INTERNAL_SERVER_ERROR, "500 unable to retrieve local bundle\n")
            }
        }
    }
}

/// OIDC discovery for JWT consumers (Vault's JWT auth, cloud IAM federation): the discovery
/// document at `/.well-known/openid-configuration` and a JWKS of every tier's JWT keys at
/// `/keys` (`use` `sig` and `alg` on each key), the issuer being `jwt_issuer`'s.
pub struct OidcResponder {
    source: Arc<dyn BundleSource>,
    issuer: String,
    cache: Serialized,
}

impl OidcResponder {
    /// Serves discovery for `issuer` (compared by consumers byte for byte, so kept as given)
    /// and the JWT keys of `source`'s bundle.
    #[must_use]
    pub fn new(source: Arc<dyn BundleSource>, issuer: String) -> Self {
        Self { source, issuer, cache: RwLock::new(None) }
    }

    fn jwks(bundle: &Bundle) -> Bytes {
        let doc: serde_json::Value = serde_json::from_str(&bundle.jwt_jwks_json()).unwrap_or_default();
        let keys: Vec<serde_json::Value> = doc["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| {
                        let mut k = k.clone();
                        let alg = match (k["kty"].as_str(), k["crv"].as_str()) {
                            (Some("EC"), Some("P-256")) => Some("ES256"),
                            (Some("EC"), Some("P-384")) => Some("ES384"),
                            (Some("RSA"), _) => Some("RS256"),
                            _ => None,
                        };
                        if let (Some(obj), Some(alg)) = (k.as_object_mut(), alg) {
                            obj.insert("use".into(), "sig".into());
                            obj.insert("alg".into(), alg.into());
                        }
                        k
                    })
                    .collect()
            })
            .unwrap_or_default();
        Bytes::from(serde_json::json!({ "keys": keys }).to_string())
    }
}

#[async_trait::async_trait]
impl Responder for OidcResponder {
    async fn respond(&self, method: &Method, path: &str) -> (StatusCode, &'static str, Bytes) {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        }
        match path {
            "/.well-known/openid-configuration" => {
                let doc = serde_json::json!({
                    "issuer": self.issuer,
                    "jwks_uri": format!("{}/keys", self.issuer.trim_end_matches('/')),
                    "authorization_endpoint": "",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
                });
                (StatusCode::OK, "application/json", Bytes::from(doc.to_string()))
            }
            "/keys" => match self.source.bundle().await {
                Ok(b) => (StatusCode::OK, "application/json", cached(&self.cache, &b, Self::jwks)),
                Err(e) => {
                    tracing::error!(error = %e, "Unable to retrieve local bundle");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "500 document not available\n")
                }
            },
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}

/// Serves `responder` on `listener` until `shutdown` resolves: over TLS with `tls`, or plain
/// HTTP when `tls` is `None` (the caller allows that on loopback only).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    responder: Arc<dyn Responder>,
    name: &'static str,
    nofile: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut l = limits(nofile);
    l.name = name;
    let registry = crate::net::Registry::new(l);
    let log = crate::net::LogLimiter::new();
    loop {
        let (sock, remote) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = registry.admit(crate::net::PeerKey::Ip(remote.ip())) else { continue };
        let sock = crate::net::Tracked::new(sock, admission);
        let track = sock.track();
        let (acceptor, responder) = (acceptor.clone(), Arc::clone(&responder));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let responder = Arc::clone(&responder);
                let guard = track.begin();
                async move {
                    let (code, ctype, body) = responder.respond(req.method(), req.uri().path()).await;
                    drop(guard);
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = code;
                    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await else { return };
                    // An ACME server's tls-alpn-01 check ends with the handshake (RFC 8737 §3).
                    if tls.get_ref().1.alpn_protocol() == Some(super::acme::ACME_TLS_ALPN) {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                        return;
                    }
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                }
                None => {
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(sock), svc).await;
                }
            }
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
        async fn bundle(&self) -> Result<Arc<Bundle>, String> {
            self.0.clone().map(Arc::new).ok_or_else(|| "trust domain bundle not found".into())
        }
    }

    #[tokio::test]
    async fn get_root_only() {
        let td = crate::spiffe::TrustDomain::new("example.org").unwrap();
        let b = Bundle {
            trust_domain: td,
            x509_authorities: vec![],
            jwt_authorities: vec![],
            refresh_hint: None,
            sequence_number: 7,
            tainted_x509: vec![],
        };
        let src = BundleResponder::new(Arc::new(Fixed(Some(b))), 300);
        let (code, ctype, body) = src.respond(&Method::GET, "/").await;
        assert_eq!((code, ctype), (StatusCode::OK, "application/json"));
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        assert_eq!(doc["spiffe_sequence"], 7);
        assert!(doc["keys"].is_array());
        assert_eq!(src.respond(&Method::POST, "/").await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(src.respond(&Method::HEAD, "/").await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(src.respond(&Method::GET, "/bundle").await.0, StatusCode::NOT_FOUND);
        let none = BundleResponder::new(Arc::new(Fixed(None)), 300);
        assert_eq!(none.respond(&Method::GET, "/").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
