//! `https_web` with `acme`: the bundle endpoint's Web PKI certificate from an ACME server
//! (RFC 8555), as SPIRE's `profile "https_web" { acme { ... } }` does with Go's autocert.
//!
//! The endpoint answers the `tls-alpn-01` challenge (RFC 8737) on its own listener: a
//! ClientHello offering `acme-tls/1` for the configured name gets the challenge certificate,
//! and the connection is closed after the handshake. Everything else gets the issued
//! certificate, or no certificate (a failed handshake) until the first one is issued.
//!
//! The account key and the issued certificate with its key are kept in
//! `<data_dir>/bundle-acme/` (owner-only files), so a restart serves the same certificate
//! without a new order; a certificate is renewed when a third of its life, at most 30 days,
//! is left. A failed order is retried after a minute, then twice as long each time up to an
//! hour; the endpoint keeps serving the certificate it has meanwhile.

use super::AcmeConfig;
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The ALPN protocol of the `tls-alpn-01` challenge.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
const RETRY_FIRST: u64 = 60;
const RETRY_MAX: u64 = 3600;
const RENEW_AT_MOST_BEFORE: i64 = 30 * 24 * 3600;

/// Why no certificate could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// `tos_accepted` is false.
    #[error("ACME Terms of Service have not been accepted (set tos_accepted = true)")]
    TosNotAccepted,
    /// The ACME server refused or failed a step.
    #[error("ACME {step}: {cause}")]
    Protocol {
        /// Which step.
        step: &'static str,
        /// Why.
        cause: String,
    },
    /// Reading or writing the cache directory.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        cause: String,
    },
}

fn protocol(step: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Protocol { step, cause: crate::text::error_chain(&e) }
}

/// The bundle endpoint's ACME-managed certificate.
#[derive(Debug)]
pub struct AcmeCert {
    config: AcmeConfig,
    dir: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Option<(Arc<CertifiedKey>, i64, i64)>>,
    /// Challenge certificates by the SNI the ACME server will send.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// A chain's (notBefore, notAfter) from its leaf.
fn validity(chain: &[CertificateDer<'_>]) -> Option<(i64, i64)> {
    let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    Some((leaf.validity().not_before.timestamp(), leaf.validity().not_after.timestamp()))
}

/// Whether the leaf of `chain` names `domain` in its DNS SANs.
fn names(chain: &[CertificateDer<'_>], domain: &str) -> bool {
    let Some(der) = chain.first() else { return false };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(der) else { return false };
    let Ok(Some(san)) = leaf.subject_alternative_name() else { return false };
    san.value.general_names.iter().any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(domain)))
}

impl AcmeCert {
    /// The manager for `config`, caching in `<data_dir>/bundle-acme`; loads a cached
    /// certificate for the domain if one is there.
    ///
    /// # Errors
    /// The cache directory cannot be created.
    pub fn open(config: AcmeConfig, data_dir: &Path) -> Result<Arc<Self>, AcmeError> {
        let dir = data_dir.join("bundle-acme");
        crate::fsutil::create_dir_all_mode(&dir, 0o700)
            .map_err(|e| AcmeError::Io { path: dir.display().to_string(), cause: e.to_string() })?;
        let me = Arc::new(Self {
            config,
            dir,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            current: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
        });
        match me.load_cached() {
            Ok(Some(not_after)) => tracing::info!(domain = %me.config.domain_name, not_after, "Loaded the cached ACME certificate"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "The cached ACME certificate is not usable; a new one will be ordered"),
        }
        Ok(me)
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    fn load_cached(&self) -> Result<Option<i64>, String> {
        let (cert, key) = (self.cert_path(), self.key_path());
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert).and_then(Iterator::collect).map_err(|e| format!("{}: {e}", cert.display()))?;
        if !names(&chain, &self.config.domain_name) {
            return Err(format!("{} is not for {}", cert.display(), self.config.domain_name));
        }
        let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        self.install(chain, key_der).map(Some)
    }

