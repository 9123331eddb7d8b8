//! `UpstreamAuthority "disk"`: an upstream CA whose certificate and key are files.
//!
//! Keys: `cert_file_path`, `key_file_path`, optional `bundle_file_path`. Without a bundle the
//! certificate must be one self-signed CA (it is the trust root); with a bundle, the cert file
//! holds the chain up to a root in the bundle. The chain and the key/cert match are verified
//! at load, and the files are re-read on every mint (keeping the last good pair on failure),
//! so an operator can replace them without a restart.

use super::{MintedCa, UpstreamAuthority, UpstreamError};
use crate::keymanager::{Key, KeyRef, sign_off_runtime};
use crate::pki::{self as tmpl, Csr};
use crate::spiffe::TrustDomain;
use async_trait::async_trait;
use std::sync::{Arc, RwLock};
use x509_parser::prelude::*;

pub use crate::config::server::DiskUpstreamConfig;

/// Default TTL of a minted CA when the caller expresses no preference (SPIRE: 1h).
const DEFAULT_TTL: i64 = 3600;

struct Loaded {
    chain: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
    not_after: i64,
    issuer: rcgen::Issuer<'static, KeyRef>,
    /// The upstream CA key, through the key seam (in memory today; an HSM key is another `Key`).
    key: Arc<dyn Key>,
}

/// The `disk` upstream authority (and `pkcs11`, which is `disk` with its key on a token).
pub struct DiskUpstreamAuthority {
    cert_file_path: std::path::PathBuf,
    bundle_file_path: Option<std::path::PathBuf>,
    key: KeySource,
    trust_domain: TrustDomain,
    current: RwLock<Arc<Loaded>>,
}

/// Where the upstream CA's private key is.
#[derive(Debug)]
enum KeySource {
    /// `key_file_path`, re-read on every mint.
    File(std::path::PathBuf),
    /// A key held elsewhere (a PKCS#11 token); `what` names it in errors (`key_label "root"`).
    Held { what: String, key: Arc<dyn Key> },
}

impl std::fmt::Debug for DiskUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskUpstreamAuthority")
            .field("cert_file_path", &self.cert_file_path)
            .field("bundle_file_path", &self.bundle_file_path)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path).map_err(|e| UpstreamError::Config(format!("{what} {}: {e}", path.display())))
}

