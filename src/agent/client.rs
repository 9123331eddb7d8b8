//! The agent's connection to its server: TLS that authenticates the server as
//! `spiffe://<td>/spire/server` against the trust bundle (no hostname checks, as SPIFFE peers
//! have none), optionally presenting the agent's own X509-SVID (mTLS).

use crate::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Chain must verify against these roots (DER).
    Roots(Vec<Vec<u8>>),
    /// `insecure_bootstrap`: the chain is not verified; only the server ID is checked.
    InsecureBootstrap,
}

#[derive(Debug)]
struct Verifier {
    trust: ServerTrust,
    server_id: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let ServerTrust::Roots(roots) = &self.trust {
            let mut chain = vec![end_entity.to_vec()];
            chain.extend(intermediates.iter().map(|c| c.to_vec()));
            crate::spiffe::verify_chain(&chain, roots, crate::now_unix())
                .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        }
        let id = crate::spiffe::leaf_spiffe_id(end_entity).map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        if id != self.server_id {
            return Err(rustls::Error::General(format!("unexpected server ID {id}; expected {}", self.server_id)));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A verifier for a SPIFFE peer: the chain must verify against `roots` and the leaf must carry
/// exactly `server_id` (no host name checks). Also what federation's `https_spiffe` profile
/// authenticates a foreign bundle endpoint with.
#[must_use]
pub fn spiffe_server_verifier(roots: Vec<Vec<u8>>, server_id: SpiffeId) -> Arc<dyn ServerCertVerifier> {
    Arc::new(Verifier { trust: ServerTrust::Roots(roots), server_id, provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()) })
}

/// A client identity: an X509-SVID chain (leaf first) and its PKCS#8 key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

/// Why a channel to the server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[source] rustls::Error),
    /// The agent's certificate and key do not go together.
    #[error("agent key: {0}")]
    Key(#[source] rustls::Error),
    /// `server_address:server_port` is not a valid address.
    #[error("server address {addr:?}: {source}")]
    Address {
        /// What was given.
        addr: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to `addr` (host:port) and returns a gRPC channel. Connects lazily: errors show up
/// on the first RPC, which is what the retry loops want.
///
/// # Errors
/// A bad address or client key.
pub fn connect(addr: &str, trust: ServerTrust, server_id: SpiffeId, identity: Option<&ClientIdentity>) -> Result<Channel, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, server_id, provider }));
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> = id.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8.to_vec()));
            builder.with_client_auth_cert(chain, key).map_err(ClientError::Key)?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let target = addr.to_owned();
    let ep = Endpoint::try_from(format!("http://{addr}"))
        .map_err(|source| ClientError::Address { addr: addr.to_owned(), source })?
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30));
    Ok(ep.connect_with_connector_lazy(tower::service_fn(move |_| {
        let connector = connector.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            // Agent RPCs are small request/response pairs: Nagle plus delayed ACKs would add
            // ~40-90 ms to each (measured by benches/agent.rs).
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("spire-server").map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    })))
}
