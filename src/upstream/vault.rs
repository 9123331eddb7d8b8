//! `UpstreamAuthority "vault"`: this tier's CA is signed by a Vault (or OpenBao) PKI engine
//! through `<pki_mount_point>/root/sign-intermediate`.
//!
//! Vault only warns when the requested TTL outlives its issuer and signs whatever it is asked
//! within its policy, so cairn caps the TTL at the issuer's expiry itself and checks the answer
//! before using it: the new certificate must be a CA for the CSR's key with the trust domain as
//! its only URI SAN, and it must chain, by signature, through the returned intermediates to the
//! returned root. Vault's root (and any Vault intermediates) end up in the bundle and chain.

use super::disk::{pem_certs, signed_by};
use super::{MintedCa, UpstreamAuthority, UpstreamError};
use crate::spiffe::TrustDomain;
use crate::vault::{Method, VaultClient, VaultError};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::sync::Arc;
use x509_parser::prelude::*;

/// Default CA TTL when the caller has no preference (SPIRE: 1h).
const DEFAULT_TTL: i64 = 3600;
/// Margin kept between the new CA's expiry and its issuer's.
const ISSUER_MARGIN: i64 = 60;

pub use crate::config::server::VaultUpstreamConfig;

/// The `vault` upstream authority.
#[derive(Debug)]
pub struct VaultUpstream {
    client: Arc<VaultClient>,
    mount: String,
    trust_domain: TrustDomain,
}

impl From<VaultError> for UpstreamError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Config(m) => Self::Config(m),
            e if e.is_transient() => Self::Unavailable(e.to_string()),
            e => Self::Refused(e.to_string()),
        }
    }
}

impl VaultUpstream {
    /// Reads the settings (environment fallbacks included) and starts the token renewer;
    /// Vault itself is first contacted in the background or by the first mint.
    ///
    /// # Errors
    /// Missing credentials or unreadable TLS files, named by their config keys.
    pub fn new(config: &VaultUpstreamConfig, trust_domain: TrustDomain) -> Result<Self, UpstreamError> {
        let path = "plugins.UpstreamAuthority.vault.plugin_data";
        let env = |k: &str| std::env::var(k).ok();
        let settings = config.vault.resolve(path, &env)?;
        let client = VaultClient::new(settings)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            client.spawn_renewer();
        }
        Ok(Self { client, mount: config.pki_mount_point.trim_matches('/').to_owned(), trust_domain })
    }

    /// The mount's default issuer certificate (DER).
    async fn issuer(&self) -> Result<Vec<u8>, UpstreamError> {
        let path = format!("{}/cert/ca", self.mount);
        let answer = self.client.call(Method::Get, &path, None).await?;
        let pem =
            answer.pointer("/data/certificate").and_then(Value::as_str).filter(|p| !p.trim().is_empty()).ok_or_else(|| {
                bad(&path, "no data.certificate: does this mount have a CA (pki/root/generate or intermediate/set-signed)?")
            })?;
        let certs = pem_certs(pem, &path).map_err(|e| bad(&path, &e.to_string()))?;
        certs.into_iter().next().ok_or_else(|| bad(&path, "empty certificate"))
    }
}

fn bad(path: &str, why: &str) -> UpstreamError {
    UpstreamError::Refused(VaultError::BadResponse { path: path.to_owned(), why: why.to_owned() }.to_string())
}

#[async_trait]
impl UpstreamAuthority for VaultUpstream {
    async fn check_ready(&self) -> Result<(), UpstreamError> {
        self.client.authenticate().await?;
        self.issuer().await.map(drop)
    }

