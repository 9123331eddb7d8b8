//! Node attestation methods shared by the agent (which proves) and the server (which checks).

pub mod x509pop;

/// How the agent proves its node's identity.
#[derive(Clone)]
pub enum NodeAttestation {
    /// A one-time join token (none needed when a stored SVID is still valid).
    JoinToken(Option<String>),
    /// x509pop: the node certificate chain (leaf first) and its PKCS#8 key.
    X509Pop {
        /// Leaf first.
        chain: Vec<Vec<u8>>,
        /// PKCS#8 DER.
        key_pkcs8: std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>,
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