    /// Serves `chain` with `key` from now on; answers its notAfter.
    fn install(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<i64, String> {
        let (not_before, not_after) = validity(&chain).ok_or("the certificate does not parse")?;
        let signer = self.provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
        let ck = CertifiedKey::new(chain, signer);
        ck.keys_match().map_err(|e| format!("the key does not match the certificate: {e}"))?;
        if let Ok(mut c) = self.current.write() {
            *c = Some((Arc::new(ck), not_before, not_after));
        }
        Ok(not_after)
    }

    /// Unix seconds at which the current certificate should be replaced (now when there is
    /// none).
    #[must_use]
    pub fn renew_at(&self) -> i64 {
        match self.current.read().ok().and_then(|c| c.as_ref().map(|(_, nb, na)| (*nb, *na))) {
            Some((nb, na)) => na - ((na - nb) / 3).min(RENEW_AT_MOST_BEFORE),
            None => 0,
        }
    }

    /// A TLS configuration presenting the ACME certificate and answering `tls-alpn-01`.
    ///
    /// # Errors
    /// When the provider cannot set up the protocol versions.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(AcmeResolver(Arc::clone(self))));
        // The server picks in its own order, so ordinary clients get http/1.1.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(cfg)
    }

    /// Orders (and renews) the certificate until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut retry = RETRY_FIRST;
        loop {
            let now = crate::now_unix();
            let wait = if self.renew_at() <= now {
                match self.obtain().await {
                    Ok(not_after) => {
                        tracing::info!(domain = %self.config.domain_name, not_after, "Obtained a bundle endpoint certificate from the ACME server");
                        retry = RETRY_FIRST;
                        u64::try_from(self.renew_at() - crate::now_unix()).unwrap_or(0).clamp(60, RETRY_MAX)
                    }
                    Err(e) => {
                        tracing::error!(domain = %self.config.domain_name, directory_url = %self.config.directory_url, error = %e, retry_secs = retry, "Could not obtain a bundle endpoint certificate from the ACME server");
                        let w = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        w
                    }
                }
            } else {
                u64::try_from(self.renew_at() - now).unwrap_or(0).clamp(60, RETRY_MAX)
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
        }
    }

    fn http(&self) -> Result<reqwest::Client, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        // The system's roots, or SSL_CERT_FILE / SSL_CERT_DIR (as for https_web federation).
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Protocol { step: "client setup", cause: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AcmeError::Protocol { step: "client setup", cause: e.to_string() })
    }

