//! Federation relationships: a foreign trust domain, the URL of its bundle endpoint, and how
//! that endpoint is authenticated (SPIFFE Trust Domain and Bundle spec, §5). Configured in
//! `server.federation.federates_with` or stored through the Trust Domain API.

use super::{SpiffeId, TrustDomain};

/// A foreign trust domain and where its bundle is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// `bundle_endpoint_url` (https).
    pub bundle_endpoint_url: String,
    /// How the endpoint is authenticated.
    pub profile: ClientProfile,
}

/// How a foreign bundle endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientProfile {
    /// `https_web`: Web PKI (system roots, or `SSL_CERT_FILE`), host name checked.
    HttpsWeb,
    /// `https_spiffe`: the endpoint presents an X509-SVID with this ID, chaining to the stored
    /// bundle of the ID's trust domain.
    HttpsSpiffe {
        /// `endpoint_spiffe_id`.
        endpoint_spiffe_id: SpiffeId,
    },
}

impl ClientProfile {
    /// SPIRE's profile name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}
