//! `UpstreamAuthority "disk"`: an upstream CA whose certificate and key are files.
//!
//! Keys: `cert_file_path`, `key_file_path`, optional `bundle_file_path`. Without a bundle the
//! certificate must be one self-signed CA (it is the trust root); with a bundle, the cert file
//! holds the chain up to a root in the bundle. The chain and the key/cert match are verified
//! at load, and the files are re-read on every mint (keeping the last good pair on failure),
//! so an operator can replace them without a restart.

use super::{MintedCa, UpstreamAuthority, UpstreamError};
use crate::pki::{self as tmpl, CaSubject};
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
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// The `disk` upstream authority.
pub struct DiskUpstreamAuthority {
    config: DiskUpstreamConfig,
    trust_domain: TrustDomain,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for DiskUpstreamAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskUpstreamAuthority").field("config", &self.config).finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path).map_err(|e| UpstreamError::Config(format!("{what} {}: {e}", path.display())))
}

fn pem_certs(text: &str, what: &str) -> Result<Vec<Vec<u8>>, UpstreamError> {
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

fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (parse_x509_certificate(child), parse_x509_certificate(parent)) else { return false };
    // The same signature check as every other chain cairn verifies (Go's algorithm set).
    crate::spiffe::x509::signature::verify_signed_by(&c, &p).is_ok()
}

fn load(cfg: &DiskUpstreamConfig) -> Result<Loaded, UpstreamError> {
    let chain = pem_certs(&read(&cfg.cert_file_path, "cert_file_path")?, "cert_file_path")?;
    let key_pem = zeroize::Zeroizing::new(read(&cfg.key_file_path, "key_file_path")?);
    let key =
        rcgen::KeyPair::from_pem(&key_pem).map_err(|e| UpstreamError::Config(format!("key_file_path: cannot load private key: {e}")))?;
    let first = chain.first().cloned().ok_or_else(|| UpstreamError::Config("cert_file_path: empty".into()))?;
    let (_, cert) = parse_x509_certificate(&first).map_err(|e| UpstreamError::Config(format!("cert_file_path: {e}")))?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(UpstreamError::Config("key_file_path: the private key does not match the certificate in cert_file_path".into()));
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
    let roots = match &cfg.bundle_file_path {
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
    let issuer = rcgen::Issuer::from_ca_cert_der(&first.as_slice().into(), key)
        .map_err(|e| UpstreamError::Config(format!("cert_file_path: {e}")))?;
    Ok(Loaded { chain, roots, not_after, issuer })
}

impl DiskUpstreamAuthority {
    /// Loads and verifies the files.
    ///
    /// # Errors
    /// A missing, truncated or mismatched file, named by its config key.
    pub fn new(config: DiskUpstreamConfig, trust_domain: TrustDomain) -> Result<Self, UpstreamError> {
        let loaded = load(&config)?;
        Ok(Self { config, trust_domain, current: RwLock::new(Arc::new(loaded)) })
    }

    fn current(&self) -> Result<Arc<Loaded>, UpstreamError> {
        match load(&self.config) {
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

fn subject_of(csr: &x509_parser::certification_request::X509CertificationRequest<'_>) -> CaSubject {
    let name = &csr.certification_request_info.subject;
    let strings = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_owned)).collect::<Vec<_>>()
    };
    CaSubject {
        country: strings(&mut name.iter_country()),
        organization: strings(&mut name.iter_organization()),
        common_name: strings(&mut name.iter_common_name()).into_iter().next(),
    }
}

#[async_trait]
impl UpstreamAuthority for DiskUpstreamAuthority {
    async fn mint_x509_ca(&self, csr_der: &[u8], preferred_ttl: i64) -> Result<MintedCa, UpstreamError> {
        let (spki, csr) = tmpl::csr_public_key(csr_der).map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let uris: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| if let ParsedExtension::SubjectAlternativeName(san) = e { Some(san) } else { None })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|n| if let GeneralName::URI(u) = n { Some((*u).to_owned()) } else { None })
            .collect();
        if uris != [self.trust_domain.id_string()] {
            return Err(UpstreamError::Refused(format!(
                "CSR must carry exactly one URI SAN {}, found {uris:?}",
                self.trust_domain.id_string()
            )));
        }
        let loaded = self.current()?;
        let now = crate::now_unix();
        let ttl = if preferred_ttl > 0 { preferred_ttl } else { DEFAULT_TTL };
        let not_after = (now + ttl).min(loaded.not_after);
        let params = tmpl::ca_params(&self.trust_domain, &subject_of(&csr), None, &spki, now - tmpl::NOT_BEFORE_CUSHION, not_after)
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let cert = params.signed_by(&spki, &loaded.issuer).map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(loaded.chain.iter().cloned());
        Ok(MintedCa { chain, roots: loaded.roots.clone() })
    }
}
