//! The server's TLS identity and client verification on the gRPC port.
//!
//! The server presents `spiffe://<td>/spire/server`, an X509-SVID with an in-memory key,
//! re-minted at half-life or when the active CA changes. Client certificates are optional (an
//! agent attesting for the first time has none) but, when present, must carry one SPIFFE ID of
//! this trust domain and chain to its current bundle, or be one of the `admin_ids` of another
//! trust domain and chain to that trust domain's bundle as this server holds it (a federated
//! bundle, as SPIRE's server checks foreign admins); otherwise the handshake fails. Session tickets are off so every connection is checked against the
//! bundle of the moment.

use crate::ca::CaError;
use crate::ca::{Ca, X509SvidRequest};
use crate::keymanager::KeyType;
use crate::spiffe::{SpiffeId, TrustDomain};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::{Arc, RwLock};

struct Svid {
    certified: Arc<CertifiedKey>,
    chain: Vec<Vec<u8>>,
    not_before: i64,
    not_after: i64,
    authority_id: String,
}

/// The rotating server SVID and the verifier built from the current bundle.
pub struct TlsState {
    trust_domain: TrustDomain,
    server_id: SpiffeId,
    ca: Arc<Ca>,
    key_type: KeyType,
    ttl: i64,
    provider: Arc<CryptoProvider>,
    svid: RwLock<Option<Svid>>,
    verifier: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    /// `admin_ids` of other trust domains, and a verifier per such trust domain from the
    /// bundle this server holds for it.
    foreign_admins: RwLock<Vec<SpiffeId>>,
    foreign_verifiers: RwLock<std::collections::HashMap<TrustDomain, Arc<dyn ClientCertVerifier>>>,
    /// The chain published for debug output.
    pub chain_out: Arc<RwLock<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("server_id", &self.server_id).finish_non_exhaustive()
    }
}

impl TlsState {
    /// A TLS state for `trust_domain`, minting from `ca`.
    ///
    /// # Errors
    /// Only if the trust domain cannot form the server ID (it always can).
    pub fn new(trust_domain: TrustDomain, ca: Arc<Ca>, key_type: KeyType, ttl: i64) -> Result<Self, crate::spiffe::SpiffeIdError> {
        let server_id = SpiffeId::from_segments(&trust_domain, &["spire", "server"])?;
        Ok(Self {
            trust_domain,
            server_id,
            ca,
            key_type,
            ttl,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            svid: RwLock::new(None),
            verifier: RwLock::new(None),
            foreign_admins: RwLock::new(Vec::new()),
            foreign_verifiers: RwLock::new(std::collections::HashMap::new()),
            chain_out: Arc::new(RwLock::new(Vec::new())),
        })
    }