    /// The ACME account: the stored one, or a new one (stored).
    async fn account(&self, http: reqwest::Client) -> Result<instant_acme::Account, AcmeError> {
        let builder = instant_acme::Account::builder_with_http(Box::new(ReqwestHttp(http)));
        let path = self.account_path();
        if let Ok(text) = std::fs::read(&path)
            && let Ok(creds) = serde_json::from_slice::<instant_acme::AccountCredentials>(&text)
        {
            return builder.from_credentials(creds).await.map_err(protocol("account"));
        }
        let contact = format!("mailto:{}", self.config.email);
        let contacts: Vec<&str> = if self.config.email.is_empty() { vec![] } else { vec![contact.as_str()] };
        let (account, creds) = builder
            .create(
                &instant_acme::NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false },
                self.config.directory_url.clone(),
                None,
            )
            .await
            .map_err(protocol("new account"))?;
        let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Io { path: path.display().to_string(), cause: e.to_string() })?;
        crate::fsutil::write_private_atomic(&path, &json)
            .map_err(|e| AcmeError::Io { path: path.display().to_string(), cause: e.to_string() })?;
        tracing::info!(account = account.id(), "Created an ACME account");
        Ok(account)
    }

    /// One order: account, challenge, finalize with a fresh key, store, serve. Answers the
    /// new certificate's notAfter.
    async fn obtain(&self) -> Result<i64, AcmeError> {
        if !self.config.tos_accepted {
            return Err(AcmeError::TosNotAccepted);
        }
        let domain = self.config.domain_name.clone();
        let account = self.account(self.http()?).await?;
        let mut order = account
            .new_order(&instant_acme::NewOrder::new(&[instant_acme::Identifier::Dns(domain.clone())]))
            .await
            .map_err(protocol("new order"))?;
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(protocol("authorization"))?;
                match authz.status {
                    instant_acme::AuthorizationStatus::Pending => {}
                    instant_acme::AuthorizationStatus::Valid => continue,
                    other => return Err(AcmeError::Protocol { step: "authorization", cause: format!("status {other:?}") }),
                }
                let mut challenge = authz.challenge(instant_acme::ChallengeType::TlsAlpn01).ok_or(AcmeError::Protocol {
                    step: "authorization",
                    cause: "the ACME server offers no tls-alpn-01 challenge".into(),
                })?;
                let cert = self.challenge_cert(&domain, challenge.key_authorization().digest().as_ref())?;
                if let Ok(mut c) = self.challenges.write() {
                    c.insert(domain.to_ascii_lowercase(), cert);
                }
                challenge.set_ready().await.map_err(protocol("challenge"))?;
            }
        }
        let retries = instant_acme::RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await;
        if let Ok(mut c) = self.challenges.write() {
            c.clear();
        }
        let status = status.map_err(protocol("validation"))?;
        if status != instant_acme::OrderStatus::Ready {
            return Err(AcmeError::Protocol { step: "validation", cause: format!("order status {status:?}") });
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AcmeError::Protocol { step: "key", cause: e.to_string() })?;
        let mut params =
            rcgen::CertificateParams::new(vec![domain.clone()]).map_err(|e| AcmeError::Protocol { step: "CSR", cause: e.to_string() })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| AcmeError::Protocol { step: "CSR", cause: e.to_string() })?;
        order.finalize_csr(csr.der()).await.map_err(protocol("finalize"))?;
        let chain_pem = order.poll_certificate(&retries).await.map_err(protocol("certificate"))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| AcmeError::Protocol { step: "certificate", cause: format!("the chain does not parse: {e}") })?;
        if !names(&chain, &domain) {
            return Err(AcmeError::Protocol { step: "certificate", cause: format!("the issued certificate is not for {domain}") });
        }
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        let io = |p: PathBuf| move |e: std::io::Error| AcmeError::Io { path: p.display().to_string(), cause: e.to_string() };
        // Key first: a crash between the writes leaves a key without its certificate, which
        // the next start ignores, never a certificate with the wrong key.
        crate::fsutil::write_private_atomic(&self.key_path(), key_pem.as_bytes()).map_err(io(self.key_path()))?;
        crate::fsutil::write_private_atomic(&self.cert_path(), chain_pem.as_bytes()).map_err(io(self.cert_path()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.install(chain, der).map_err(|e| AcmeError::Protocol { step: "certificate", cause: e })
    }

    /// The self-signed `tls-alpn-01` certificate: only `domain`, and the critical
    /// acmeIdentifier extension carrying the key authorization's SHA-256.
    fn challenge_cert(&self, domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
        let fail = |e: String| AcmeError::Protocol { step: "challenge", cause: e };
        if digest.len() != 32 {
            return Err(fail(format!("key authorization digest of {} bytes", digest.len())));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| fail(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki,
        // which refuses the unknown critical extension.
        let signer = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
    }
}

#[derive(Debug)]
struct AcmeResolver(Arc<AcmeCert>);

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            let sni = hello.server_name()?.to_ascii_lowercase();
            return self.0.challenges.read().ok()?.get(&sni).cloned();
        }
        self.0.current.read().ok()?.as_ref().map(|(ck, _, _)| Arc::clone(ck))
    }
}

/// instant-acme's requests through cairn's reqwest client.
struct ReqwestHttp(reqwest::Client);

impl instant_acme::HttpClient for ReqwestHttp {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<instant_acme::BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let other = |e: reqwest::Error| instant_acme::Error::Other(Box::new(e));
            let req = reqwest::Request::try_from(http::Request::from_parts(parts, body)).map_err(other)?;
            let resp: http::Response<reqwest::Body> = client.execute(req).await.map_err(other)?.into();
            Ok(instant_acme::BytesResponse::from(resp))
        })
    }
}
