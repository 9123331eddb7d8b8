//! SPIFFE federation: the bundle endpoint this server serves to other trust domains, and the
//! refresher that keeps the bundles of the trust domains it federates with up to date.
//!
//! Both follow the SPIFFE Trust Domain and Bundle spec (§5, `https_web` and `https_spiffe`)
//! and SPIRE's behaviour where the spec leaves room: the endpoint answers `GET /` with the
//! trust domain's bundle and its refresh hint; the refresher polls each foreign endpoint at a
//! quarter of its refresh hint (never more often than every 15 s), keeps the last good bundle
//! when a poll fails, and stores a bundle only when it changed.

pub mod acme;
pub mod client;
pub mod endpoint;

use crate::spiffe::TrustDomain;

pub use crate::config::federation::{
    AcmeConfig, BundleEndpointConfig, ClientProfile, EndpointProfile, FederationConfig, OidcConfig, Relationship,
};

/// Why a foreign bundle could not be refreshed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// The endpoint could not be reached or did not answer in time.
    #[error("fetching {url}: {cause}")]
    Fetch {
        /// The endpoint URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// The endpoint answered, but not with a usable bundle for the trust domain.
    #[error("bundle from {url} refused: {why}")]
    BadBundle {
        /// The endpoint URL.
        url: String,
        /// Why.
        why: String,
    },
    /// `https_spiffe` without a bundle to authenticate the endpoint with.
    #[error(
        "can't perform SPIFFE Authentication: local copy of bundle not found for {trust_domain} (bootstrap it with `bundle set -id spiffe://{trust_domain}`)"
    )]
    NoBootstrapBundle {
        /// The trust domain of the endpoint's SPIFFE ID.
        trust_domain: TrustDomain,
    },
    /// Reading or storing the bundle failed.
    #[error("datastore: {0}")]
    Datastore(String),
}
