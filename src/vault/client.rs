//! The HTTP side: TLS to Vault, one request at a time with the current token, logins and
//! token renewal.

use super::{ResolvedAuth, ResolvedSettings, Secret, VaultError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer read from Vault (a PKI answer is a few KB; a misdirected address could
/// stream anything).
const MAX_BODY: usize = 1 << 20;
/// Time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A token this close to its expiry is treated as expired (clock skew, request time).
const EXPIRY_MARGIN: i64 = 5;
/// Pause before the renewer tries again after a failure.
const RENEW_RETRY: i64 = 10;

/// HTTP methods cairn uses on Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Delete => "DELETE",
        }
    }
}

/// The token in use and what Vault said of it.
#[derive(Debug, Clone)]
struct TokenState {
    token: Secret,
    renewable: bool,
    /// Seconds of life when obtained or last renewed; 0 means it never expires.
    ttl: i64,
    obtained_at: i64,
}

impl TokenState {
    fn expired(&self, now: i64) -> bool {
        self.ttl > 0 && now >= self.obtained_at + self.ttl - EXPIRY_MARGIN
    }

    /// When to renew: two thirds into its life (Vault's own lifetime watcher renews then too).
    fn renew_at(&self) -> Option<i64> {
        (self.renewable && self.ttl > 0).then(|| self.obtained_at + self.ttl * 2 / 3)
    }
}

/// A connection to one Vault, authenticated on first use.
pub struct VaultClient {
    settings: ResolvedSettings,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<TokenState>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient").field("addr", &self.settings.addr).field("auth", &self.settings.auth.name()).finish_non_exhaustive()
    }
}

