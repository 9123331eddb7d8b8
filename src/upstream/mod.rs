//! UpstreamAuthority: where a tier's X.509 CA comes from when it is not self-signed.
//!
//! Backends: `disk` (a CA certificate and key on disk), `pkcs11` (the same with the key held on
//! a PKCS#11 token) and `spire` (an upstream SPIRE-API server, which makes this server a
//! downstream tier and is the only backend that publishes JWT keys) and `vault` (a Vault or
//! OpenBao PKI engine).

pub mod disk;
pub mod spire;
pub mod vault;

use crate::spiffe::{Bundle, JwtAuthority};
use async_trait::async_trait;

pub use disk::DiskUpstreamAuthority;

/// Errors from an upstream authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The backend does not offer this optional capability.
    #[error("not supported by this upstream authority")]
    Unsupported,
    /// The backend's own configuration or files are unusable.
    #[error("{0}")]
    Config(String),
    /// The request was refused (bad CSR and the like).
    #[error("{0}")]
    Refused(String),
    /// The upstream could not be reached.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

/// A CA minted upstream.
#[derive(Debug, Clone)]
pub struct MintedCa {
    /// The new CA first, then intermediates up to (excluding) a root.
    pub chain: Vec<Vec<u8>>,
    /// The upstream trust anchors.
    pub roots: Vec<Vec<u8>>,
}

/// Signs this tier's CA. Optional capabilities return [`UpstreamError::Unsupported`].
#[async_trait]
pub trait UpstreamAuthority: Send + Sync + std::fmt::Debug {
    /// Signs a CA certificate for the CSR (whose URI SAN is the trust-domain ID).
    /// `preferred_ttl` is advisory, in seconds.
    async fn mint_x509_ca(&self, csr_der: &[u8], preferred_ttl: i64) -> Result<MintedCa, UpstreamError>;

    /// Whether a mint can be attempted now (the upstream answers and accepts our credentials).
    /// Asked before a new CA key is generated, so that an upstream that is down costs no key:
    /// repeated failed starts leave the key store as it was.
    async fn check_ready(&self) -> Result<(), UpstreamError> {
        Ok(())
    }

    /// Whether the upstream is another tier of this trust domain (a `spire` upstream): such
    /// an upstream validates this tier's JWT-SVIDs, so a fresh JWT key must reach it before
    /// use, and it has a trust bundle this tier follows. A CA on disk (or in Vault, an HSM)
    /// signs and nothing more: no tier above to tell, no bundle to follow.
    fn is_trust_domain_tier(&self) -> bool {
        false
    }

    /// Publishes a JWT key upstream; returns every JWT key the upstream knows.
    /// Supported by: `spire`. Others: `Unsupported`.
    async fn publish_jwt_key(&self, _key: &JwtAuthority) -> Result<Vec<JwtAuthority>, UpstreamError> {
        Err(UpstreamError::Unsupported)
    }

    /// The upstream trust domain bundle (roots and every tier's JWT keys), for keeping this
    /// tier's bundle in step. Supported by: `spire`.
    async fn upstream_bundle(&self) -> Result<Bundle, UpstreamError> {
        Err(UpstreamError::Unsupported)
    }

    /// Streams the upstream bundle on every change past `known_sequence` into `tx` until the
    /// stream breaks. Supported by: `spire` against a cairn upstream (SPIRE upstreams answer
    /// `Unsupported`, and the caller falls back to polling [`UpstreamAuthority::upstream_bundle`]).
    async fn watch_upstream_bundle(&self, _known_sequence: u64, _tx: tokio::sync::mpsc::Sender<Bundle>) -> Result<(), UpstreamError> {
        Err(UpstreamError::Unsupported)
    }
}

/// The upstream authority `config` names (`UpstreamAuthority "<name>"`), `None` for a
/// self-signed root: the one place an upstream backend is chosen. A new backend is a new file
/// here and one arm below.
///
/// # Errors
/// The backend's files or settings are unusable.
pub fn build(
    config: Option<&crate::config::server::UpstreamConfig>,
    trust_domain: &crate::spiffe::TrustDomain,
) -> Result<Option<std::sync::Arc<dyn UpstreamAuthority>>, UpstreamError> {
    use crate::config::server::UpstreamConfig;
    Ok(match config {
        None => None,
        Some(UpstreamConfig::Disk(d)) => Some(std::sync::Arc::new(DiskUpstreamAuthority::new(d.clone(), trust_domain.clone())?)),
        Some(UpstreamConfig::Spire(c)) => Some(std::sync::Arc::new(spire::SpireUpstream::new(c.clone(), trust_domain.clone())?)),
        Some(UpstreamConfig::Pkcs11(c)) => Some(std::sync::Arc::new(pkcs11_upstream(c, trust_domain)?)),
        Some(UpstreamConfig::Vault(c)) => Some(std::sync::Arc::new(vault::VaultUpstream::new(c, trust_domain.clone())?)),
    })
}

/// `UpstreamAuthority "pkcs11"`: the `disk` authority with its key found on a token by label.
fn pkcs11_upstream(
    c: &crate::config::server::Pkcs11UpstreamConfig,
    trust_domain: &crate::spiffe::TrustDomain,
) -> Result<DiskUpstreamAuthority, UpstreamError> {
    use crate::keymanager::pkcs11::Pkcs11Key;
    let token = std::sync::Arc::new(c.token.open().map_err(|e| UpstreamError::Config(e.to_string()))?);
    let key = Pkcs11Key::find(std::sync::Arc::clone(&token), &c.key_label).map_err(|e| UpstreamError::Config(format!("key_label: {e}")))?;
    let what = format!("key_label: the key {:?} on token {:?}", c.key_label, token.label());
    DiskUpstreamAuthority::with_held_key(
        c.cert_file_path.clone(),
        c.bundle_file_path.clone(),
        what,
        std::sync::Arc::new(key),
        trust_domain.clone(),
    )
}

/// What the last exchange with the upstream did (for `cairn tiers status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamStatus {
    /// Unix seconds of the last successful bundle sync.
    pub last_sync: i64,
    /// Sequence number of the upstream bundle last seen.
    pub upstream_sequence: u64,
    /// `push` or `poll`.
    pub mode: String,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}
