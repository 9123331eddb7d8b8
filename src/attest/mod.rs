//! Node attestation: how an agent proves which node it runs on, and how a server checks it.
//!
//! Each method implements two small traits, free of gRPC and of the datastore:
//! - [`AgentAttestor`] (agent side): the payload to send, and the answer to each challenge;
//! - [`ServerAttestor`] (server side): checks a payload, optionally runs challenge/response
//!   rounds over a [`ChallengeChannel`], and names the node ([`NodeIdentity`]).
//!
//! The API's `AttestAgent` handler carries the rounds over its stream; the agent's client does
//! the same on its side. [`agent_attestor`] and [`ServerAttestors`] are the factories: a new
//! method is a new file here plus one arm in each.

pub mod join_token;
pub mod x509pop;

use crate::spiffe::{Selector, SpiffeId, TrustDomain};
use std::sync::Arc;

/// How the agent proves its node's identity (from agent.conf, files already read).
#[derive(Clone)]
pub enum NodeAttestation {
    /// A one-time join token (none needed when a stored SVID is still valid).
    JoinToken(Option<String>),
    /// x509pop: the node certificate chain (leaf first) and its PKCS#8 key.
    X509Pop {
        /// Leaf first.
        chain: Vec<Vec<u8>>,
        /// PKCS#8 DER.
        key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
    },
}

impl std::fmt::Debug for NodeAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(..)"),
            Self::X509Pop { .. } => f.write_str("X509Pop(..)"),
        }
    }
}

/// Why attestation failed. The texts are SPIRE's, as agents and operators see them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The request is malformed, or names a method or token that does not exist.
    #[error("{0}")]
    InvalidArgument(String),
    /// The evidence did not check out (untrusted chain, wrong proof of possession).
    #[error("{0}")]
    Denied(String),
    /// The attestor's store failed (the join-token table).
    #[error("{0}")]
    Store(String),
    /// The server failed to name the node; `public` is what the agent is told.
    #[error("{public}: {detail}")]
    Internal {
        /// What the agent is told.
        public: &'static str,
        /// What is logged.
        detail: String,
    },
}

/// What a server-side attestor established about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// Node selectors.
    pub selectors: Vec<Selector>,
    /// Whether the agent re-attests instead of renewing (SPIRE's `reattestable`).
    pub can_reattest: bool,
}

/// The agent side of a method.
pub trait AgentAttestor: Send + Sync {
    /// The method's name on the wire (`join_token`, `x509pop`).
    fn kind(&self) -> &'static str;
    /// The attestation payload.
    ///
    /// # Errors
    /// When the agent has nothing to attest with (no join token configured).
    fn payload(&self) -> Result<Vec<u8>, AttestError>;
    /// The answer to one challenge from the server.
    ///
    /// # Errors
    /// When the method has no challenges, or the challenge cannot be answered.
    fn respond(&self, challenge: &[u8]) -> Result<Vec<u8>, AttestError>;
    /// Whether a node attested this way may attest again (x509pop) rather than being lost
    /// once its SVID is gone.
    fn can_reattest(&self) -> bool;
}

/// The server's half of a challenge/response round.
#[async_trait::async_trait]
pub trait ChallengeChannel: Send {
    /// Sends `challenge` to the agent and waits for its response.
    ///
    /// # Errors
    /// The agent went away or answered with something else.
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

/// The server side of a method.
#[async_trait::async_trait]
pub trait ServerAttestor: Send + Sync + std::fmt::Debug {
    /// The method's name on the wire.
    fn kind(&self) -> &'static str;
    /// Checks `payload` (and the answers to any challenges) and names the node.
    ///
    /// # Errors
    /// [`AttestError`] with SPIRE's wording.
    async fn attest(&self, payload: &[u8], channel: &mut dyn ChallengeChannel, now: i64) -> Result<NodeIdentity, AttestError>;
}

/// The agent-side attestor for `attestation` (the agent-side factory).
#[must_use]
pub fn agent_attestor(attestation: &NodeAttestation) -> Box<dyn AgentAttestor> {
    match attestation {
        NodeAttestation::JoinToken(token) => Box::new(join_token::JoinTokenAgent::new(token.clone())),
        NodeAttestation::X509Pop { chain, key_pkcs8 } => Box::new(x509pop::X509PopAgent::new(chain.clone(), Arc::clone(key_pkcs8))),
    }
}

/// Server-side settings of the methods a server accepts (from server.conf).
#[derive(Debug, Clone, Default)]
pub struct ServerAttestorsConfig {
    /// Join tokens (always on in a server, as in SPIRE; off only in tests).
    pub join_token: bool,
    /// `NodeAttestor "x509pop"`.
    pub x509pop: Option<x509pop::X509PopServerConfig>,
}

/// The methods a server accepts, by wire name (the server-side factory).
#[derive(Debug, Default)]
pub struct ServerAttestors {
    by_kind: Vec<Arc<dyn ServerAttestor>>,
}

impl ServerAttestors {
    /// Builds the attestors `config` enables; join tokens are checked against `tokens`.
    #[must_use]
    pub fn new(config: &ServerAttestorsConfig, trust_domain: &TrustDomain, tokens: Arc<dyn join_token::TokenStore>) -> Self {
        let mut by_kind: Vec<Arc<dyn ServerAttestor>> = Vec::new();
        if config.join_token {
            by_kind.push(Arc::new(join_token::JoinTokenServer::new(trust_domain.clone(), tokens)));
        }
        if let Some(x) = &config.x509pop {
            by_kind.push(Arc::new(x509pop::X509PopServer::new(trust_domain.clone(), x.clone())));
        }
        Self { by_kind }
    }

    /// The attestor for a wire name.
    ///
    /// # Errors
    /// SPIRE's "could not find node attestor type" for a method this server does not run.
    pub fn get(&self, kind: &str) -> Result<Arc<dyn ServerAttestor>, AttestError> {
        if let Some(a) = self.by_kind.iter().find(|a| a.kind() == kind) {
            return Ok(Arc::clone(a));
        }
        if kind == join_token::KIND {
            return Err(AttestError::InvalidArgument("join_token node attestor is not enabled on this server".into()));
        }
        Err(AttestError::InvalidArgument(format!("error getting node attestor: could not find node attestor type {kind:?}")))
    }
}