/// `insecure_skip_verify`: any certificate is accepted (handshake signatures still checked, so
/// the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(s: &ResolvedSettings) -> Result<rustls::ClientConfig, VaultError> {
    let p = &s.config_path;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(format!("{p}: TLS: {e}")))?;
    let builder = if s.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &s.ca_cert_path {
            Some(path) => {
                let bad = |why: String| VaultError::Config(format!("{p}.ca_cert_path {}: {why}", path.display()));
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("not PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate in it".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| bad(format!("unusable certificate: {e}")))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match &s.auth {
        ResolvedAuth::Cert { cert, key, .. } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect)
                .map_err(|e| VaultError::Config(format!("{p}.cert_auth.client_cert_path {}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(VaultError::Config(format!("{p}.cert_auth.client_cert_path {}: no PEM certificate in it", cert.display())));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| VaultError::Config(format!("{p}.cert_auth.client_key_path {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| VaultError::Config(format!("{p}.cert_auth: the client key does not fit the certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn field<'a>(v: &'a Value, ptr: &str) -> Option<&'a Value> {
    v.pointer(ptr)
}

impl VaultClient {
    /// Prepares the connection (TLS roots, client certificate); contacts nobody yet.
    ///
    /// # Errors
    /// Unreadable `ca_cert_path` or client certificate files.
    pub fn new(settings: ResolvedSettings) -> Result<Arc<Self>, VaultError> {
        let tls = tls_config(&settings)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VaultError::Config(format!("{}: HTTP client: {e}", settings.config_path)))?;
        Ok(Arc::new(Self { settings, http, token: tokio::sync::Mutex::new(None) }))
    }

    /// `vault_addr` as used.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.settings.addr
    }

    /// An authenticated request to `/v1/<path>`; answers Vault's JSON (`Null` for 204). A
    /// token from a login that Vault refuses (revoked, expired early) is replaced by a fresh
    /// login and the request made once more.
    ///
    /// # Errors
    /// Vault unreachable, a refusal, or an unreadable answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, VaultError> {
        let token = self.token(crate::now_unix()).await?;
        match self.send(method, path, body, Some(&token)).await {
            Err(e) if e.is_permission_denied() && !matches!(self.settings.auth, ResolvedAuth::Token(_)) => {
                tracing::info!(path, "Vault refused the current token; logging in again");
                self.forget(&token).await;
                let token = self.token(crate::now_unix()).await?;
                self.send(method, path, body, Some(&token)).await
            }
            other => other,
        }
    }

    /// Authenticates now if there is no usable token (a start-up check).
    ///
    /// # Errors
    /// As [`VaultClient::call`].
    pub async fn authenticate(&self) -> Result<(), VaultError> {
        self.token(crate::now_unix()).await.map(drop)
    }

    async fn forget(&self, token: &Secret) {
        let mut state = self.token.lock().await;
        if state.as_ref().is_some_and(|s| s.token.expose() == token.expose()) {
            *state = None;
        }
    }

    /// The token to use at `now`, logging in (or looking a given token up) when needed.
    async fn token(&self, now: i64) -> Result<Secret, VaultError> {
        let mut state = self.token.lock().await;
        if let Some(s) = state.as_ref()
            && !s.expired(now)
        {
            return Ok(s.token.clone());
        }
        let fresh = self.login(now).await?;
        let token = fresh.token.clone();
        *state = Some(fresh);
        Ok(token)
    }

    /// Obtains a token with the configured method (a given token is looked up, to learn its
    /// lifetime and whether it renews).
    async fn login(&self, now: i64) -> Result<TokenState, VaultError> {
        let (path, body) = match &self.settings.auth {
            ResolvedAuth::Token(t) => {
                let answer = self.send(Method::Get, "auth/token/lookup-self", None, Some(t)).await?;
                let ttl = field(&answer, "/data/ttl").and_then(Value::as_i64).unwrap_or(0);
                let renewable = field(&answer, "/data/renewable").and_then(Value::as_bool).unwrap_or(false);
                tracing::info!(method = "token_auth", ttl_secs = ttl, renewable, "Vault token accepted");
                return Ok(TokenState { token: t.clone(), renewable, ttl, obtained_at: now });
            }
            ResolvedAuth::AppRole { mount, role_id, secret_id } => {
                (format!("auth/{mount}/login"), serde_json::json!({ "role_id": role_id, "secret_id": secret_id.expose() }))
            }
            ResolvedAuth::Cert { mount, role_name, .. } => (
                format!("auth/{mount}/login"),
                role_name.as_ref().map_or_else(|| serde_json::json!({}), |r| serde_json::json!({ "name": r })),
            ),
            ResolvedAuth::K8s { mount, role_name, token_path } => {
                let jwt = zeroize::Zeroizing::new(std::fs::read_to_string(token_path).map_err(|e| {
                    VaultError::Config(format!("{}.k8s_auth.token_path {}: {e}", self.settings.config_path, token_path.display()))
                })?);
                (format!("auth/{mount}/login"), serde_json::json!({ "role": role_name, "jwt": jwt.trim() }))
            }
        };
        let answer = self.send(Method::Post, &path, Some(&body), None).await?;
        let token = field(&answer, "/auth/client_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| VaultError::BadResponse { path: path.clone(), why: "no auth.client_token".into() })?;
        let ttl = field(&answer, "/auth/lease_duration").and_then(Value::as_i64).unwrap_or(0);
        let renewable = field(&answer, "/auth/renewable").and_then(Value::as_bool).unwrap_or(false);
        tracing::info!(method = self.settings.auth.name(), ttl_secs = ttl, renewable, "logged in to Vault");
        Ok(TokenState { token: Secret::new(token.to_owned()), renewable, ttl, obtained_at: now })
    }

    /// One HTTP exchange.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>, token: Option<&Secret>) -> Result<Value, VaultError> {
        let url = format!("{}/v1/{path}", self.settings.addr);
        let mut req = match method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Delete => self.http.delete(&url),
        };
        req = req.header("X-Vault-Request", "true");
        if let Some(ns) = &self.settings.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                VaultError::Config(format!("{}: the token holds characters not allowed in a header", self.settings.config_path))
            })?;
            v.set_sensitive(true);
            req = req.header("X-Vault-Token", v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |e: &reqwest::Error| VaultError::Unreachable {
            addr: self.settings.addr.clone(),
            method: method.as_str(),
            path: path.to_owned(),
            cause: describe(e),
        };
        let mut resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(VaultError::BadResponse { path: path.to_owned(), why: format!("larger than {MAX_BODY} bytes") });
            }
            bytes.extend_from_slice(&chunk);
        }
        let json: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) { None } else { serde_json::from_slice(&bytes).ok() };
        if !(200..300).contains(&status) {
            let message = json
                .as_ref()
                .and_then(|j| j.get("errors"))
                .and_then(Value::as_array)
                .map(|errs| errs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| snippet(&bytes));
            return Err(VaultError::Refused { method: method.as_str(), path: path.to_owned(), status, message });
        }
        match json {
            Some(j) => {
                if let Some(w) = j.get("warnings").and_then(Value::as_array) {
                    for warning in w.iter().filter_map(Value::as_str) {
                        tracing::debug!(path, warning, "Vault warning");
                    }
                }
                Ok(j)
            }
            None if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
            None => Err(VaultError::BadResponse { path: path.to_owned(), why: "not JSON".into() }),
        }
    }

    /// Keeps the token alive in the background while the client exists: renews a renewable
    /// token two thirds into its life; when renewal fails, a login method logs in afresh on
    /// next use. Returns at once; the task ends when the client is dropped.
    pub fn spawn_renewer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(client) = weak.upgrade() else { return };
                let wait = client.renewal_step(crate::now_unix()).await;
                drop(client);
                tokio::time::sleep(Duration::from_secs(u64::try_from(wait.max(1)).unwrap_or(1))).await;
            }
        });
    }

    /// One pass of the renewer at `now`; answers the seconds until the next pass.
    async fn renewal_step(&self, now: i64) -> i64 {
        let mut state = self.token.lock().await;
        let Some(current) = state.clone() else {
            // Nobody has needed Vault yet: log in so that renewal starts from start-up, as in
            // SPIRE; a failure here is only logged (the next use reports it properly).
            drop(state);
            if let Err(e) = self.token(now).await {
                tracing::warn!(error = %e, "Vault login failed; retrying");
                return 30;
            }
            return 1;
        };
        let Some(at) = current.renew_at() else {
            // Non-renewable (or never-expiring): nothing to do until it lapses; the next use
            // after that logs in again.
            return if current.ttl > 0 { (current.obtained_at + current.ttl - now).max(RENEW_RETRY) } else { 3600 };
        };
        if now < at {
            return at - now;
        }
        match self.send(Method::Post, "auth/token/renew-self", Some(&serde_json::json!({})), Some(&current.token)).await {
            Ok(answer) => {
                let ttl = field(&answer, "/auth/lease_duration").and_then(Value::as_i64).unwrap_or(0);
                let renewable = field(&answer, "/auth/renewable").and_then(Value::as_bool).unwrap_or(false);
                tracing::info!(ttl_secs = ttl, renewable, "Successfully renew auth token");
                *state = Some(TokenState { token: current.token, renewable, ttl, obtained_at: now });
                if ttl <= 0 { 3600 } else { (ttl * 2 / 3).max(1) }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the Vault token failed");
                if e.is_permission_denied() && !matches!(self.settings.auth, ResolvedAuth::Token(_)) {
                    *state = None;
                }
                RENEW_RETRY
            }
        }
    }
}

/// The start of a non-JSON error body, printable and short (it is echoed into logs).
fn snippet(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().is_empty() { "(no error text)".to_owned() } else { text.trim().to_owned() }
}

/// A request error with its causes.
fn describe(e: &reqwest::Error) -> String {
    let chain = crate::text::error_chain(e);
    if e.is_timeout() { format!("timed out ({chain})") } else { chain }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(renewable: bool, ttl: i64) -> TokenState {
        TokenState { token: Secret::new("t".into()), renewable, ttl, obtained_at: 1000 }
    }

    #[test]
    fn token_lifetime_rules() {
        let s = state(true, 60);
        assert_eq!(s.renew_at(), Some(1040));
        assert!(!s.expired(1054));
        assert!(s.expired(1055));
        assert_eq!(state(false, 60).renew_at(), None);
        // ttl 0: a root token, never expires, never renewed.
        assert!(!state(true, 0).expired(i64::MAX / 2));
        assert_eq!(state(true, 0).renew_at(), None);
    }
}