    /// Re-mints the server SVID when there is none, it is past half-life, or the CA changed.
    ///
    /// # Errors
    /// When minting fails (no CA); the previous SVID stays in use.
    pub async fn rotate_if_needed(&self, now: i64) -> Result<bool, CaError> {
        let poisoned = || CaError::Signing("server SVID lock poisoned".into());
        let authority = self.ca.x509_authority().ok_or(CaError::NoX509Ca)?;
        let due = match self.svid.read().map_err(|_| poisoned())?.as_ref() {
            None => true,
            Some(s) => now >= s.not_before + (s.not_after - s.not_before) / 2 || s.authority_id != authority.authority_id,
        };
        if !due {
            return Ok(false);
        }
        // The server SVID's key has the CA's key type, as in SPIRE (its SVID rotator is given
        // ca_key_type).
        let key = self.key_type.generate_key_pair()?;
        let minted = self.ca.mint_x509_svid(&key, &X509SvidRequest { id: &self.server_id, dns_names: &[], ttl: self.ttl }, now).await?;
        let chain = minted.chain;
        let pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
        let signing = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())))
            .map_err(|e| CaError::Signing(format!("server SVID key: {e}")))?;
        let certs: Vec<CertificateDer<'static>> = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let (not_before, not_after) = (minted.not_before, minted.not_after);
        let svid = Svid {
            certified: Arc::new(CertifiedKey::new(certs, signing)),
            chain: chain.clone(),
            not_before,
            not_after,
            authority_id: authority.authority_id.clone(),
        };
        *self.svid.write().map_err(|_| poisoned())? = Some(svid);
        if let Ok(mut out) = self.chain_out.write() {
            *out = chain;
        }
        tracing::info!(not_after, "rotated server SVID");
        Ok(true)
    }

    /// Rebuilds the client verifier from the trust domain's X.509 roots.
    pub fn set_roots(&self, roots: &[Vec<u8>]) {
        if let Some(v) = self.build_verifier(roots)
            && let Ok(mut g) = self.verifier.write()
        {
            *g = Some(v);
        }
    }

    /// The server's `admin_ids`: those of other trust domains are admitted on the TLS port when
    /// they chain to their trust domain's bundle ([`TlsState::set_foreign_roots`]).
    pub fn set_admin_ids(&self, admin_ids: &[SpiffeId]) {
        if let Ok(mut g) = self.foreign_admins.write() {
            *g = admin_ids.iter().filter(|id| !id.is_member_of(&self.trust_domain)).cloned().collect();
        }
    }

    /// The trust domains of foreign `admin_ids`, whose bundles [`TlsState::set_foreign_roots`]
    /// wants.
    #[must_use]
    pub fn foreign_admin_trust_domains(&self) -> std::collections::BTreeSet<TrustDomain> {
        self.foreign_admins.read().map(|g| g.iter().map(|id| id.trust_domain().clone()).collect()).unwrap_or_default()
    }

    /// Rebuilds the verifier for foreign admins of `td` from its X.509 roots (none: forget it).
    pub fn set_foreign_roots(&self, td: &TrustDomain, roots: &[Vec<u8>]) {
        let built = if roots.is_empty() { None } else { self.build_verifier(roots) };
        if let Ok(mut g) = self.foreign_verifiers.write() {
            match built {
                Some(v) => g.insert(td.clone(), v),
                None => g.remove(td),
            };
        }
    }

    fn build_verifier(&self, roots: &[Vec<u8>]) -> Option<Arc<dyn ClientCertVerifier>> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            if let Err(e) = store.add(CertificateDer::from(r.clone())) {
                tracing::warn!(error = %e, "a bundle root is not usable as a TLS trust anchor");
            }
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::clone(&self.provider))
            .allow_unauthenticated()
            .build()
            .inspect_err(|e| tracing::warn!(error = %e, "cannot build the client verifier from the bundle"))
            .ok()
    }

    /// The current SVID chain, leaf first.
    #[must_use]
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.svid.read().ok().and_then(|g| g.as_ref().map(|s| s.chain.clone())).unwrap_or_default()
    }

    /// A rustls server config that resolves the current SVID and verifies clients per call.
    ///
    /// # Errors
    /// When the protocol versions cannot be set up with the provider.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::new(Verifier(Arc::clone(self))))
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        // gRPC clients (grpc-go >= 1.67) insist on ALPN h2.
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(cfg)
    }
}

impl TlsState {
    /// A TLS server configuration for the federation bundle endpoint's `https_spiffe`
    /// profile: the same rotating server SVID, no client certificates, HTTP/1.1.
    ///
    /// # Errors
    /// When the protocol versions cannot be set up with the provider.
    pub fn bundle_endpoint_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[derive(Debug)]
struct Resolver(Arc<TlsState>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid.read().ok().and_then(|g| g.as_ref().map(|s| Arc::clone(&s.certified)))
    }
}

#[derive(Debug)]
struct Verifier(Arc<TlsState>);

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = crate::spiffe::x509::leaf_spiffe_id(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("client certificate is not an X509-SVID: {e}")))?;
        // Which bundle the chain must lead to: the own trust domain's, or for a foreign admin
        // its trust domain's (anyone else from outside is refused before any chain work).
        let inner = if id.is_member_of(&self.0.trust_domain) {
            self.0.verifier.read().ok().and_then(|g| g.clone()).ok_or(rustls::Error::General("no trust bundle yet".into()))?
        } else if self.0.foreign_admins.read().is_ok_and(|g| g.contains(&id)) {
            let td = id.trust_domain();
            self.0.foreign_verifiers.read().ok().and_then(|g| g.get(td).cloned()).ok_or_else(|| {
                tracing::warn!(admin_id = %id, trust_domain = %td, "No bundle found for foreign admin trust domain; admins from this trust domain will not be able to connect");
                rustls::Error::General(format!("no bundle for trust domain {td} of admin {id}"))
            })?
        } else {
            return Err(rustls::Error::General(format!("client {id} is not in trust domain {}", self.0.trust_domain)));
        };
        // The time of cairn's clock rather than rustls's, so that certificates are judged by
        // the same clock that issued and rotated them (a test's manual clock included).
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(crate::now_unix()).unwrap_or(0)));
        inner.verify_client_cert(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}