pub(super) fn pem_certs(text: &str, what: &str) -> Result<Vec<Vec<u8>>, UpstreamError> {
    let blocks = ::pem::parse_many(text).map_err(|e| UpstreamError::Config(format!("{what}: not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(UpstreamError::Config(format!("{what}: no PEM certificate found (is the file truncated?)")));
    }
    let mut out = Vec::new();
    for b in blocks {
        if b.tag() != "CERTIFICATE" {
            return Err(UpstreamError::Config(format!("{what}: unexpected PEM block {:?}", b.tag())));
        }
        parse_x509_certificate(b.contents()).map_err(|e| UpstreamError::Config(format!("{what}: bad certificate: {e}")))?;
        out.push(b.contents().to_vec());
    }
    Ok(out)
}

pub(super) fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (parse_x509_certificate(child), parse_x509_certificate(parent)) else { return false };
    // The same signature check as every other chain cairn verifies (Go's algorithm set).
    crate::spiffe::x509::signature::verify_signed_by(&c, &p).is_ok()
}

fn load(cert_file_path: &std::path::Path, bundle_file_path: Option<&std::path::Path>, source: &KeySource) -> Result<Loaded, UpstreamError> {
    let chain = pem_certs(&read(cert_file_path, "cert_file_path")?, "cert_file_path")?;
    let (key, key_name) = match source {
        KeySource::File(path) => {
            let key_pem = zeroize::Zeroizing::new(read(path, "key_file_path")?);
            let key = crate::keymanager::key_from_pem("upstream-disk", &key_pem)
                .map_err(|e| UpstreamError::Config(format!("key_file_path: {e}")))?;
            (key, "key_file_path: the private key".to_owned())
        }
        KeySource::Held { what, key } => (Arc::clone(key), what.clone()),
    };
    let first = chain.first().cloned().ok_or_else(|| UpstreamError::Config("cert_file_path: empty".into()))?;
    let (_, cert) = parse_x509_certificate(&first).map_err(|e| UpstreamError::Config(format!("cert_file_path: {e}")))?;
    if cert.public_key().raw != key.spki_der().as_slice() {
        return Err(UpstreamError::Config(format!("{key_name} does not match the certificate in cert_file_path")));
    }
    if !cert.is_ca() {
        return Err(UpstreamError::Config("cert_file_path: the certificate is not a CA (basicConstraints CA:TRUE missing)".into()));
    }
    let not_after = cert.validity().not_after.timestamp();
    // Each certificate must be signed by the next one.
    for (i, pair) in chain.windows(2).enumerate() {
        if let [child, parent] = pair
            && !signed_by(child, parent)
        {
            return Err(UpstreamError::Config(format!("cert_file_path: certificate {} is not signed by certificate {}", i + 1, i + 2)));
        }
    }
    let roots = match bundle_file_path {
        None => {
            if chain.len() != 1 || !signed_by(&first, &first) {
                return Err(UpstreamError::Config(
                    "cert_file_path: without bundle_file_path it must hold exactly one self-signed CA certificate".into(),
                ));
            }
            chain.clone()
        }
        Some(path) => {
            let roots = pem_certs(&read(path, "bundle_file_path")?, "bundle_file_path")?;
            let last = chain.last().unwrap_or(&first);
            if !roots.iter().any(|r| r == last || signed_by(last, r)) {
                return Err(UpstreamError::Config("cert_file_path: the chain does not lead to a root in bundle_file_path".into()));
            }
            roots
        }
    };
    // What follows a minted CA in its chain: the upstream chain minus anything that is a root.
    let chain: Vec<Vec<u8>> = chain.into_iter().filter(|c| !roots.contains(c)).collect();
    let issuer = rcgen::Issuer::from_ca_cert_der(&first.as_slice().into(), KeyRef(Arc::clone(&key)))
        .map_err(|e| UpstreamError::Config(format!("cert_file_path: {e}")))?;
    Ok(Loaded { chain, roots, not_after, issuer, key })
}

impl DiskUpstreamAuthority {
    /// Loads and verifies the files.
    ///
    /// # Errors
    /// A missing, truncated or mismatched file, named by its config key.
    pub fn new(config: DiskUpstreamConfig, trust_domain: TrustDomain) -> Result<Self, UpstreamError> {
        Self::build(config.cert_file_path, config.bundle_file_path, KeySource::File(config.key_file_path), trust_domain)
    }

    /// An upstream whose certificate files are on disk and whose key is held elsewhere (a
    /// PKCS#11 token): the key signs through the [`Key`] seam and never leaves its holder.
    ///
    /// # Errors
    /// A missing, truncated or mismatched file, or a key that does not match the certificate.
    pub fn with_held_key(
        cert_file_path: std::path::PathBuf,
        bundle_file_path: Option<std::path::PathBuf>,
        what: String,
        key: Arc<dyn Key>,
        trust_domain: TrustDomain,
    ) -> Result<Self, UpstreamError> {
        Self::build(cert_file_path, bundle_file_path, KeySource::Held { what, key }, trust_domain)
    }

    fn build(
        cert_file_path: std::path::PathBuf,
        bundle_file_path: Option<std::path::PathBuf>,
        key: KeySource,
        trust_domain: TrustDomain,
    ) -> Result<Self, UpstreamError> {
        let loaded = load(&cert_file_path, bundle_file_path.as_deref(), &key)?;
        Ok(Self { cert_file_path, bundle_file_path, key, trust_domain, current: RwLock::new(Arc::new(loaded)) })
    }

    fn current(&self) -> Result<Arc<Loaded>, UpstreamError> {
        match load(&self.cert_file_path, self.bundle_file_path.as_deref(), &self.key) {
            Ok(l) => {
                let l = Arc::new(l);
                if let Ok(mut g) = self.current.write() {
                    *g = Arc::clone(&l);
                }
                Ok(l)
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk upstream authority: reload failed, using the last good certificate and key");
                self.current.read().map(|g| Arc::clone(&g)).map_err(|_| UpstreamError::Config("lock poisoned".into()))
            }
        }
    }
}

#[async_trait]
impl UpstreamAuthority for DiskUpstreamAuthority {
    async fn mint_x509_ca(&self, csr_der: &[u8], preferred_ttl: i64) -> Result<MintedCa, UpstreamError> {
        let csr = Csr::parse(csr_der).map_err(|e| UpstreamError::Refused(e.to_string()))?;
        if csr.uris != [self.trust_domain.id_string()] {
            return Err(UpstreamError::Refused(format!(
                "CSR must carry exactly one URI SAN {}, found {:?}",
                self.trust_domain.id_string(),
                csr.uris
            )));
        }
        let loaded = self.current()?;
        let now = crate::now_unix();
        let ttl = if preferred_ttl > 0 { preferred_ttl } else { DEFAULT_TTL };
        let not_after = (now + ttl).min(loaded.not_after);
        let params = tmpl::ca_params(&self.trust_domain, &csr.subject, None, &csr.public_key, now - tmpl::NOT_BEFORE_CUSHION, not_after)
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let signer = Arc::clone(&loaded);
        let spki = csr.public_key;
        let cert = sign_off_runtime(loaded.key.as_ref(), move || params.signed_by(&spki, &signer.issuer).map(|c| c.der().to_vec()))
            .await
            .map_err(|e| UpstreamError::Refused(e.to_string()))?
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let mut chain = vec![cert];
        chain.extend(loaded.chain.iter().cloned());
        Ok(MintedCa { chain, roots: loaded.roots.clone() })
    }
}