    async fn mint_x509_ca(&self, csr_der: &[u8], preferred_ttl: i64) -> Result<MintedCa, UpstreamError> {
        let (_, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| UpstreamError::Refused(format!("malformed CSR: {e}")))?;
        let info = &csr.certification_request_info;
        let spki = info.subject_pki.raw.to_vec();
        let issuer_der = self.issuer().await?;
        let (_, issuer) = parse_x509_certificate(&issuer_der).map_err(|e| bad(&format!("{}/cert/ca", self.mount), &e.to_string()))?;
        let now = crate::now_unix();
        let issuer_left = issuer.validity().not_after.timestamp() - now - ISSUER_MARGIN;
        if issuer_left <= 0 {
            return Err(UpstreamError::Refused(format!(
                "the CA of Vault mount {:?} expired (or expires within a minute): {}",
                self.mount,
                issuer.validity().not_after
            )));
        }
        let wanted = if preferred_ttl > 0 { preferred_ttl } else { DEFAULT_TTL };
        let ttl = wanted.min(issuer_left);
        if ttl < wanted {
            tracing::info!(
                requested = %crate::text::format_duration(wanted),
                capped = %crate::text::format_duration(ttl),
                "CA TTL capped at the expiry of the Vault mount's CA"
            );
        }
        let join = |v: Vec<&str>| v.join(",");
        let subject = &info.subject;
        let body = json!({
            "csr": ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec())),
            "ttl": format!("{ttl}s"),
            "format": "pem",
            "uri_sans": self.trust_domain.id_string(),
            "common_name": join(subject.iter_common_name().filter_map(|a| a.as_str().ok()).collect()),
            "organization": join(subject.iter_organization().filter_map(|a| a.as_str().ok()).collect()),
            "country": join(subject.iter_country().filter_map(|a| a.as_str().ok()).collect()),
            "exclude_cn_from_sans": true,
            "use_csr_values": false,
        });
        let path = format!("{}/root/sign-intermediate", self.mount);
        let answer = self.client.call(Method::Post, &path, Some(&body)).await?;
        let minted = parse_signed(&answer, &path, &spki, &self.trust_domain)?;
        // Vault signs for less than asked, with only a warning, when the TTL exceeds the
        // mount's max_lease_ttl: say so, since the CA then rotates more often than ca_ttl says.
        if let Some((_, ca)) = minted.chain.first().and_then(|c| parse_x509_certificate(c).ok()) {
            let got = ca.validity().not_after.timestamp() - now;
            if got + ISSUER_MARGIN < ttl {
                tracing::warn!(
                    requested = %crate::text::format_duration(ttl),
                    signed_for = %crate::text::format_duration(got.max(0)),
                    mount = %self.mount,
                    "Vault signed this tier's CA for less than requested: the mount's max_lease_ttl caps it (raise it with `vault secrets tune -max-lease-ttl=<ttl> {}`)",
                    self.mount
                );
            }
        }
        tracing::info!(vault = self.client.addr(), mount = %self.mount, chain = minted.chain.len(), "Vault signed this tier's CA");
        Ok(minted)
    }
}

/// Turns the answer of `sign-intermediate` into the new CA's chain and the roots, refusing an
/// answer that is not what was asked for.
fn parse_signed(answer: &Value, path: &str, spki: &[u8], td: &TrustDomain) -> Result<MintedCa, UpstreamError> {
    let text = |ptr: &str| answer.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
    let cert_pem = text("/data/certificate").ok_or_else(|| bad(path, "no data.certificate"))?;
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut add = |pem: &str| -> Result<(), UpstreamError> {
        for c in pem_certs(pem, path).map_err(|e| bad(path, &e.to_string()))? {
            if !pool.contains(&c) {
                pool.push(c);
            }
        }
        Ok(())
    };
    add(&cert_pem)?;
    if let Some(chain) = answer.pointer("/data/ca_chain").and_then(Value::as_array) {
        for c in chain.iter().filter_map(Value::as_str) {
            add(c)?;
        }
    }
    if let Some(issuing) = text("/data/issuing_ca") {
        add(&issuing)?;
    }
    let new_ca = pool.first().cloned().ok_or_else(|| bad(path, "empty data.certificate"))?;
    let (_, cert) = parse_x509_certificate(&new_ca).map_err(|e| bad(path, &format!("certificate: {e}")))?;
    if cert.public_key().raw != spki {
        return Err(bad(path, "the signed certificate is not for this tier's key"));
    }
    if !cert.is_ca() {
        return Err(bad(path, "the signed certificate is not a CA (basicConstraints CA:TRUE missing)"));
    }
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value.general_names.iter().filter_map(|g| if let GeneralName::URI(u) = g { Some((*u).to_owned()) } else { None }).collect()
        })
        .unwrap_or_default();
    if uris != [td.id_string()] {
        return Err(bad(path, &format!("the signed certificate's URI SANs are {uris:?}, not [{:?}]", td.id_string())));
    }
    // Climb by signature from the new CA through the returned certificates.
    let mut path_up = vec![new_ca];
    while let Some(current) = path_up.last().cloned() {
        if path_up.len() > 1 && signed_by(&current, &current) {
            break;
        }
        match pool.iter().find(|c| !path_up.contains(c) && signed_by(&current, c)) {
            Some(parent) => path_up.push(parent.clone()),
            None => break,
        }
    }
    if path_up.len() < 2 {
        return Err(bad(
            path,
            "the certificate that signed the new CA is not in the answer (issuing_ca / ca_chain), or its signature does not verify",
        ));
    }
    // The top of the climb is the trust anchor: Vault's self-signed root, or the topmost
    // issuer Vault returned when the mount is an intermediate whose chain stops short.
    let root = path_up.pop().unwrap_or_default();
    Ok(MintedCa { chain: path_up, roots: vec![root] })
}
