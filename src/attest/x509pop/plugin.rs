//! x509pop as a node attestor: the agent sends its node certificate chain and proves it holds
//! the key by answering a challenge; the server checks the chain against `ca_bundle_path` and
//! names the node by the agent path template.

use super::{attestation_payload, challenge_response, verify_payload};
use crate::attest::{AgentAttestor, AttestError, ChallengeChannel, NodeIdentity, ServerAttestor};
use crate::spiffe::{Selector, SpiffeId, TrustDomain};
use std::sync::Arc;

/// The method's wire name.
pub const KIND: &str = "x509pop";

/// Intermediates accepted between a node certificate and its root.
const MAX_INTERMEDIATES: usize = 4;

/// The agent side: the node chain (leaf first) and its key.
pub struct X509PopAgent {
    chain: Vec<Vec<u8>>,
    key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

impl X509PopAgent {
    /// An attestor for `chain` and its PKCS#8 key.
    #[must_use]
    pub fn new(chain: Vec<Vec<u8>>, key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>) -> Self {
        Self { chain, key_pkcs8 }
    }
}

impl AgentAttestor for X509PopAgent {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn payload(&self) -> Result<Vec<u8>, AttestError> {
        Ok(attestation_payload(&self.chain))
    }

    fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, AttestError> {
        challenge_response(&self.key_pkcs8, challenge).map_err(|e| AttestError::Denied(e.to_string()))
    }

    fn can_reattest(&self) -> bool {
        true
    }
}

/// A file named in an agent's x509pop settings that could not be used; the text is
/// `<key> <path>: <reason>`, for the caller to prefix with where the key lives.
#[derive(Debug, thiserror::Error)]
#[error("{key} {}: {reason}", path.display())]
pub struct X509PopFileError {
    /// The settings key (`private_key_path`, `certificate_path`, `intermediates_path`).
    pub key: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

/// Reads an agent's x509pop files: the node key (PEM) and certificate chain, plus optional
/// intermediates appended to the chain. Used by the agent and by a downstream server that
/// attests itself, so both read the files the same way.
///
/// # Errors
/// The first file that cannot be read or parsed.
pub fn load_agent_files(
    private_key_path: &std::path::Path,
    certificate_path: &std::path::Path,
    intermediates_path: Option<&std::path::Path>,
) -> Result<crate::attest::NodeAttestation, X509PopFileError> {
    let bad = |key: &'static str, path: &std::path::Path, reason: String| X509PopFileError { key, path: path.to_owned(), reason };
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(private_key_path).map_err(|e| bad("private_key_path", private_key_path, e.to_string()))?,
    );
    let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| bad("private_key_path", private_key_path, e.to_string()))?;
    let certs = std::fs::read_to_string(certificate_path).map_err(|e| bad("certificate_path", certificate_path, e.to_string()))?;
    let mut chain = crate::spiffe::parse_pem_certs(&certs).map_err(|e| bad("certificate_path", certificate_path, e.to_string()))?;
    if let Some(i) = intermediates_path {
        let text = std::fs::read_to_string(i).map_err(|e| bad("intermediates_path", i, e.to_string()))?;
        chain.extend(crate::spiffe::parse_pem_certs(&text).map_err(|e| bad("intermediates_path", i, e.to_string()))?);
    }
    Ok(crate::attest::NodeAttestation::X509Pop { chain, key_pkcs8: Arc::new(zeroize::Zeroizing::new(key.serialize_der())) })
}

/// Server-side settings (`NodeAttestor "x509pop"`).
#[derive(Debug, Clone)]
pub struct X509PopServerConfig {
    /// Roots node certificates must chain to (`ca_bundle_path`).
    pub roots: Vec<Vec<u8>>,
    /// `agent_path_template` (SPIRE's default when `None`).
    pub agent_path_template: Option<String>,
}

/// The server side.
#[derive(Debug)]
pub struct X509PopServer {
    trust_domain: TrustDomain,
    config: X509PopServerConfig,
}

impl X509PopServer {
    /// A checker for `config`.
    #[must_use]
    pub fn new(trust_domain: TrustDomain, config: X509PopServerConfig) -> Self {
        Self { trust_domain, config }
    }
}

#[async_trait::async_trait]
impl ServerAttestor for X509PopServer {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn attest(&self, payload: &[u8], channel: &mut dyn ChallengeChannel, now: i64) -> Result<NodeIdentity, AttestError> {
        let denied = |e: &dyn std::fmt::Display| AttestError::Denied(format!("nodeattestor(x509pop): {e}"));
        let cert = verify_payload(payload, &self.config.roots, now, MAX_INTERMEDIATES).map_err(|e| denied(&e))?;
        let (challenge, pending) = cert.make_challenge().map_err(|e| denied(&e))?;
        let response = channel.challenge(challenge).await?;
        pending
            .verify_response(&response)
            .map_err(|e| AttestError::Denied(format!("nodeattestor(x509pop): challenge response verification failed: {e}")))?;
        let td = self.trust_domain.as_str();
        let path = cert
            .agent_path(td, self.config.agent_path_template.as_deref())
            .map_err(|e| AttestError::Internal { public: "failed to build agent ID", detail: e.to_string() })?;
        let agent_id = SpiffeId::from_path(&self.trust_domain, &path)
            .map_err(|e| AttestError::Internal { public: "failed to build agent ID", detail: format!("{path}: {e}") })?;
        let selectors = cert.selectors(td).into_iter().map(|(kind, value)| Selector { kind, value }).collect();
        Ok(NodeIdentity { agent_id, selectors, can_reattest: true })
    }
}
